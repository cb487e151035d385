//! The allow-list itself: the one source both sandboxes' filters are built from
//! (the process sandbox compiles it to BPF, the container sandbox hands Docker
//! the same rules as a profile).
//!
//! What is not allowed here is refused: a syscall this list does not name (a
//! new kernel's included) fails with [`DEFAULT_ERRNO`] (`ENOSYS`, so libc falls
//! back to an older call), and the syscalls of [`REFUSED`] fail with `EPERM`,
//! so a tool that probes them is told "not permitted". Rules compare each
//! argument at most once (libseccomp's limit: what Docker's runtime can load is
//! what the process sandbox loads).

use super::numbers::number;

/// Errno of every syscall this policy does not name.
pub const DEFAULT_ERRNO: i32 = libc::ENOSYS;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    /// Fail with this errno.
    Errno(i32),
}

/// A comparison of one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq(u64),
    Ne(u64),
    Ge(u64),
    /// `(arg & mask) == value`.
    MaskedEq {
        mask: u64,
        value: u64,
    },
}

/// A condition on argument `arg` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub arg: u8,
    pub op: Op,
}

/// One rule: `action` when every condition holds (none: always). Several
/// rules for one syscall and action are alternatives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub syscall: &'static str,
    pub action: Action,
    pub when: Vec<Cond>,
}

/// Syscalls allowed without conditions: what shells, coreutils, interpreters
/// (python3, node, perl), compilers and build tools, git, tar and gzip need.
/// Reviewed against Docker's default profile: everything here is also there;
/// what Docker allows and this list does not (io_uring, ptrace, the keyrings,
/// `personality` beyond the default, NUMA and AIO calls, `kcmp`, new
/// syscalls since Linux 6.0, …) stays refused.
pub const ALLOWED: &[&str] = &[
    // files and descriptors
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "openat",
    "openat2",
    "close",
    "close_range",
    "lseek",
    "dup",
    "dup3",
    "fcntl",
    "flock",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "sync_file_range",
    "truncate",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "readahead",
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "newfstatat",
    "fstat",
    "statx",
    "statfs",
    "fstatfs",
    "faccessat",
    "faccessat2",
    "readlinkat",
    "getdents64",
    "getcwd",
    "chdir",
    "fchdir",
    "mkdirat",
    "renameat",
    "renameat2",
    "linkat",
    "unlinkat",
    "symlinkat",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "umask",
    "utimensat",
    "mknodat",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "ioctl",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    "memfd_create",
    // memory
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mlock",
    "mlock2",
    "munlock",
    "mlockall",
    "munlockall",
    "mincore",
    "msync",
    "membarrier",
    "get_mempolicy",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    // processes and threads (clone is conditional, below)
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "kill",
    "tkill",
    "tgkill",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "setpgid",
    "getsid",
    "setsid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "getgroups",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "setfsuid",
    "setfsgid",
    "capget",
    "capset",
    "prctl",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "futex",
    "futex_waitv",
    "pidfd_open",
    "pidfd_send_signal",
    "seccomp",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    // scheduling, time, limits
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_getattr",
    "sched_setattr",
    "getpriority",
    "setpriority",
    "ioprio_get",
    "ioprio_set",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "times",
    "getrusage",
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "sysinfo",
    "uname",
    "getrandom",
    "getcpu",
    "restart_syscall",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "timer_delete",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // signals
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "signalfd4",
    // IPC (the task's own ipc namespace) and events
    "pipe2",
    "eventfd2",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
    "ppoll",
    "pselect6",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    // sockets (socket and socketpair are conditional, below)
    "connect",
    "accept",
    "accept4",
    "bind",
    "listen",
    "getsockname",
    "getpeername",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
    "setsockopt",
    "getsockopt",
];

/// The older x86_64 names of calls above (aarch64 has only the `*at` forms).
pub const ALLOWED_X86_64: &[&str] = &[
    "open",
    "creat",
    "dup2",
    "stat",
    "lstat",
    "access",
    "readlink",
    "getdents",
    "mkdir",
    "rmdir",
    "rename",
    "link",
    "unlink",
    "symlink",
    "chmod",
    "chown",
    "lchown",
    "utime",
    "utimes",
    "futimesat",
    "mknod",
    "inotify_init",
    "fork",
    "vfork",
    "getpgrp",
    "time",
    "alarm",
    "pause",
    "pipe",
    "eventfd",
    "signalfd",
    "poll",
    "select",
    "epoll_create",
    "epoll_wait",
    "arch_prctl",
];

/// Refused with `EPERM`: what a task has no business doing, named so that a
/// probe gets "not permitted" (everything else not allowed gets `ENOSYS`).
pub const REFUSED: &[&str] = &[
    // other processes' memory and descriptors
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    // filesystems, mounts (old and new API), namespaces
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "mount_setattr",
    "listmount",
    "statmount",
    "unshare",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "quotactl_fd",
    "swapon",
    "swapoff",
    "acct",
    // kernel interfaces with a history of exploits
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "fanotify_init",
    // the machine itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "syslog",
    "vhangup",
];

