//! One cgroup per task: limits (memory, pids, cpu), usage read-back (peak memory,
//! cpu time), OOM detection, killing every process of the task, removal, and the
//! start-up sweep of cgroups a dead worker left.
//!
//! cgroup v1 and v2 sit behind one small trait, [`Driver`]; which one is used is
//! detected at start-up from `/proc/self/mountinfo` and `/proc/self/cgroup`
//! ([`detect`]). Layout, per hierarchy (v1: each of memory, pids, cpu, cpuacct,
//! freezer; v2: the single unified one):
//!
//! ```text
//! <root>/krill/<worker id>/<task id>.<rand>
//! ```
//!
//! where `<root>` is the mount point of the v1 hierarchy, or for v2 the worker's
//! own cgroup (the worker moves itself into a `krill-supervisor` leaf first, so the
//! no-internal-process rule allows delegating controllers to the task cgroups).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker::protocol::Usage;

use crate::sandbox::Effective;

/// Directory under each hierarchy root that holds every krill cgroup.
pub const KRILL_DIR: &str = "krill";
/// cgroup v2 leaf the worker moves itself into (v2 only).
pub const SUPERVISOR_DIR: &str = "krill-supervisor";
/// cpu period used for the cpu quota, microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The v1 controllers a task cgroup needs.
pub const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];
/// The v2 controllers a task cgroup needs.
pub const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// What one cgroup version does. Paths given to it are task cgroup names
/// (`<worker>/<task>`), relative to each hierarchy's krill dir.
pub trait Driver: std::fmt::Debug + Send + Sync {
    /// `"v1"` or `"v2"`.
    fn version(&self) -> &'static str;
    /// The krill dir of every hierarchy (`<root>/krill`).
    fn krill_dirs(&self) -> Vec<PathBuf>;
    /// The files that apply `limits` to the task cgroup `name`, with their values,
    /// in the order they must be written.
    fn limit_writes(&self, name: &str, limits: &Effective) -> Vec<(PathBuf, String)>;
    /// Peak memory and cpu time of the task cgroup.
    fn usage(&self, name: &str) -> Usage;
    /// How many processes of the task cgroup the OOM killer killed.
    fn oom_kills(&self, name: &str) -> u64;
    /// Kills every process in the task cgroup (best effort; see [`kill_procs`]).
    fn kill(&self, name: &str);
    /// Prepares the hierarchy for this worker's task cgroups (creates dirs,
    /// delegates controllers).
    fn init(&self, worker: &str) -> io::Result<()>;
}

/// The task cgroup directories of `name` in every hierarchy.
fn dirs(d: &dyn Driver, name: &str) -> Vec<PathBuf> {
    d.krill_dirs().into_iter().map(|k| k.join(name)).collect()
}

/// cgroup v1: one directory per controller hierarchy.
#[derive(Debug, Clone)]
pub struct V1 {
    /// Mount point of each needed controller (several may share one, like `cpu,cpuacct`).
    pub memory: PathBuf,
    pub pids: PathBuf,
    pub cpu: PathBuf,
    pub cpuacct: PathBuf,
    pub freezer: PathBuf,
}

impl V1 {
    fn mounts(&self) -> Vec<PathBuf> {
        let mut all = vec![
            self.memory.clone(),
            self.pids.clone(),
            self.cpu.clone(),
            self.cpuacct.clone(),
            self.freezer.clone(),
        ];
        all.sort();
        all.dedup();
        all
    }
}

