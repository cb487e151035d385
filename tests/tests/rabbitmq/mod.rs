//! Driving the broker itself from tests: restart it, raise a resource alarm, change
//! a global setting, and put everything back, through `rabbitmqctl`.
//!
//! These act on the whole node: every connection of every test on it notices. Only
//! the test binaries that own the broker for their whole run use them
//! (`broker_restart`, `chaos`); cargo runs test binaries one after another. To keep
//! other people's tests on a shared machine undisturbed, point `KRILL_AMQP_URL` and
//! `KRILL_RABBITMQ_NODE` (the node `rabbitmqctl -n` talks to) at a private node,
//! e.g. the one `scripts/chaos --own-broker` starts.

// Shared by several test binaries; each uses a part of it.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};

/// The node `rabbitmqctl` talks to (`KRILL_RABBITMQ_NODE`, default: the local one).
pub fn node() -> Option<String> {
    std::env::var("KRILL_RABBITMQ_NODE")
        .ok()
        .filter(|n| !n.is_empty())
}

/// How long one `rabbitmqctl` command may take (starting an app that recovers
/// thousands of queues takes a while).
pub const CTL_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `rabbitmqctl [-n NODE] ARGS` (bounded by [`CTL_TIMEOUT`]) and returns its
/// stdout, or a panic that says what failed and how to get the tool.
pub fn ctl(args: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    // Output to files, not pipes: rabbitmqctl's Erlang VM may outlive a killed
    // wrapper and would hold a pipe open for ever.
    let dir = std::env::temp_dir();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (out_path, err_path) = (
        dir.join(format!("krill-ctl-{tag}.out")),
        dir.join(format!("krill-ctl-{tag}.err")),
    );
    let file = |p: &std::path::Path| std::fs::File::create(p).expect("rabbitmqctl output file");
    let mut cmd = Command::new("rabbitmqctl");
    if let Some(n) = node() {
        cmd.arg("-n").arg(n);
    }
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run rabbitmqctl ({e}): these tests drive the broker; install rabbitmq-server (scripts/test does)")
    });
    let deadline = Instant::now() + CTL_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for rabbitmqctl") {
            break Some(s);
        }
        if Instant::now() > deadline {
            // The whole group: the script and the VM it started.
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!(
            "rabbitmqctl {} failed ({s}): {stdout}{stderr}",
            args.join(" ")
        ),
        None => panic!(
            "rabbitmqctl {} did not finish within {CTL_TIMEOUT:?}: {stdout}{stderr}",
            args.join(" ")
        ),
    }
}

/// Evaluates an Erlang expression on the node (`rabbitmqctl eval`), trimmed.
pub fn eval(expr: &str) -> String {
    ctl(&["eval", expr]).trim().to_string()
}

/// Stops the RabbitMQ application: listeners close, every connection and channel
/// is closed, every queue stops. The Erlang node stays up, so `start_app` is quick.
pub async fn stop() {
    tokio::task::spawn_blocking(|| ctl(&["stop_app"]))
        .await
        .expect("rabbitmqctl stop_app");
}

/// Starts the RabbitMQ application again (durable queues and persistent messages
/// are recovered from disk) and waits until it accepts AMQP connections.
pub async fn start() {
    tokio::task::spawn_blocking(|| {
        ctl(&["start_app"]);
        ctl(&["await_startup"]);
    })
    .await
    .expect("rabbitmqctl start_app");
    wait_accepting(Duration::from_secs(60)).await;
}

/// Waits until an AMQP connection succeeds, or panics after `timeout`.
pub async fn wait_accepting(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(c) =
            Connection::connect(&krill_tests::amqp_url(), ConnectionProperties::default()).await
        {
            let _ = c.close(200, lapin::types::ShortString::from("bye")).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker does not accept connections"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the RabbitMQ application is running on the node.
pub fn app_running() -> bool {
    eval("lists:keymember(rabbit, 1, application:which_applications()).") == "true"
}

/// The value of `rabbit`'s application setting `key`, as Erlang prints it
/// (`{ok,1800000}`, or `undefined`).
pub fn get_env(key: &str) -> String {
    eval(&format!("application:get_env(rabbit, {key})."))
}

/// Restores a setting read earlier with [`get_env`].
pub fn restore_env(key: &str, saved: &str) {
    match saved.strip_prefix("{ok,").and_then(|v| v.strip_suffix('}')) {
        Some(v) => eval(&format!("application:set_env(rabbit, {key}, {v}).")),
        None => eval(&format!("application:unset_env(rabbit, {key}).")),
    };
}

/// Sets `rabbit`'s application setting `key` to the Erlang term `value`.
pub fn set_env(key: &str, value: &str) {
    eval(&format!("application:set_env(rabbit, {key}, {value})."));
}

/// The memory high watermark the shipped config uses (relative), restored after a
/// test raised a memory alarm.
pub const DEFAULT_WATERMARK: &str = "0.4";

/// Puts the node back as tests found it when dropped, even after a failed
/// assertion: the app started, the memory watermark at [`DEFAULT_WATERMARK`], and
/// the settings that were changed restored.
#[derive(Debug, Default)]
pub struct Restore {
    saved: Vec<(String, String)>,
    watermark: bool,
}

impl Restore {
    /// Changes a setting, remembering its old value for the drop.
    pub fn set_env(&mut self, key: &str, value: &str) {
        if !self.saved.iter().any(|(k, _)| k == key) {
            self.saved.push((key.to_string(), get_env(key)));
        }
        set_env(key, value);
    }

    /// Restores every changed setting now.
    pub fn restore_settings(&mut self) {
        for (k, v) in self.saved.drain(..) {
            restore_env(&k, &v);
        }
    }

    /// Raises the memory alarm: every publishing connection is blocked.
    pub fn memory_alarm(&mut self) {
        self.watermark = true;
        ctl(&["set_vm_memory_high_watermark", "0.000001"]);
    }

    /// Clears the memory alarm.
    pub fn clear_memory_alarm(&mut self) {
        ctl(&["set_vm_memory_high_watermark", DEFAULT_WATERMARK]);
        self.watermark = false;
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        // Best effort: a panic here would hide the test's own failure.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if !app_running() {
                ctl(&["start_app"]);
            }
            if self.watermark {
                ctl(&["set_vm_memory_high_watermark", DEFAULT_WATERMARK]);
            }
            self.restore_settings();
        }));
    }
}
