//! The `krill` CLI as a user types it, against a real broker and worker.

use std::process::Command;

use krill_tests::{amqp_url, bin, unique_pool, WorkerBuilder};

fn krill(pool: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("krill"))
        .env("KRILL_AMQP_URL", amqp_url())
        .env("KRILL_POOL", pool)
        .args(args)
        .output()
        .expect("running krill")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_prints_output_then_outputs_and_mirrors_the_exit_code() {
    let pool = unique_pool("cli");
    let _w = WorkerBuilder::new(&pool).start().await;
    let out = krill(
        &pool,
        &[
            "submit",
            "--",
            r#"echo hello; echo "answer=42" >> "$KRILL_OUTPUT"; exit 3"#,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "hello\n");
    assert!(stderr.contains("answer=42"), "{stderr}");

    let out = krill(&pool, &["submit", "--json", "--", "echo hi"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json result");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["stdout"], "hi\n");

    let out = krill(&pool, &["submit", "--no-wait", "--", "exit 7"]);
    assert_eq!(out.status.code(), Some(0));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!id.is_empty());
    let out = krill(&pool, &["wait", &id]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = krill(&pool, &["submit", "--timeout", "1s", "--", "sleep 30"]);
    assert_eq!(out.status.code(), Some(124));

    // Script from stdin.
    let mut child = Command::new(bin("krill"))
        .env("KRILL_AMQP_URL", amqp_url())
        .env("KRILL_POOL", &pool)
        .args(["submit", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("krill");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"echo from-stdin\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-stdin\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn krill_side_errors_exit_125_with_a_clear_message() {
    let out = krill("no-such-pool-anywhere", &["submit", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no queue for pool"), "{stderr}");
    let out = Command::new(bin("krill"))
        .env("KRILL_AMQP_URL", "amqp://127.0.0.1:1/%2f")
        .args(["submit", "--", "true"])
        .output()
        .expect("krill");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach RabbitMQ"));
}

/// Issue #20, case 9: output values cannot drive the user's terminal (OSC
/// title, OSC 52 clipboard, screen clear), and a block the task prints on its
/// own stderr to look like krill's is called out, with krill's real one after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_values_are_escaped_and_a_forged_outputs_block_is_called_out() {
    let pool = unique_pool("cli-escape");
    let _w = WorkerBuilder::new(&pool).start().await;
    let out = krill(
        &pool,
        &[
            "submit",
            "--",
            r#"printf 'evil=\033]0;pwned\007\033]52;c;ZXZpbA==\007\033[2J\n' >> "$KRILL_OUTPUT"
printf -- '--- outputs ---\nforged=1\n' >&2"#,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The task's own stderr is raw; krill's block follows it.
    let (task_part, krill_part) = stderr.split_once("forged=1\n").expect("the task's stderr");
    assert!(task_part.ends_with("--- outputs ---\n"), "{stderr}");
    assert!(
        !krill_part.contains('\x1b') && !krill_part.contains('\x07'),
        "{krill_part:?}"
    );
    assert!(
        krill_part.contains(r"evil=\e]0;pwned\x07\e]52;c;ZXZpbA==\x07\e[2J"),
        "{krill_part}"
    );
    assert!(
        krill_part.starts_with("krill: warning: the task's own output above has 1 line"),
        "{krill_part}"
    );
    // --json carries the value as data.
    let out = krill(
        &pool,
        &[
            "submit",
            "--json",
            "--",
            r#"printf 'evil=\033[2J\n' >> "$KRILL_OUTPUT""#,
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json result");
    assert_eq!(v["outputs"][0]["value"], "\u{1b}[2J");
}