/// Refused with `EPERM`, x86_64 only.
pub const REFUSED_X86_64: &[&str] = &["modify_ldt", "iopl", "ioperm", "uselib"];

/// `clone` flags that make a namespace: refused (`EPERM`).
pub const NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS as u64),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP as u64),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS as u64),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC as u64),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER as u64),
    ("CLONE_NEWPID", libc::CLONE_NEWPID as u64),
    ("CLONE_NEWNET", libc::CLONE_NEWNET as u64),
    ("CLONE_NEWTIME", 0x80),
];

/// Socket families a task may use (`AF_NETLINK` with `NETLINK_ROUTE` too, when
/// it has network); any other fails with `EAFNOSUPPORT`.
pub const FAMILIES: &[i32] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6];
/// Families are enumerated up to here; anything at or above is refused too.
pub const FAMILY_MAX: u64 = 64;

/// `personality` values allowed: the default (`PER_LINUX`), `PER_LINUX32`
/// (32-bit builds' `uname`), and the query. Anything else (such as
/// `ADDR_NO_RANDOMIZE`) gets the default errno.
pub const PERSONAS: &[u64] = &[0, 0x0008, 0xffff_ffff];

fn eq(arg: u8, v: u64) -> Cond {
    Cond { arg, op: Op::Eq(v) }
}

/// The whole policy for a task with or without network, every rule of it.
/// Only syscalls this architecture has are included.
pub fn rules(network: bool) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut push = |syscall: &'static str, action: Action, when: Vec<Cond>| {
        if number(syscall).is_some() {
            out.push(Rule {
                syscall,
                action,
                when,
            });
        }
    };
    let arch_allowed: &[&str] = if cfg!(target_arch = "x86_64") {
        ALLOWED_X86_64
    } else {
        &[]
    };
    for s in ALLOWED.iter().chain(arch_allowed) {
        push(s, Action::Allow, Vec::new());
    }
    let arch_refused: &[&str] = if cfg!(target_arch = "x86_64") {
        REFUSED_X86_64
    } else {
        &[]
    };
    for s in REFUSED.iter().chain(arch_refused) {
        push(s, Action::Errno(libc::EPERM), Vec::new());
    }
    // clone(flags, …): threads and processes, no namespaces. clone3 keeps its
    // flags in memory a filter cannot read: ENOSYS, and libc falls back.
    let ns_mask = NAMESPACE_FLAGS.iter().fold(0, |m, (_, f)| m | f);
    push(
        "clone",
        Action::Allow,
        vec![Cond {
            arg: 0,
            op: Op::MaskedEq {
                mask: ns_mask,
                value: 0,
            },
        }],
    );
    for (_, flag) in NAMESPACE_FLAGS {
        push(
            "clone",
            Action::Errno(libc::EPERM),
            vec![Cond {
                arg: 0,
                op: Op::MaskedEq {
                    mask: *flag,
                    value: *flag,
                },
            }],
        );
    }
    push("clone3", Action::Errno(libc::ENOSYS), Vec::new());
    // socket(family, type, protocol).
    let netlink = libc::AF_NETLINK as u64;
    for f in 0..FAMILY_MAX {
        if FAMILIES.contains(&(f as i32)) {
            push("socket", Action::Allow, vec![eq(0, f)]);
        } else if f == netlink && network {
            let route = libc::NETLINK_ROUTE as u64;
            push("socket", Action::Allow, vec![eq(0, f), eq(2, route)]);
            push(
                "socket",
                Action::Errno(libc::EPROTONOSUPPORT),
                vec![
                    eq(0, f),
                    Cond {
                        arg: 2,
                        op: Op::Ne(route),
                    },
                ],
            );
        } else {
            push("socket", Action::Errno(libc::EAFNOSUPPORT), vec![eq(0, f)]);
        }
    }
    push(
        "socket",
        Action::Errno(libc::EAFNOSUPPORT),
        vec![Cond {
            arg: 0,
            op: Op::Ge(FAMILY_MAX),
        }],
    );
    let unix = libc::AF_UNIX as u64;
    push("socketpair", Action::Allow, vec![eq(0, unix)]);
    push(
        "socketpair",
        Action::Errno(libc::EAFNOSUPPORT),
        vec![Cond {
            arg: 0,
            op: Op::Ne(unix),
        }],
    );
    for p in PERSONAS {
        push("personality", Action::Allow, vec![eq(0, *p)]);
    }
    out
}

