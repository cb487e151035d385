//! The sandbox helper: the small `krill-sandbox-init` binary (or, where it is
//! not installed, `krill-worker` re-executed with argv[0] = [`ARG0`]).
//!
//! The worker starts it with `posix_spawn` (no fork of the worker's big,
//! multi-threaded address space, nothing run between fork and exec), usually
//! ahead of its task (see ready.rs), with a socket on stdin that carries two
//! frames in — the [`SandboxConfig`] at once, the [`TaskConfig`] when the task
//! is claimed — and the [`Report`] out (the wire itself is in
//! [`message`](super::message), used by both sides). Single-threaded (so allocation is fine
//! until the last fork):
//!
//! ```text
//! helper (root, host pid ns; ignores TERM)
//!  │  own session, parent-death signal, reads the SandboxConfig, sets its
//!  │  oom_score_adj (1000) and login uid (the task's) for all to inherit,
//!  │  joins the cgroup, unshares the mount, pid, ipc, uts (and net)
//!  │  namespaces, builds the filesystem view (fs.rs), sets the host name,
//!  │  brings `lo` up, forks:
//!  └─ init = PID 1 of the task's pid ns (root; parent-death signal SIGKILL)
//!      │  mounts /proc read-only (so neither can be changed by the task),
//!      │  then waits for the TaskConfig; resizes the scratch
//!      │  tmpfs if asked, spawns the script, reaps every orphan; when the
//!      │  script exits it SIGKILLs everything else in the namespace, reaps it,
//!      │  and reports how the script ended on fd 3
//!      └─ script (task uid/gid, no groups, no capabilities (bounding and
//!         ambient too), no_new_privs, seccomp, rlimits, only fds 0-2, clean env)
//! ```
//!
//! Once the script runs, only the task's processes hold its stdout and stderr
//! pipes (the helper and the init put /dev/null on theirs), so the report and
//! the pipes' end-of-file mean the task is over; the namespaces are torn down
//! after that, off the path to the result.
//!
//! Every limit is in place before any task code runs: the cgroup is joined and
//! the namespaces made before the init is forked. When the helper dies (the
//! worker SIGKILLs it at a deadline, or the worker itself died: its
//! parent-death signal), the init gets SIGKILL, and when a pid namespace's init
//! dies the kernel kills every process in it: no `setsid`, double fork or
//! trapped signal survives.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::message::{read_frame, ready_line, Report, SandboxConfig, TaskConfig, STATUS_FD};

/// argv[0] of the helper.
pub const ARG0: &str = "krill-sandbox-init";
/// Set in the helper's environment to the worker's pid (the helper exits if its
/// parent is not that process: the worker died before the helper could arm its
/// parent-death signal).
pub const ENV_FLAG: &str = "KRILL_SANDBOX_INIT";
/// Name of the dedicated helper binary, installed next to `krill-worker`.
pub const BINARY: &str = "krill-sandbox-init";
/// Host name inside the sandbox.
pub const HOSTNAME: &str = "krill";

/// Runs the helper when this process was started as one (the worker binary
/// re-executed); returns its exit code. `None`: this is the normal worker.
pub fn run_if_requested() -> Option<i32> {
    if std::env::args_os().next()? != ARG0 || std::env::var_os(ENV_FLAG).is_none() {
        return None;
    }
    Some(helper())
}

fn report(status: &mut File, r: &Report) {
    let _ = status.write_all(r.line().as_bytes());
}

