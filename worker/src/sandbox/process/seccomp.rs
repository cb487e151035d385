//! A seccomp filter for task processes: syscalls a script has no business making
//! fail with `EPERM` (never a kill, so a tool that probes them degrades cleanly).
//!
//! A deny list, written as classic BPF by hand (a dozen instructions per rule is
//! not worth a dependency): other architectures' syscalls (a 32-bit binary on a
//! 64-bit host, x32) fail with `ENOSYS`; `clone3` fails with `ENOSYS` (its flags
//! are in memory the filter cannot read, and libc falls back to `clone`); `clone`
//! with `CLONE_NEWUSER` fails with `EPERM`.

/// Syscalls denied with `EPERM`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// x32 syscalls on x86_64 carry this bit.
const X32_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
// seccomp_data offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of args[0] (little-endian).
const OFF_ARG0: u32 = 16;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The filter program (`None` on architectures it does not know).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn program() -> Option<Vec<libc::sock_filter>> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, enosys),
        stmt(LD_W_ABS, OFF_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        p.push(jump(JGE_K, X32_BIT, 0, 1));
        p.push(stmt(RET_K, enosys));
    }
    for nr in DENIED {
        p.push(jump(JEQ_K, *nr as u32, 0, 1));
        p.push(stmt(RET_K, eperm));
    }
    p.push(jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    p.push(stmt(RET_K, enosys));
    // clone(flags, …): no new user namespace.
    p.push(jump(JEQ_K, libc::SYS_clone as u32, 0, 3));
    p.push(stmt(LD_W_ABS, OFF_ARG0));
    p.push(jump(JSET_K, libc::CLONE_NEWUSER as u32, 0, 1));
    p.push(stmt(RET_K, eperm));
    p.push(stmt(RET_K, RET_ALLOW));
    Some(p)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn program() -> Option<Vec<libc::sock_filter>> {
    None
}

/// Installs `prog` on the calling thread. Async-signal-safe: allocates nothing
/// (call it between fork and exec, after `PR_SET_NO_NEW_PRIVS`).
pub fn install(prog: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies
    // the program. prctl has no other memory effects.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_shape() {
        let p = program().expect("known arch");
        assert!(
            p.len() < 255,
            "jump offsets are u8 and the program is short"
        );
        assert_eq!(p.last().map(|i| i.k), Some(RET_ALLOW));
        // Every denied syscall has its own compare-and-return pair.
        for nr in DENIED {
            assert!(p
                .windows(2)
                .any(|w| w[0].code == JEQ_K && w[0].k == *nr as u32 && w[1].code == RET_K));
        }
    }

    /// Runs the filter in a forked child and checks a denied call fails with EPERM
    /// while an allowed one works.
    #[test]
    fn denies_with_eperm() {
        let prog = program().expect("known arch");
        // SAFETY: the child only calls async-signal-safe functions (prctl, syscall,
        // _exit) before exiting; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || install(&prog).is_err()
                {
                    libc::_exit(2);
                }
                let r = libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0);
                let e = *libc::__errno_location();
                let ok = libc::getpid() > 0;
                libc::_exit(if r == -1 && e == libc::EPERM && ok {
                    0
                } else {
                    1
                });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status));
            assert_eq!(libc::WEXITSTATUS(status), 0);
        }
    }
}