/// The errno a task gets for `syscall` called with `args` (`None`: allowed),
/// as the rules decide: what the tests and the README table state.
pub fn verdict(rules: &[Rule], syscall: &str, args: &[u64]) -> Option<i32> {
    let holds = |c: &Cond| {
        let a = args.get(c.arg as usize).copied().unwrap_or(0);
        match c.op {
            Op::Eq(v) => a == v,
            Op::Ne(v) => a != v,
            Op::Ge(v) => a >= v,
            Op::MaskedEq { mask, value } => a & mask == value,
        }
    };
    let mut matched: Vec<Action> = rules
        .iter()
        .filter(|r| r.syscall == syscall && r.when.iter().all(holds))
        .map(|r| r.action)
        .collect();
    matched.sort();
    match matched.last() {
        None => Some(DEFAULT_ERRNO),
        Some(Action::Allow) => None,
        Some(Action::Errno(e)) => Some(*e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_syscall_of_this_architecture() {
        let arch_allowed: &[&str] = if cfg!(target_arch = "x86_64") {
            ALLOWED_X86_64
        } else {
            &[]
        };
        for s in ALLOWED.iter().chain(arch_allowed) {
            assert!(number(s).is_some(), "{s} has no number here");
        }
        for s in REFUSED {
            assert!(number(s).is_some(), "{s} has no number here");
        }
    }

    #[test]
    fn no_syscall_is_both_allowed_and_refused() {
        for s in REFUSED.iter().chain(REFUSED_X86_64) {
            assert!(!ALLOWED.contains(s) && !ALLOWED_X86_64.contains(s), "{s}");
        }
        let mut all: Vec<&str> = ALLOWED.iter().chain(ALLOWED_X86_64).copied().collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(n, all.len(), "a name is listed twice");
    }

    /// libseccomp (Docker's runtime) compares each argument once per rule;
    /// and rules of different actions must never overlap, or the two
    /// backends could decide differently.
    #[test]
    fn rules_are_loadable_by_libseccomp_and_never_overlap() {
        for network in [false, true] {
            let rules = rules(network);
            for r in &rules {
                let mut args: Vec<u8> = r.when.iter().map(|c| c.arg).collect();
                args.sort();
                let n = args.len();
                args.dedup();
                assert_eq!(n, args.len(), "{r:?} compares an argument twice");
            }
            // Overlap, probed on the values the rules name.
            for r in &rules {
                let mut probe = [0u64; 6];
                for c in &r.when {
                    probe[c.arg as usize] = match c.op {
                        Op::Eq(v) | Op::Ge(v) => v,
                        Op::Ne(v) => v.wrapping_add(1),
                        Op::MaskedEq { value, .. } => value,
                    };
                }
                let actions: std::collections::BTreeSet<Action> = rules
                    .iter()
                    .filter(|o| {
                        o.syscall == r.syscall
                            && o.when.iter().all(|c| {
                                let a = probe[c.arg as usize];
                                match c.op {
                                    Op::Eq(v) => a == v,
                                    Op::Ne(v) => a != v,
                                    Op::Ge(v) => a >= v,
                                    Op::MaskedEq { mask, value } => a & mask == value,
                                }
                            })
                    })
                    .map(|o| o.action)
                    .collect();
                assert!(actions.len() <= 1, "{} {probe:?}: {actions:?}", r.syscall);
            }
        }
    }

    #[test]
    fn the_issue_table_is_refused() {
        let off = rules(false);
        let on = rules(true);
        let eperm = Some(libc::EPERM);
        for s in [
            "ptrace",
            "modify_ldt",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "keyctl",
            "add_key",
            "io_uring_setup",
            "io_uring_enter",
            "fsopen",
            "open_tree",
            "mount_setattr",
            "quotactl_fd",
            "listmount",
            "statmount",
            "open_tree_attr",
            "unshare",
            "mount",
        ] {
            assert_eq!(verdict(&off, s, &[]), eperm, "{s}");
        }
        assert_eq!(verdict(&off, "clone3", &[]), Some(libc::ENOSYS));
        assert_eq!(verdict(&off, "mseal", &[]), Some(libc::ENOSYS));
        assert_eq!(verdict(&off, "no_such_call", &[]), Some(libc::ENOSYS));
        let vsock = libc::AF_VSOCK as u64;
        for rules in [&off, &on] {
            assert_eq!(
                verdict(rules, "socket", &[vsock, 1, 0]),
                Some(libc::EAFNOSUPPORT)
            );
            assert_eq!(verdict(rules, "socket", &[2, 1, 0]), None);
            assert_eq!(
                verdict(rules, "socket", &[1000, 1, 0]),
                Some(libc::EAFNOSUPPORT)
            );
            assert_eq!(
                verdict(rules, "clone", &[libc::CLONE_NEWUSER as u64 | 17]),
                eperm
            );
            assert_eq!(verdict(rules, "clone", &[0x3d0f00]), None, "pthread_create");
            assert_eq!(verdict(rules, "personality", &[0]), None);
            assert_eq!(
                verdict(rules, "personality", &[libc::ADDR_NO_RANDOMIZE as u64]),
                Some(libc::ENOSYS)
            );
        }
        let netlink = libc::AF_NETLINK as u64;
        assert_eq!(
            verdict(&off, "socket", &[netlink, 3, 0]),
            Some(libc::EAFNOSUPPORT)
        );
        assert_eq!(verdict(&on, "socket", &[netlink, 3, 0]), None);
        assert_eq!(
            verdict(&on, "socket", &[netlink, 3, 9]),
            Some(libc::EPROTONOSUPPORT)
        );
    }
}