impl Driver for V1 {
    fn version(&self) -> &'static str {
        "v1"
    }

    fn krill_dirs(&self) -> Vec<PathBuf> {
        self.mounts()
            .into_iter()
            .map(|m| m.join(KRILL_DIR))
            .collect()
    }

    fn limit_writes(&self, name: &str, l: &Effective) -> Vec<(PathBuf, String)> {
        let mem = self.memory.join(KRILL_DIR).join(name);
        let mut w = vec![
            (
                mem.join("memory.limit_in_bytes"),
                l.memory_bytes.to_string(),
            ),
            // No swap beyond the memory limit (only where swap accounting is on).
            (
                mem.join("memory.memsw.limit_in_bytes"),
                l.memory_bytes.to_string(),
            ),
            (
                self.pids.join(KRILL_DIR).join(name).join("pids.max"),
                l.pids.to_string(),
            ),
        ];
        let cpu = self.cpu.join(KRILL_DIR).join(name);
        w.push((cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()));
        w.push((cpu.join("cpu.cfs_quota_us"), cpu_quota(l.cpus).to_string()));
        w
    }

    fn usage(&self, name: &str) -> Usage {
        let mem = self.memory.join(KRILL_DIR).join(name);
        let acct = self.cpuacct.join(KRILL_DIR).join(name);
        Usage {
            peak_memory_bytes: read_u64(&mem.join("memory.max_usage_in_bytes")),
            cpu_time_ms: read_u64(&acct.join("cpuacct.usage")).map(|ns| ns / 1_000_000),
        }
    }

    fn oom_kills(&self, name: &str) -> u64 {
        let dir = self.memory.join(KRILL_DIR).join(name);
        fs::read_to_string(dir.join("memory.oom_control"))
            .ok()
            .and_then(|t| keyed(&t, "oom_kill"))
            .unwrap_or(0)
    }

    fn kill(&self, name: &str) {
        // Freeze so nothing forks while we kill, SIGKILL every pid, thaw so the
        // signals are delivered.
        let freezer = self.freezer.join(KRILL_DIR).join(name);
        let _ = write_file(&freezer.join("freezer.state"), "FROZEN");
        kill_procs(&freezer.join("cgroup.procs"));
        let _ = write_file(&freezer.join("freezer.state"), "THAWED");
        kill_procs(&freezer.join("cgroup.procs"));
    }

    fn init(&self, worker: &str) -> io::Result<()> {
        for k in self.krill_dirs() {
            fs::create_dir_all(k.join(worker))?;
        }
        Ok(())
    }
}

/// cgroup v2: one directory per task in the unified hierarchy.
#[derive(Debug, Clone)]
pub struct V2 {
    /// The worker's own cgroup directory (`<mount>/<path from /proc/self/cgroup>`).
    pub base: PathBuf,
    /// Whether `base` is the hierarchy's root (exempt from the no-internal-process rule).
    pub base_is_root: bool,
}

impl V2 {
    /// Every directory that must delegate the controllers to its children, from
    /// the top: `base` (unless the worker stays there), `base/krill`, `base/krill/<worker>`.
    pub fn subtree_dirs(&self, worker: &str) -> Vec<PathBuf> {
        let k = self.base.join(KRILL_DIR);
        vec![self.base.clone(), k.clone(), k.join(worker)]
    }