/// The helper's `main`: sets up the namespaces and cgroup, forks the init and
/// waits for it; returns the helper's exit code.
pub fn helper() -> i32 {
    // SAFETY: setsid and prctl(PR_SET_PDEATHSIG) have no memory effects.
    unsafe {
        // Its own session and process group: the worker's TERM reaches the
        // task's group only, and no terminal is inherited.
        libc::setsid();
        // The worker's death kills the helper, whose death kills the task.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // The worker died before the parent-death signal was armed.
    let parent = std::env::var(ENV_FLAG)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    if parent.is_some_and(|p| nix::unistd::getppid().as_raw() != p) {
        return 1;
    }
    // SAFETY: dup2 and close_range only manage descriptors: fd 0 is the socket
    // the worker gave as stdin; nothing above 3 is in use in this fresh process.
    unsafe {
        if libc::dup2(0, STATUS_FD) < 0 {
            return 1;
        }
        // Nothing inherited beyond stdio and the status socket.
        libc::syscall(libc::SYS_close_range, STATUS_FD as u32 + 1, u32::MAX, 0u32);
    }
    // SAFETY: fd 3 was just made a copy of the status socket; only this owns it.
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    // The worker's TERM is for the script; the helper only dies by SIGKILL.
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: installing SIG_IGN runs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    // Everything that does not depend on the task, done before it is known
    // (the helper is started ahead of its task).
    let sandbox: SandboxConfig = match read_frame(&mut std::io::stdin(), "sandbox config") {
        Ok(c) => c,
        Err(e) => {
            report(&mut status, &Report::Error(e));
            return 1;
        }
    };
    if let Err(e) = null_stdio(&[0])
        .and_then(|()| inherited_by_the_task(&sandbox))
        .and_then(|()| enter_sandbox(&sandbox))
        .and_then(|()| prepare_namespaces(&sandbox))
    {
        report(&mut status, &Report::Error(e));
        return 1;
    }
    // The init learns the helper died before its parent-death signal was armed
    // from this pipe's hang-up (its getppid() is 0: the parent is outside its pid ns).
    let (alive_r, alive_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            report(&mut status, &Report::Error(format!("pipe: {e}")));
            return 1;
        }
    };
    // SAFETY: this process is single-threaded (a fresh exec that started no
    // threads), so the child may do anything after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(alive_w);
            let code = init(&sandbox, &mut status, alive_r);
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status);
            drop(alive_r);
            // Only the task's processes hold its output pipes: their end-of-file
            // means it is over.
            let _ = null_stdio(&[1, 2]);
            let _keep = alive_w;
            loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => return 0,
                }
            }
        }
        Err(e) => {
            report(&mut status, &Report::Error(format!("fork: {e}")));
            1
        }
    }
}

/// What the helper sets on itself, while /proc is still writable, for the
/// init and the script to inherit across fork and exec:
///
/// - `oom_score_adj` 1000: under host memory pressure every task process dies
///   before the worker. Only a process with `CAP_SYS_RESOURCE` could pin it
///   (`oom_score_adj_min`); the init's read-only /proc is what keeps the task
///   from lowering it anyway;
/// - the audit login uid: the task's uid (an unset one could be set once by the
///   task itself; set, it takes `CAP_AUDIT_CONTROL` to change). Refused only
///   where it is immutable, which is as good.
fn inherited_by_the_task(cfg: &SandboxConfig) -> Result<(), String> {
    std::fs::write("/proc/self/oom_score_adj", "1000")
        .map_err(|e| format!("setting oom_score_adj: {e}"))?;
    let _ = std::fs::write("/proc/self/loginuid", cfg.uid.to_string());
    Ok(())
}

