//! A task container's resource usage and OOM kills, read from its cgroup.
//!
//! Read while the container still runs (its cgroup is deleted when it stops):
//! the stub waits for the worker's `Release` after the exit frame for this.
//! cgroup v1: `memory.max_usage_in_bytes`, `memory.oom_control` (`oom_kill`),
//! `cpuacct.usage`; v2: `memory.peak`, `memory.events` (`oom_kill`), `cpu.stat`
//! (`usage_usec`). Paths for Docker's cgroupfs and systemd drivers are tried; when
//! none exists (the worker runs in a container without the host's cgroupfs), the
//! caller falls back to the engine's one-shot stats.

use std::path::{Path, PathBuf};

use bollard::models::ContainerStatsResponse;
use broker::protocol::Usage;

/// What the cgroup says about a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct CgroupReading {
    pub usage: Usage,
    /// How many processes the kernel OOM-killed in the container, if known.
    pub oom_kills: Option<u64>,
    /// The container's memory use reached its limit (v1 `memory.failcnt`, v2
    /// `memory.events` `max`/`oom`, or a peak close to the limit, see
    /// [`Accounting`]): a SIGKILL then is the memory limit's, even when the kill
    /// was not the kernel's own.
    pub hit_limit: bool,
}

/// Who counts the container's memory against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accounting {
    /// The host kernel's cgroup: a peak within 1/16 of the limit reached it.
    Host,
    /// gVisor's sentry, which sees the limit as its whole memory (`MemTotal`)
    /// and kills the task that runs it out by its own account, well before the
    /// host's cgroup fills: measured here with a 64 MiB limit, the host's peak
    /// at the kill was 42–55 MiB in 5 runs of 6 (`failcnt` 0, `oom_kill` 0) and
    /// once the kernel's own kill at 64. A peak of half the limit counts.
    Sentry,
}

impl Accounting {
    /// The accounting of an OCI runtime by its name (`runsc` is gVisor).
    pub fn of_runtime(runtime: Option<&str>) -> Accounting {
        match runtime {
            Some(r) if r.contains("runsc") || r.contains("gvisor") => Accounting::Sentry,
            _ => Accounting::Host,
        }
    }

    fn near(self, peak: Option<u64>, limit: Option<u64>) -> bool {
        let room = |l: u64| match self {
            Accounting::Host => l / 16,
            Accounting::Sentry => l / 2,
        };
        match (peak, limit) {
            (Some(p), Some(l)) => l > 0 && p >= l - room(l),
            _ => false,
        }
    }
}

/// Reads the container's cgroup under `root` (usually `/sys/fs/cgroup`), or `None`
/// when its directory cannot be found. Small sysfs files: reading them does not block.
pub(super) fn read_cgroup(root: &Path, id: &str, accounting: Accounting) -> Option<CgroupReading> {
    if root.join("cgroup.controllers").exists() {
        let dir = find_dir(root, id)?;
        return Some(CgroupReading {
            usage: Usage {
                cpu_time_ms: keyed(&dir.join("cpu.stat"), "usage_usec").map(|us| us / 1000),
                peak_memory_bytes: number(&dir.join("memory.peak")),
            },
            oom_kills: keyed(&dir.join("memory.events"), "oom_kill"),
            hit_limit: ["max", "oom"]
                .iter()
                .any(|k| keyed(&dir.join("memory.events"), k).unwrap_or(0) > 0)
                || accounting.near(
                    number(&dir.join("memory.peak")),
                    number(&dir.join("memory.max")),
                ),
        });
    }
    let memory = find_dir(&root.join("memory"), id)?;
    let cpu = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
        .iter()
        .find_map(|c| find_dir(&root.join(c), id));
    Some(CgroupReading {
        usage: Usage {
            cpu_time_ms: cpu
                .and_then(|d| number(&d.join("cpuacct.usage")))
                .map(|ns| ns / 1_000_000),
            peak_memory_bytes: number(&memory.join("memory.max_usage_in_bytes")),
        },
        oom_kills: keyed(&memory.join("memory.oom_control"), "oom_kill"),
        hit_limit: number(&memory.join("memory.failcnt")).unwrap_or(0) > 0
            || accounting.near(
                number(&memory.join("memory.max_usage_in_bytes")),
                number(&memory.join("memory.limit_in_bytes")),
            ),
    })
}

