//! Any language: a Python submitter (PyNaCl and pika from PyPI, in a venv this
//! test makes under target/) signs a task, seals its secret to the pool key and
//! opens the sealed sensitive output of its result — no Rust on that side.

use std::path::PathBuf;
use std::process::Command;

use krill_tests::trust::Keys;
use krill_tests::{amqp_url, bin_dir, unique_pool};

/// `target/krill-tests-venv/bin/python3`, made (python3 -m venv, pip install)
/// when missing. Panics with the reason when PyPI or venv are not usable.
fn python() -> PathBuf {
    let target = bin_dir().parent().map(PathBuf::from).expect("target dir");
    let venv = target.join("krill-tests-venv");
    let py = venv.join("bin/python3");
    let ready = venv.join(".krill-ready");
    if !ready.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (scripts/test expects Debian's python3 with venv)");
        assert!(ok.success(), "python3 -m venv failed");
        let out = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "pynacl>=1.5,<2",
                "pika>=1.3,<2",
            ])
            .output()
            .expect("pip");
        assert!(
            out.status.success(),
            "pip install pynacl pika failed (is PyPI reachable?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&ready, "").expect("marker");
    }
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_signs_seals_and_opens_its_sealed_output() {
    let py = python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/krill_signed.py");
    let dir = std::env::temp_dir().join(format!("krill-py-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let keyfile = dir.join("python.key");
    let out = Command::new(&py)
        .arg(&script)
        .args(["keygen"])
        .arg(&keyfile)
        .arg("python")
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The key file Python wrote is a krill key file: the CLI's loader reads it.
    let id = broker::trust::Identity::load(&keyfile).expect("python's key file loads in Rust");
    assert_eq!(id.public_line(), line);

    let pool = unique_pool("python");
    let keys = Keys::new("", &[line]);
    let _w = keys.worker(&pool).start().await;
    let secret = format!("sk-py-{}", uuid::Uuid::new_v4().simple());
    let out = Command::new(&py)
        .arg(&script)
        .args(["submit", &amqp_url(), &pool, &keys.pool.public().to_b64()])
        .arg(&keyfile)
        .args([
            &secret,
            r#"echo "key=$API_KEY"; printf 'TOKEN=%s\n' "$(printf %s "$API_KEY" | rev)" >> "$KRILL_SENSITIVE_OUTPUT""#,
        ])
        .output()
        .expect("submit");
    assert!(
        out.status.success(),
        "python submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("result json");
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["stdout"], "key=***\n");
    assert_eq!(r["submitter"], "python");
    let token = r["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == "TOKEN"))
        .expect("TOKEN output");
    assert_eq!(token["value"], "", "the value travels sealed");
    let reversed: String = secret.chars().rev().collect();
    assert_eq!(r["opened"]["TOKEN"], reversed.as_str(), "{r}");
    let _ = std::fs::remove_dir_all(dir);
}
