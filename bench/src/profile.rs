//! `perf record` around a scenario (`krill-bench --profile`): the whole machine,
//! sampled on the cpu clock (this host has no hardware counters), so the report
//! shows both the split between processes (worker, broker, shells, dockerd) and
//! the worker's own hot functions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `perf record`.
#[derive(Debug)]
pub struct Recording {
    child: Child,
    data: PathBuf,
}

/// Starts sampling the whole machine into `<tmp>/krill-bench-<name>.perf.data`
/// (kept for `perf report -i`); `None` when perf is missing.
pub fn start(name: &str) -> Option<Recording> {
    let data = std::env::temp_dir().join(format!("krill-bench-{name}.perf.data"));
    let child = Command::new("perf")
        .args(["record", "-a", "-g", "-e", "cpu-clock", "-F", "499", "-o"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some(Recording { child, data })
}

impl Recording {
    /// Stops sampling and writes `<out>`: the split by process, then the worker's
    /// (pid `worker`) hottest symbols.
    pub fn finish(mut self, worker: u32, out: &Path) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let _ = self.child.wait();
        let report = |args: &[&str]| {
            Command::new("perf")
                .arg("report")
                .arg("-i")
                .arg(&self.data)
                .args(["--stdio", "--no-children"])
                .args(args)
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let by_process = report(&["--sort", "comm", "-g", "none", "--percent-limit", "0.5"]);
        let worker_pid = worker.to_string();
        let by_symbol = report(&[
            "--pid",
            &worker_pid,
            "--sort",
            "dso,sym",
            "-g",
            "none",
            "--percent-limit",
            "0.7",
        ]);
        // The helper, its init and the script until it execs; inclusive, so
        // the syscalls show where the time goes.
        let helper = report(&[
            "--comms",
            "krill-sandbox-i",
            "--children",
            "--sort",
            "sym",
            "-g",
            "none",
            "--percent-limit",
            "1",
        ]);
        let text = format!(
            "# whole machine, by command\n{}\n\n# krill-worker (pid {worker}, every thread), by object and symbol\n{}\n\n# the process sandbox's helper (`krill-sandbox-init`, its init, the script before exec), by symbol, inclusive\n{}\n",
            strip(&by_process),
            strip(&by_symbol),
            strip(&helper)
        );
        let _ = std::fs::write(out, text);
    }
}

fn strip(report: &str) -> String {
    report
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("# ") || l.starts_with("# Samples"))
        .take(40)
        .collect::<Vec<_>>()
        .join("\n")
}