/// Usage from the engine's stats (cgroup v1 reports the peak; v2 only current use).
pub(super) fn from_stats(stats: &ContainerStatsResponse) -> Usage {
    let memory = stats.memory_stats.as_ref();
    Usage {
        cpu_time_ms: stats
            .cpu_stats
            .as_ref()
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .filter(|&ns| ns > 0)
            .map(|ns| ns / 1_000_000),
        peak_memory_bytes: memory
            .and_then(|m| m.max_usage.or(m.usage))
            .filter(|&b| b > 0),
    }
}

fn find_dir(controller: &Path, id: &str) -> Option<PathBuf> {
    [
        controller.join("docker").join(id),
        controller
            .join("system.slice")
            .join(format!("docker-{id}.scope")),
    ]
    .into_iter()
    .find(|d| d.is_dir())
}

fn number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    parse_keyed(&std::fs::read_to_string(path).ok()?, key)
}

fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyed_files() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_keyed(oom_control, "oom_kill"), Some(2));
        assert_eq!(parse_keyed(oom_control, "under_oom"), Some(0));
        assert_eq!(
            parse_keyed("usage_usec 1500\nuser_usec 1000\n", "usage_usec"),
            Some(1500)
        );
        assert_eq!(parse_keyed("oom 1\n", "oom_kill"), None);
    }

    #[test]
    fn a_peak_close_to_the_limit_counts_as_reaching_it() {
        let mib = 1 << 20;
        let near = |p, l| Accounting::Host.near(p, l);
        assert!(near(Some(62 * mib + mib / 10), Some(64 * mib)));
        assert!(!near(Some(40 * mib), Some(64 * mib)));
        assert!(!near(Some(40 * mib), None));
        assert!(!near(None, Some(64 * mib)));
        assert!(!near(Some(0), Some(0)));
        let sentry = |p, l| Accounting::Sentry.near(p, l);
        assert!(sentry(Some(42 * mib), Some(64 * mib)));
        assert!(!sentry(Some(30 * mib), Some(64 * mib)));
        assert!(!sentry(Some(0), Some(0)));
        assert_eq!(Accounting::of_runtime(Some("runsc")), Accounting::Sentry);
        assert_eq!(Accounting::of_runtime(Some("crun")), Accounting::Host);
        assert_eq!(Accounting::of_runtime(None), Accounting::Host);
    }

    #[test]
    fn reads_a_fake_v1_and_v2_tree() {
        let root = std::env::temp_dir().join(format!("krill-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mem = root.join("v1/memory/docker/abc");
        let cpu = root.join("v1/cpu,cpuacct/docker/abc");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(mem.join("memory.max_usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(mem.join("memory.oom_control"), "under_oom 0\noom_kill 1\n").unwrap();
        std::fs::write(mem.join("memory.failcnt"), "3\n").unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "2500000\n").unwrap();
        let r = read_cgroup(&root.join("v1"), "abc", Accounting::Host).unwrap();
        assert_eq!(r.usage.peak_memory_bytes, Some(4096));
        assert_eq!(r.usage.cpu_time_ms, Some(2));
        assert_eq!(r.oom_kills, Some(1));
        assert!(r.hit_limit);
        assert!(read_cgroup(&root.join("v1"), "other", Accounting::Host).is_none());

        let v2 = root.join("v2");
        let dir = v2.join("system.slice/docker-abc.scope");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(dir.join("memory.peak"), "8192\n").unwrap();
        std::fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 0\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 7000\n").unwrap();
        let r = read_cgroup(&v2, "abc", Accounting::Host).unwrap();
        assert_eq!(r.usage.peak_memory_bytes, Some(8192));
        assert_eq!(r.usage.cpu_time_ms, Some(7));
        assert_eq!(r.oom_kills, Some(0));
        assert!(r.hit_limit, "memory.events oom 1");
        std::fs::remove_dir_all(root).unwrap();
    }
}
