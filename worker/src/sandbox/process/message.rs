//! The wire between the worker and its sandbox helper (`krill-sandbox-init`),
//! used by both sides: the two frames the worker sends on the helper's stdin
//! socket ([`SandboxConfig`] at once, [`TaskConfig`] when the task is claimed),
//! and what the helper and its init write back on [`STATUS_FD`] ([`READY`],
//! then one [`Report`] line).

use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The helper's status channel to the worker (a copy of the stdin socket).
pub const STATUS_FD: i32 = 3;
/// The line the init writes on [`STATUS_FD`] once the task's view is built
/// and it waits for the task: `ready landlock=<full|partial|off>`.
pub const READY: &str = "ready";

/// The `ready` line, with how much of the Landlock fence applies.
pub fn ready_line(landlock: super::fence::State) -> String {
    format!("{READY} landlock={}\n", landlock.as_str())
}

/// Parses a `ready` line: the Landlock state, or `None` when it is not one.
pub fn parse_ready(line: &str) -> Option<super::fence::State> {
    let rest = line.strip_prefix(READY)?;
    match rest.trim().strip_prefix("landlock=") {
        Some(s) => super::fence::State::parse(s),
        None if rest.trim().is_empty() => Some(super::fence::State::Off),
        None => None,
    }
}

/// What the helper needs before its task is known: the first frame on its
/// stdin, sent as it starts.
#[derive(Debug, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub uid: u32,
    pub gid: u32,
    pub task_dir: PathBuf,
    /// Size of the scratch tmpfs until the task says otherwise.
    pub disk_bytes: u64,
    pub nofile: u64,
    /// Make a fresh net namespace (only `lo`, up; the worker adds a veth to
    /// it when the task has network). Always set by the worker.
    pub net_ns: bool,
    /// The task has network (its /etc gets resolv.conf, its seccomp filter
    /// route netlink sockets).
    #[serde(default)]
    pub network: bool,
    /// The cgroup's `cgroup.procs` files (one per hierarchy), joined first.
    pub cgroup_procs: Vec<PathBuf>,
    /// What the task's root is made of.
    pub view: ViewConfig,
}

/// What the task's root is made of: part of the helper's first frame, the
/// same for every task of a worker (built by [`super::fs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewConfig {
    /// `--process-rootfs`: a whole root (e.g. a task image exported with
    /// `docker export`) whose top-level directories the view shows; `None`:
    /// the host's program directories (`/usr`, `/bin`, `/sbin`, `/lib*`).
    pub rootfs: Option<PathBuf>,
    /// `--process-bind`: extra read-only binds, (source on the host, target in the view).
    pub binds: Vec<(PathBuf, PathBuf)>,
}

/// The task: the second frame, sent when it is claimed (never on disk or argv:
/// the environment holds the task's secrets). The init reads it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Interpreter, its arguments and the script path.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Size of the scratch tmpfs, and the largest file the script may write.
    pub disk_bytes: u64,
    /// Processes and threads the task's uid may have (`RLIMIT_NPROC`: the uid
    /// is the task's own, so this is the task's count; 0: unlimited).
    #[serde(default)]
    pub nproc: u64,
}

/// A frame: a big-endian u32 length, then that much JSON.
pub fn frame(value: &impl Serialize) -> Result<Vec<u8>, String> {
    let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let len = u32::try_from(body.len()).map_err(|_| "config too large".to_string())?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads one frame from `r`; `what` names it in errors.
pub fn read_frame<T: serde::de::DeserializeOwned>(
    r: &mut impl Read,
    what: &str,
) -> Result<T, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| format!("reading the {what}: {e}"))?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body)
        .map_err(|e| format!("reading the {what}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("parsing the {what}: {e}"))
}

/// What the init reports on [`STATUS_FD`], one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Exit(i32),
    Signal(i32),
    Error(String),
}

impl Report {
    pub fn line(&self) -> String {
        match self {
            Report::Exit(c) => format!("exit {c}\n"),
            Report::Signal(s) => format!("signal {s}\n"),
            Report::Error(e) => format!("error {}\n", e.replace('\n', " ")),
        }
    }

    /// The last report in `text` (an error may precede nothing else).
    pub fn parse(text: &str) -> Option<Report> {
        text.lines().rev().find_map(|l| {
            let (kind, rest) = l.split_once(' ')?;
            match kind {
                "exit" => rest.parse().ok().map(Report::Exit),
                "signal" => rest.parse().ok().map(Report::Signal),
                "error" => Some(Report::Error(rest.to_string())),
                _ => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_frames_round_trip_back_to_back() {
        let task = TaskConfig {
            argv: vec!["sh".into(), "-e".into(), "/w/script".into()],
            env: vec![("SECRET".into(), "multi\nline".into())],
            cwd: "/w/home".into(),
            disk_bytes: 1 << 20,
            nproc: 64,
        };
        let mut wire = frame(&task).expect("frame");
        wire.extend(frame(&task).expect("frame"));
        let mut r = std::io::Cursor::new(wire);
        for _ in 0..2 {
            let back: TaskConfig = read_frame(&mut r, "task config").expect("read");
            assert_eq!(back.argv, task.argv);
            assert_eq!(back.env, task.env);
            assert_eq!(back.disk_bytes, task.disk_bytes);
        }
        let err = read_frame::<TaskConfig>(&mut r, "task config").expect_err("end of input");
        assert!(err.contains("reading the task config"), "{err}");
    }

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Exit(3),
            Report::Exit(0),
            Report::Signal(11),
            Report::Error("mounting /proc: EPERM".into()),
        ] {
            assert_eq!(Report::parse(&r.line()), Some(r));
        }
        assert_eq!(Report::parse(""), None);
        assert_eq!(
            Report::Error("two\nlines".into()).line(),
            "error two lines\n"
        );
    }
}
