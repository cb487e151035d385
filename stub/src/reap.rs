//! How the stub makes sure nothing of the task outlives the script: the
//! script's process group, SIGKILLed when it is dropped, and, once the script
//! has ended, every other process of the container (`setsid` ones too) killed
//! and gone before the output files are read; the audit login uid the script
//! inherits.

use std::time::{Duration, Instant};

/// The script's process group; SIGKILLed when dropped, so nothing it started
/// outlives the stub's interest in it (the container's removal is the backstop).
pub struct Group(pub libc::pid_t);

impl Group {
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: killpg has no memory-safety preconditions; the group id is the
        // script's pid, which stays reserved while the group has members.
        unsafe { libc::killpg(self.0, sig) };
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Sets this process's audit login uid (inherited by the script) to the
/// script's uid. The kernel lets any process set an unset login uid once,
/// without privileges, so a script started with it unset could forge it; once
/// set, it takes `CAP_AUDIT_CONTROL` (which no task has) to change. Where it
/// is set already (the engine was started from a login session), immutable,
/// or `/proc` is read-only (the container's is: see `limits.rs`), the write
/// fails and nothing changes: the task cannot change it either.
pub fn set_loginuid(uid: u32) {
    let _ = std::fs::write("/proc/self/loginuid", uid.to_string());
}

/// SIGKILLs every process of the container but docker-init (pid 1) and the
/// stub itself — what `kill(-1)` reaches: the stub may signal the script's
/// processes, nothing outside its pid namespace — and waits until none of them
/// runs (a zombie waiting for docker-init to reap it no longer writes).
pub fn end_every_process(limit: Duration) -> Result<(), String> {
    let me = std::process::id();
    if !own_pid_namespace() {
        return Err(
            "krill-stub is not in the container's own pid namespace, so it cannot \
                    make sure every process of the task is gone"
                .into(),
        );
    }
    let until = Instant::now() + limit;
    loop {
        kill_all();
        let left = running_others(me);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "{left} process(es) of the task were still running {} s after SIGKILL",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL to every process the stub may signal but docker-init and itself:
/// every process of the task, `setsid` or not, and nothing outside the
/// container's pid namespace.
///
/// Only inside the container's own pid namespace (the stub is its pid 1, or
/// docker-init's child there): run anywhere else, `kill(-1)` by root would
/// reach the whole host, so it is not sent.
pub fn kill_all() {
    if own_pid_namespace() {
        // SAFETY: kill(2) takes two integers, pid -1 meaning every process the
        // caller may signal except init and the caller.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    }
}

/// Whether the stub is pid 1 of its pid namespace or docker-init's child there.
fn own_pid_namespace() -> bool {
    // SAFETY: getpid and getppid cannot fail and have no preconditions.
    unsafe { libc::getpid() == 1 || libc::getppid() == 1 }
}

/// Processes in /proc other than pid 1 and `me` that are not zombies.
fn running_others(me: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1 && pid != me)
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the last `)` (the command name may contain one).
            match stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next())
            {
                Some('Z' | 'X') | None => false,
                Some(_) => true,
            }
        })
        .count()
}
