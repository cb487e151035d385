//! A worker asked for a sandbox it cannot serve exits at start, non-zero, with a
//! message naming what is missing and how to fix it, instead of failing every
//! task; a pre-started container that dies before use is reported with its
//! reason and its refill backs off.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use krill_tests::{amqp_url, bin, bin_dir, stub_path, unique_pool, WorkerBuilder};

const IMAGE: &str = "krill/base:1";

/// Runs `krill-worker` with `args` until it exits (60 s at most): its exit code
/// and what it printed.
fn worker_exit(args: &[&str]) -> (Option<i32>, String) {
    let pool = unique_pool("failfast");
    let work = std::env::temp_dir().join(format!("krill-test-{pool}"));
    let mut child = Command::new(bin("krill-worker"))
        .env("KRILL_AMQP_URL", amqp_url())
        .env("KRILL_POOL", &pool)
        .env("KRILL_WORKER_ID", &pool)
        .env("KRILL_WORK_DIR", &work)
        .env("KRILL_STUB_PATH", stub_path())
        .env("KRILL_PRESTART", "0")
        // What is refused here is the sandbox, not the lack of trusted keys.
        .env("KRILL_ALLOW_UNSIGNED", "true")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let _ = std::fs::remove_dir_all(&work);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (status.code(), text);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the worker did not exit: it runs with a sandbox that cannot work; {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused(args: &[&str], names: &[&str]) {
    let (code, text) = worker_exit(args);
    assert!(
        code.is_some_and(|c| c != 0),
        "exit {code:?} for {args:?}: {text}"
    );
    for n in names {
        assert!(
            text.contains(n),
            "{args:?}: the message does not name `{n}`: {text}"
        );
    }
}

#[test]
fn a_dynamically_linked_stub_is_refused_at_start() {
    // What cargo leaves beside krill-worker: linked against the host's libc.
    let dynamic = bin_dir().join("krill-stub");
    assert!(
        dynamic.exists(),
        "{} missing: cargo build --workspace --bins",
        dynamic.display()
    );
    refused(
        &[
            "--sandbox",
            "container",
            "--image",
            IMAGE,
            "--stub-path",
            &dynamic.display().to_string(),
        ],
        &[
            "krill-stub",
            "dynamically linked",
            "ld-linux",
            "scripts/build-stub",
        ],
    );
}

#[test]
fn a_missing_stub_is_refused_at_start() {
    refused(
        &[
            "--sandbox",
            "container",
            "--image",
            IMAGE,
            "--stub-path",
            "/krill-no-such-stub",
        ],
        &["/krill-no-such-stub", "scripts/build-stub"],
    );
}

#[test]
fn a_missing_image_is_refused_at_start() {
    refused(
        &[
            "--sandbox",
            "container",
            "--image",
            &format!("{IMAGE},krill-test/not-present:0"),
        ],
        &["krill-test/not-present:0", "scripts/images", "--allow-pull"],
    );
}

#[test]
fn a_missing_sandbox_helper_is_refused_at_start() {
    refused(
        &[
            "--sandbox",
            "process",
            "--sandbox-helper",
            "/krill-no-such-helper",
        ],
        &["/krill-no-such-helper"],
    );
}

#[test]
fn a_process_rootfs_without_the_interpreter_is_refused_at_start() {
    // A root with /usr but no sh: the start-up probe task cannot run.
    let dir = std::env::temp_dir().join(format!("krill-empty-rootfs-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    refused(
        &[
            "--sandbox",
            "process",
            "--process-rootfs",
            &dir.display().to_string(),
        ],
        &["cannot run a task", "sh", "--process-rootfs"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stub that passes the check but cannot serve (a static busybox, which
/// answers `stub: applet not found`): every pre-started container dies at once.
/// Each death is reported with what the container printed and its exit code,
/// and the image's refill waits longer after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_started_containers_that_die_are_reported_and_refilled_with_back_off() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a static busybox (Debian busybox-static; scripts/images installs it)");
    let w = WorkerBuilder::new(&unique_pool("dying-prestart"))
        .arg("--sandbox")
        .arg("container")
        .arg("--image")
        .arg(IMAGE)
        .arg("--prestart")
        .arg("2")
        .env("KRILL_STUB_PATH", busybox)
        .start()
        .await;
    let until = Instant::now() + Duration::from_secs(90);
    let reports = loop {
        let log = w.log_text();
        let reports: Vec<String> = log
            .lines()
            .filter(|l| l.contains("died before use"))
            .map(strip_ansi)
            .collect();
        if reports.len() >= 4 {
            break reports;
        }
        assert!(Instant::now() < until, "fewer than 4 reports; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for r in &reports {
        assert!(r.contains("applet not found"), "no reason: {r}");
        assert!(r.contains("exit=Some(127)"), "no exit code: {r}");
    }
    // retry_in=…ms/s: the delays grow with each death (the reports are logged
    // as the engine answers, so not always in order).
    let mut delays: Vec<f64> = reports
        .iter()
        .filter_map(|r| {
            let v = r.split("retry_in=").nth(1)?.split_whitespace().next()?;
            let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
            let n: f64 = num.parse().ok()?;
            Some(if unit == "ms" { n / 1000.0 } else { n })
        })
        .collect();
    assert_eq!(delays.len(), reports.len(), "{reports:?}");
    delays.sort_by(f64::total_cmp);
    delays.dedup();
    assert!(
        delays.len() >= 3 && delays.windows(2).all(|p| p[1] >= 2.0 * p[0]),
        "the refill does not back off: {delays:?}"
    );
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (_, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