/// Puts /dev/null on the given standard descriptors.
fn null_stdio(fds: &[i32]) -> Result<(), String> {
    let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    for fd in fds {
        // SAFETY: dup2 onto a standard descriptor this process owns.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), *fd) } < 0 {
            return Err(format!(
                "dup2 /dev/null: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Joins the task cgroup (every hierarchy) and unshares the namespaces: from
/// here on, whatever this process forks is limited and isolated.
fn enter_sandbox(cfg: &SandboxConfig) -> Result<(), String> {
    for procs in &cfg.cgroup_procs {
        // "0": the writing process.
        std::fs::write(procs, "0")
            .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }
    // The cgroup namespace after joining: its root is the task's own cgroup.
    let mut flags = nix::sched::CloneFlags::CLONE_NEWNS
        | nix::sched::CloneFlags::CLONE_NEWCGROUP
        | nix::sched::CloneFlags::CLONE_NEWPID
        | nix::sched::CloneFlags::CLONE_NEWIPC
        | nix::sched::CloneFlags::CLONE_NEWUTS;
    if cfg.net_ns {
        flags |= nix::sched::CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(|e| format!("unshare: {e}"))
}

fn prepare_namespaces(cfg: &SandboxConfig) -> Result<(), String> {
    super::fs::build_view(cfg, HOSTNAME)?;
    nix::unistd::sethostname(HOSTNAME).map_err(|e| format!("sethostname: {e}"))?;
    if cfg.net_ns {
        loopback_up()?;
    }
    Ok(())
}

/// A fresh net namespace has only `lo`, and it is down.
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket/ioctl/close calls on a zeroed `ifreq` whose name is
    // set within its bounds; no pointers escape.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(format!("bringing lo up: {err}"));
        }
    }
    Ok(())
}

/// PID 1 of the task's pid namespace; returns the exit code of the init.
fn init(sandbox: &SandboxConfig, status: &mut File, helper_alive: std::os::fd::OwnedFd) -> i32 {
    // SAFETY: prctl(PR_SET_PDEATHSIG) has no memory effects.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&helper_alive),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, no timeout.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        return 1; // hung up (or failed): the helper is gone
    }
    drop(helper_alive);
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: restoring the default disposition runs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigDfl) };
    }
    // Read-only (see `special::mount_proc`): no task process can lower the
    // oom_score_adj or set the login uid the helper set (`inherited_by_the_task`).
    if let Err(e) = super::special::mount_proc() {
        report(status, &Report::Error(e));
        return 1;
    }
    // The second fence, made ahead: the script enforces it on itself.
    let fence = match super::fence::Fence::prepare() {
        Ok(f) => f,
        Err(e) => {
            report(status, &Report::Error(e));
            return 1;
        }
    };
    // The status pipe must not reach the script.
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    // The seccomp filters are compiled before the task is known too.
    let filters = match crate::sandbox::seccomp::Filters::build(sandbox.network) {
        Ok(f) => f,
        Err(e) => {
            report(status, &Report::Error(e.to_string()));
            return 1;
        }
    };
    // Everything is in place: wait for the task.
    let _ = status.write_all(ready_line(fence.state).as_bytes());
    let task: TaskConfig = match read_frame(status, "task config") {
        Ok(t) => t,
        Err(e) => {
            // The worker let this sandbox go unused (it stopped).
            report(status, &Report::Error(e));
            return 1;
        }
    };
    if task.disk_bytes != sandbox.disk_bytes {
        if let Err(e) = super::fs::resize_scratch(task.disk_bytes) {
            report(status, &Report::Error(e));
            return 1;
        }
    }
    let script = match spawn_script(sandbox, &task, &filters, fence) {
        Ok(pid) => {
            // Only the task's processes hold its output pipes now.
            let _ = null_stdio(&[1, 2]);
            pid
        }
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let _ = writeln!(
                std::io::stderr(),
                "krill: cannot run interpreter `{}`: {e}",
                task.argv.first().map(String::as_str).unwrap_or("")
            );
            report(status, &Report::Exit(code));
            return 0;
        }
    };
    let mut outcome = None;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == script => {
                outcome = Some(Report::Exit(code));
                kill_all();
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == script => {
                outcome = Some(Report::Signal(sig as i32));
                kill_all();
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break, // ECHILD: nothing left
        }
    }
    if let Some(r) = outcome {
        report(status, &r);
    }
    0
}

/// From PID 1: SIGKILL to every other process of the namespace.
fn kill_all() {
    // SAFETY: kill(-1) from a pid namespace's init reaches only that namespace.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
    }
}

/// Starts the script with every privilege dropped. The `pre_exec` closure runs
/// between fork and exec and is async-signal-safe: everything it needs is
/// computed before.
fn spawn_script(
    sandbox: &SandboxConfig,
    cfg: &TaskConfig,
    filters: &crate::sandbox::seccomp::Filters,
    fence: super::fence::Fence,
) -> std::io::Result<Pid> {
    let (program, args) = cfg
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty interpreter"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&cfg.cwd)
        .stdin(std::process::Stdio::null());
    let uid = sandbox.uid;
    let gid = sandbox.gid;
    let nproc = if cfg.nproc == 0 {
        libc::RLIM_INFINITY
    } else {
        cfg.nproc
    };
    let limits = [
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_NOFILE, sandbox.nofile),
        (libc::RLIMIT_FSIZE, cfg.disk_bytes),
        (libc::RLIMIT_NPROC, nproc),
    ];
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    let filters = filters.clone();
    // SAFETY: the closure only calls async-signal-safe functions (setrlimit,
    // prctl, setgroups, setgid, setuid, landlock_restrict_self) on data prepared
    // before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let err = std::io::Error::last_os_error;
            for (res, v) in limits {
                let lim = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(res, &lim) != 0 {
                    return Err(err());
                }
            }
            // No capability can come back: empty bounding and ambient sets.
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            );
            for cap in 0..=last_cap {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            // Groups, then gid, then uid: after setuid the others cannot change.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(err());
            }
            if libc::setuid(0) == 0 {
                return Err(std::io::Error::other("privileges could be regained"));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(err());
            }
            // Landlock before seccomp: the allow-list need not have its syscall.
            fence.restrict()?;
            // Last: from here on only the allow-list's syscalls reach the kernel.
            filters.install()?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}