    /// The value written to `cgroup.subtree_control`.
    pub fn subtree_value() -> String {
        V2_CONTROLLERS
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Driver for V2 {
    fn version(&self) -> &'static str {
        "v2"
    }

    fn krill_dirs(&self) -> Vec<PathBuf> {
        vec![self.base.join(KRILL_DIR)]
    }

    fn limit_writes(&self, name: &str, l: &Effective) -> Vec<(PathBuf, String)> {
        let d = self.base.join(KRILL_DIR).join(name);
        vec![
            (d.join("memory.max"), l.memory_bytes.to_string()),
            (d.join("memory.swap.max"), "0".to_string()),
            (d.join("pids.max"), l.pids.to_string()),
            (
                d.join("cpu.max"),
                format!("{} {CPU_PERIOD_US}", cpu_quota(l.cpus)),
            ),
        ]
    }

    fn usage(&self, name: &str) -> Usage {
        let d = self.base.join(KRILL_DIR).join(name);
        Usage {
            // memory.peak exists from Linux 5.19.
            peak_memory_bytes: read_u64(&d.join("memory.peak")),
            cpu_time_ms: fs::read_to_string(d.join("cpu.stat"))
                .ok()
                .and_then(|t| keyed(&t, "usage_usec"))
                .map(|us| us / 1000),
        }
    }

    fn oom_kills(&self, name: &str) -> u64 {
        let d = self.base.join(KRILL_DIR).join(name);
        fs::read_to_string(d.join("memory.events"))
            .ok()
            .and_then(|t| keyed(&t, "oom_kill"))
            .unwrap_or(0)
    }

    fn kill(&self, name: &str) {
        let d = self.base.join(KRILL_DIR).join(name);
        // cgroup.kill (Linux 5.14) kills the whole subtree atomically; the
        // pid-by-pid loop covers older kernels.
        let _ = write_file(&d.join("cgroup.kill"), "1");
        kill_procs(&d.join("cgroup.procs"));
    }

    fn init(&self, worker: &str) -> io::Result<()> {
        let k = self.base.join(KRILL_DIR);
        fs::create_dir_all(k.join(worker))?;
        if !self.base_is_root {
            // No-internal-process rule: leave `base` before delegating from it.
            let sup = self.base.join(SUPERVISOR_DIR);
            fs::create_dir_all(&sup)?;
            write_file(&sup.join("cgroup.procs"), &std::process::id().to_string())?;
        }
        for d in self.subtree_dirs(worker) {
            write_file(&d.join("cgroup.subtree_control"), &Self::subtree_value())?;
        }
        Ok(())
    }
}

/// cpu quota per period for `cpus` cores (at least 1 ms).
pub fn cpu_quota(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

/// The value of `key` in a flat keyed file (`key value` lines).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn write_file(p: &Path, v: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(p)?;
    f.write_all(v.as_bytes())
}

/// SIGKILLs every pid listed in `procs` until it lists none (a few rounds: a
/// process may fork between the read and the kill unless the cgroup is frozen).
pub fn kill_procs(procs: &Path) {
    for _ in 0..20 {
        let Ok(text) = fs::read_to_string(procs) else {
            return;
        };
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for p in pids.into_iter().filter(|p| *p > 1) {
            // SAFETY: kill(2) has no memory-safety preconditions; `p` is a real pid
            // (> 1) read from the task's own cgroup.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Which cgroup setup this host offers.
#[derive(Debug, Clone, PartialEq)]
pub enum Detected {
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        freezer: PathBuf,
    },
    V2 {
        base: PathBuf,
        base_is_root: bool,
    },
    /// Neither is usable; the reason.
    None(String),
}

/// Picks v2 where its controllers are available to the worker's cgroup, else v1
/// where every needed controller is mounted. Pure: takes the text of
/// `/proc/self/mountinfo`, of `/proc/self/cgroup`, and a reader of the v2
/// `cgroup.controllers` file (so it is unit-tested without a host).
pub fn detect(
    mountinfo: &str,
    self_cgroup: &str,
    controllers_of: impl Fn(&Path) -> Option<String>,
) -> Detected {
    let mut v1: Vec<(String, PathBuf)> = Vec::new();
    let mut v2_mount: Option<PathBuf> = None;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(mnt), Some(fstype)) = (pre.get(4), post.first()) else {
            continue;
        };
        match *fstype {
            "cgroup2" => v2_mount = Some(PathBuf::from(unescape(mnt))),
            "cgroup" => {
                for opt in post.get(2).unwrap_or(&"").split(',') {
                    v1.push((opt.to_string(), PathBuf::from(unescape(mnt))));
                }
            }
            _ => {}
        }
    }
    if let Some(mount) = v2_mount {
        let own = self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim();
        let base = mount.join(own.trim_start_matches('/'));
        let avail = controllers_of(&base).unwrap_or_default();
        let avail: Vec<&str> = avail.split_whitespace().collect();
        if V2_CONTROLLERS.iter().all(|c| avail.contains(c)) {
            return Detected::V2 {
                base_is_root: own == "/",
                base,
            };
        }
    }
    let find = |c: &str| v1.iter().find(|(o, _)| o == c).map(|(_, p)| p.clone());
    match (
        find("memory"),
        find("pids"),
        find("cpu"),
        find("cpuacct"),
        find("freezer"),
    ) {
        (Some(memory), Some(pids), Some(cpu), Some(cpuacct), Some(freezer)) => Detected::V1 {
            memory,
            pids,
            cpu,
            cpuacct,
            freezer,
        },
        _ => Detected::None(
            "no usable cgroup: cgroup v2 does not offer memory, pids and cpu to the worker's \
             cgroup, and cgroup v1 does not mount memory, pids, cpu, cpuacct and freezer"
                .into(),
        ),
    }
}

/// Octal escapes of mountinfo (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|t| u8::from_str_radix(t, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detects the host's cgroup setup.
pub fn detect_host() -> Result<Arc<dyn Driver>, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    match detect(&mountinfo, &own, |p| {
        fs::read_to_string(p.join("cgroup.controllers")).ok()
    }) {
        Detected::V1 {
            memory,
            pids,
            cpu,
            cpuacct,
            freezer,
        } => Ok(Arc::new(V1 {
            memory,
            pids,
            cpu,
            cpuacct,
            freezer,
        })),
        Detected::V2 { base, base_is_root } => Ok(Arc::new(V2 { base, base_is_root })),
        Detected::None(why) => Err(why),
    }
}

