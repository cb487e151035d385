//! Landlock as a second fence around the task, behind the mount namespace: even
//! if a mount were wrong, the script may read and execute only inside the view's
//! named parts and write only to its scratch (`/work`, `/tmp`, `/dev/shm`), its
//! two output files and the harmless devices. It may also not reach abstract
//! unix sockets or signal processes outside its own domain.
//!
//! ```text
//! /usr /bin /lib* … (every other top-level part)   read, execute
//! /etc /proc /krill                                read
//! /krill/output /krill/sensitive_output            read, write, truncate
//! /dev                                             read, write, ioctl on devices
//! /dev/mqueue (the task's own ipc namespace)       make, use and remove queues
//! /work /tmp /dev/shm                              everything but device nodes
//! /                                                list
//! ```
//!
//! The init builds the ruleset while it waits for its task ([`Fence::prepare`],
//! in the view, after /proc is mounted); the script enforces it on itself
//! between fork and exec ([`Fence::restrict`], one syscall), after
//! `no_new_privs`. Best effort: on a kernel without Landlock (or an older ABI)
//! the rules that can be applied are, and the result says so.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, Scope, ABI,
};

use super::layout::{HOME, OUTPUT_FILE, SENSITIVE_FILE, TASK_MOUNT};

/// The Landlock ABI whose rights and scopes the fence uses (Linux 6.12).
const TARGET: ABI = ABI::V6;
/// `LANDLOCK_CREATE_RULESET_VERSION`: asks the kernel for its ABI version.
const CREATE_RULESET_VERSION: u32 = 1;

/// How much of the fence the kernel applies: the init reports it with `ready`,
/// the worker puts it in the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Every rule and scope.
    Full,
    /// An older Landlock ABI: the rights it knows (reads and writes are still fenced).
    Partial,
    /// No Landlock in this kernel (or it is disabled).
    Off,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Full => "full",
            State::Partial => "partial",
            State::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        match s {
            "full" => Some(State::Full),
            "partial" => Some(State::Partial),
            "off" => Some(State::Off),
            _ => None,
        }
    }
}

/// A ruleset made ahead of the task, enforced by the script on itself.
#[derive(Debug)]
pub struct Fence {
    fd: Option<OwnedFd>,
    pub state: State,
}

impl Fence {
    /// Builds the ruleset for the current root (the task's view, entered).
    pub fn prepare() -> Result<Fence, String> {
        let state = match kernel_abi() {
            v if v >= TARGET as i32 => State::Full,
            v if v >= 1 => State::Partial,
            _ => State::Off,
        };
        let all = AccessFs::from_all(TARGET);
        let read = AccessFs::ReadFile | AccessFs::ReadDir;
        let exec = read | AccessFs::Execute;
        let scratch = all & !(AccessFs::MakeChar | AccessFs::MakeBlock);
        let dev = read | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
        let output = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
        let mqueue = output | AccessFs::ReadDir | AccessFs::MakeReg | AccessFs::RemoveFile;
        let e = |e: landlock::RulesetError| format!("landlock: {e}");
        let mut rules: Vec<(String, BitFlags<AccessFs>)> = vec![
            ("/".into(), AccessFs::ReadDir.into()),
            ("/etc".into(), read),
            ("/proc".into(), read),
            (TASK_MOUNT.into(), read),
            (format!("{TASK_MOUNT}/{OUTPUT_FILE}"), output),
            (format!("{TASK_MOUNT}/{SENSITIVE_FILE}"), output),
            ("/dev".into(), dev),
            ("/dev/shm".into(), scratch),
            // POSIX message queues (mq_open makes a file in this filesystem).
            ("/dev/mqueue".into(), mqueue),
            (HOME.into(), scratch),
            ("/tmp".into(), scratch),
        ];
        // Every other part of the view: programs, libraries, operators' binds.
        let owned = ["etc", "proc", "krill", "dev", "work", "tmp"];
        for entry in std::fs::read_dir("/").map_err(|e| format!("reading /: {e}"))? {
            let name = entry.map_err(|e| e.to_string())?.file_name();
            let name = name.to_string_lossy();
            if !owned.contains(&name.as_ref()) {
                rules.push((format!("/{name}"), exec));
            }
        }
        let mut ruleset: RulesetCreated = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)
            .map_err(e)?
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(e)?
            .create()
            .map_err(e)?;
        for (path, access) in rules {
            if !Path::new(&path).exists() {
                continue; // a dangling link (e.g. /lib32 -> usr/lib32 without it)
            }
            let fd = PathFd::new(&path).map_err(|e| format!("landlock: {path}: {e}"))?;
            // A file takes file rights only.
            let access = if Path::new(&path).is_dir() {
                access
            } else {
                access & AccessFs::from_file(TARGET)
            };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(e)?;
        }
        Ok(Fence {
            fd: Option::<OwnedFd>::from(ruleset),
            state,
        })
    }

    /// Enforces the ruleset on the calling process (and whatever it starts).
    /// Async-signal-safe: one syscall on a descriptor opened before the fork.
    /// The caller has set `no_new_privs`.
    pub fn restrict(&self) -> std::io::Result<()> {
        let Some(fd) = &self.fd else {
            return Ok(());
        };
        // SAFETY: landlock_restrict_self takes a ruleset descriptor this
        // process owns and flags 0; it touches no memory of ours.
        let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The kernel's Landlock ABI version; 0 or less when it has none.
fn kernel_abi() -> i32 {
    // SAFETY: with a NULL attribute, size 0 and the VERSION flag the call only
    // returns a number.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            CREATE_RULESET_VERSION,
        ) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in [State::Full, State::Partial, State::Off] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("maybe"), None);
    }

    #[test]
    fn this_kernel_has_the_target_abi() {
        // The machines Krill is tested on run Linux 6.12 or later: the fence
        // is applied in full. (A failure here says the test host changed.)
        assert!(kernel_abi() >= TARGET as i32, "abi {}", kernel_abi());
    }
}
