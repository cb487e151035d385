//! The policy as BPF for the process sandbox, built with `seccompiler` (the
//! rust-vmm crate firecracker uses).
//!
//! seccompiler gives a filter one action on match and one on mismatch, so the
//! policy becomes a stack: first the allow filter (allowed → allow, anything
//! else → the default errno), then one filter per refusal errno (its rules →
//! that errno, anything else → allow). The kernel runs every filter and keeps
//! the most severe verdict; between two errnos it keeps the one of the filter
//! installed last — a refusal's. Refusal rules never overlap (a policy test
//! checks), so at most one of them speaks for any call. Other architectures'
//! syscalls (a 32-bit binary) kill the process: seccompiler's arch check.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::numbers::number;
use super::policy::{self, Action, Cond, Op, Rule};

/// What can go wrong building a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filters are not built for the {0} architecture")]
    Arch(String),
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
}

/// Compiled filters, in the order they must be installed.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: Vec<BpfProgram>,
}

impl Filters {
    /// The policy for a task with or without network.
    pub fn build(network: bool) -> Result<Filters, SeccompError> {
        compile(&policy::rules(network))
    }

    /// Instructions in all filters (a BPF program holds at most 4096).
    pub fn len(&self) -> usize {
        self.programs.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// Installs every filter on the calling thread, in order. Call it last
    /// before exec, after `PR_SET_NO_NEW_PRIVS`. Allocates nothing on success
    /// (it runs between fork and exec).
    pub fn install(&self) -> std::io::Result<()> {
        for p in &self.programs {
            seccompiler::apply_filter(p).map_err(|e| match e {
                seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => io,
                other => std::io::Error::other(other.to_string()),
            })?;
        }
        Ok(())
    }
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH.to_string()))
}

fn condition(c: &Cond) -> Result<SeccompCondition, SeccompError> {
    let (op, value) = match c.op {
        Op::Eq(v) => (SeccompCmpOp::Eq, v),
        Op::Ne(v) => (SeccompCmpOp::Ne, v),
        Op::Ge(v) => (SeccompCmpOp::Ge, v),
        Op::MaskedEq { mask, value } => (SeccompCmpOp::MaskedEq(mask), value),
    };
    // Whole 64-bit arguments, as libseccomp compares them: upper bits set on an
    // int argument match no allow rule, so such a call is refused.
    SeccompCondition::new(c.arg, SeccompCmpArgLen::Qword, op, value).map_err(compile_error)
}

fn compile_error(e: seccompiler::BackendError) -> SeccompError {
    SeccompError::Compile(e.to_string())
}

/// One filter from the rules whose action is `action`.
fn filter(
    rules: &[Rule],
    action: Action,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for r in rules.iter().filter(|r| r.action == action) {
        let Some(nr) = number(r.syscall) else {
            continue;
        };
        let chain = map.entry(nr).or_default();
        if r.when.is_empty() {
            // An unconditional rule: an empty chain matches every call.
            chain.clear();
            continue;
        }
        let conds = r
            .when
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()?;
        chain.push(SeccompRule::new(conds).map_err(compile_error)?);
    }
    let f = SeccompFilter::new(map, mismatch, on_match, arch()?).map_err(compile_error)?;
    BpfProgram::try_from(f).map_err(compile_error)
}

fn errno_action(e: i32) -> SeccompAction {
    SeccompAction::Errno(e as u32)
}

/// The filter stack for `rules`.
pub fn compile(rules: &[Rule]) -> Result<Filters, SeccompError> {
    let mut programs = vec![filter(
        rules,
        Action::Allow,
        errno_action(policy::DEFAULT_ERRNO),
        SeccompAction::Allow,
    )?];
    let mut errnos: Vec<i32> = rules
        .iter()
        .filter_map(|r| match r.action {
            Action::Errno(e) if e != policy::DEFAULT_ERRNO => Some(e),
            _ => None,
        })
        .collect();
    errnos.sort_unstable();
    errnos.dedup();
    for e in errnos {
        programs.push(filter(
            rules,
            Action::Errno(e),
            SeccompAction::Allow,
            errno_action(e),
        )?);
    }
    Ok(Filters { programs })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child under the filters; returns the child's exit
    /// code (its verdict).
    fn in_child(filters: &Filters, f: fn() -> i32) -> i32 {
        // SAFETY: the child is single-threaded from fork on and only calls
        // prctl, the filter install (no allocation on success), raw syscalls
        // and _exit; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || filters.install().is_err()
                {
                    libc::_exit(100);
                }
                libc::_exit(f());
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    /// The errno of a raw syscall (0: it succeeded).
    fn errno_of(r: libc::c_long) -> i32 {
        if r == -1 {
            // SAFETY: reads this thread's errno.
            unsafe { *libc::__errno_location() }
        } else {
            0
        }
    }

    #[test]
    fn fits_in_bpf_limits() {
        for network in [false, true] {
            let f = Filters::build(network).expect("compiles");
            assert!(f.programs.iter().all(|p| p.len() < 4096), "{}", f.len());
            assert!(f.programs.len() >= 3, "allow + EPERM + EAFNOSUPPORT");
        }
    }

    #[test]
    // The SAFETY comment stands above the closure the unsafe block is.
    #[allow(clippy::undocumented_unsafe_blocks)]
    fn refused_calls_get_their_errno_and_allowed_ones_work() {
        let f = Filters::build(false).expect("compiles");
        // SAFETY (each closure): raw syscalls with harmless arguments; the
        // result only decides the child's exit code.
        let code = in_child(&f, || unsafe {
            let keyctl = errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0));
            let uring = errno_of(libc::syscall(libc::SYS_io_uring_setup, 1, 0));
            let vsock = errno_of(libc::syscall(libc::SYS_socket, libc::AF_VSOCK, 1, 0));
            let clone3 = errno_of(libc::syscall(libc::SYS_clone3, 0, 0));
            let unknown = errno_of(libc::syscall(1000, 0));
            let pid_ok = libc::getpid() > 0;
            let inet = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM, 0);
            if keyctl != libc::EPERM {
                return 1;
            }
            if uring != libc::EPERM {
                return 2;
            }
            if vsock != libc::EAFNOSUPPORT {
                return 3;
            }
            if clone3 != libc::ENOSYS {
                return 4;
            }
            if unknown != libc::ENOSYS {
                return 5;
            }
            if !pid_ok || inet < 0 {
                return 6;
            }
            0
        });
        assert_eq!(code, 0);
    }
}