/// One task's cgroup; killed and removed when dropped.
#[derive(Debug)]
pub struct TaskCgroup {
    driver: Arc<dyn Driver>,
    /// `<worker>/<task>`.
    pub name: String,
    procs: Vec<PathBuf>,
}

impl TaskCgroup {
    /// Creates the cgroup (without limits: see [`TaskCgroup::apply`]); any
    /// failure removes it again.
    pub fn create(driver: Arc<dyn Driver>, name: String) -> io::Result<Self> {
        let mut cg = TaskCgroup {
            driver,
            procs: Vec::new(),
            name,
        };
        for d in dirs(cg.driver.as_ref(), &cg.name) {
            fs::create_dir(&d)?;
            cg.procs.push(d.join("cgroup.procs"));
        }
        Ok(cg)
    }

    /// Writes every limit, before any task code runs in the cgroup.
    pub fn apply(&self, limits: &Effective) -> io::Result<()> {
        for (file, value) in self.driver.limit_writes(&self.name, limits) {
            if let Err(e) = write_file(&file, &value) {
                // Swap accounting is often off: its file is then missing.
                if file.ends_with("memory.memsw.limit_in_bytes")
                    && e.kind() == io::ErrorKind::NotFound
                {
                    continue;
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("writing {}: {e}", file.display()),
                ));
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a new process writes `0` to, to join the cgroup.
    pub fn procs_files(&self) -> &[PathBuf] {
        &self.procs
    }

    pub fn kill(&self) {
        self.driver.kill(&self.name);
    }

    pub fn usage(&self) -> Usage {
        self.driver.usage(&self.name)
    }

    pub fn oom_kills(&self) -> u64 {
        self.driver.oom_kills(&self.name)
    }
}

impl Drop for TaskCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove(self.driver.as_ref(), &self.name) {
            tracing::warn!(cgroup = %self.name, error = %e, "failed to remove task cgroup");
        }
    }
}

/// Kills what is left in the task cgroup `name` and removes its directories.
pub fn remove(driver: &dyn Driver, name: &str) -> io::Result<()> {
    let mut last = Ok(());
    for attempt in 0..100 {
        driver.kill(name);
        last = Ok(());
        for d in dirs(driver, name) {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => last = Err(e),
            }
        }
        if last.is_ok() {
            return Ok(());
        }
        // Processes take a moment to leave after SIGKILL.
        std::thread::sleep(Duration::from_millis(if attempt < 10 { 5 } else { 50 }));
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Effective {
        Effective {
            timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            cpus: 0.5,
            pids: 32,
            disk_bytes: 1 << 20,
            output_file_bytes: 1 << 20,
            network: false,
            network_allow: Vec::new(),
        }
    }

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    const MOUNTINFO_V2: &str =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate";

    #[test]
    fn detects_v1_when_v2_has_no_controllers() {
        let d = detect(MOUNTINFO_V1, "4:memory:/\n0::/\n", |_| Some(String::new()));
        assert_eq!(
            d,
            Detected::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                pids: "/sys/fs/cgroup/pids".into(),
                cpu: "/sys/fs/cgroup/cpu,cpuacct".into(),
                cpuacct: "/sys/fs/cgroup/cpu,cpuacct".into(),
                freezer: "/sys/fs/cgroup/freezer".into(),
            }
        );
    }

    #[test]
    fn detects_v2_with_delegated_controllers() {
        let d = detect(MOUNTINFO_V2, "0::/system.slice/krill.service\n", |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup/system.slice/krill.service"));
            Some("cpuset cpu io memory pids\n".into())
        });
        assert_eq!(
            d,
            Detected::V2 {
                base: "/sys/fs/cgroup/system.slice/krill.service".into(),
                base_is_root: false
            }
        );
        let root = detect(MOUNTINFO_V2, "0::/\n", |_| Some("memory pids cpu".into()));
        assert!(matches!(
            root,
            Detected::V2 {
                base_is_root: true,
                ..
            }
        ));
        let none = detect(MOUNTINFO_V2, "0::/x\n", |_| Some("memory".into()));
        assert!(matches!(none, Detected::None(_)), "{none:?}");
    }

    #[test]
    fn v2_files_and_values() {
        let v2 = V2 {
            base: "/sys/fs/cgroup/krill.service".into(),
            base_is_root: false,
        };
        let w = v2.limit_writes("w1/t1", &limits());
        let d = Path::new("/sys/fs/cgroup/krill.service/krill/w1/t1");
        assert_eq!(
            w,
            vec![
                (d.join("memory.max"), (64u64 << 20).to_string()),
                (d.join("memory.swap.max"), "0".into()),
                (d.join("pids.max"), "32".into()),
                (d.join("cpu.max"), "50000 100000".into()),
            ]
        );
        assert_eq!(V2::subtree_value(), "+memory +pids +cpu");
        assert_eq!(
            v2.subtree_dirs("w1"),
            vec![
                PathBuf::from("/sys/fs/cgroup/krill.service"),
                PathBuf::from("/sys/fs/cgroup/krill.service/krill"),
                PathBuf::from("/sys/fs/cgroup/krill.service/krill/w1"),
            ]
        );
        assert_eq!(
            v2.krill_dirs(),
            vec![PathBuf::from("/sys/fs/cgroup/krill.service/krill")]
        );
    }

    #[test]
    fn v1_files_and_values() {
        let v1 = V1 {
            memory: "/m".into(),
            pids: "/p".into(),
            cpu: "/c".into(),
            cpuacct: "/c".into(),
            freezer: "/f".into(),
        };
        assert_eq!(
            v1.krill_dirs(),
            vec![
                PathBuf::from("/c/krill"),
                PathBuf::from("/f/krill"),
                PathBuf::from("/m/krill"),
                PathBuf::from("/p/krill")
            ]
        );
        let w = v1.limit_writes("w/t", &limits());
        assert_eq!(w[0].0, PathBuf::from("/m/krill/w/t/memory.limit_in_bytes"));
        assert_eq!(w[2], (PathBuf::from("/p/krill/w/t/pids.max"), "32".into()));
        assert_eq!(
            w[4],
            (
                PathBuf::from("/c/krill/w/t/cpu.cfs_quota_us"),
                "50000".into()
            )
        );
    }

    #[test]
    fn keyed_files() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "oom"), Some(2));
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(keyed(stat, "usage_usec"), Some(123456));
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed("", "x"), None);
        assert_eq!(cpu_quota(2.0), 200_000);
        assert_eq!(cpu_quota(0.001), 1000);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
