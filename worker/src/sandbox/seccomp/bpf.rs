//! The policy as one classic BPF program for the process sandbox; the
//! argument comparisons are `seccompiler`'s (the rust-vmm crate firecracker
//! uses), the dispatch on the syscall number is built here.
//!
//! The program checks the architecture (another one's call, a 32-bit binary's,
//! kills the process), then finds the call's number by a binary search over
//! ranges of numbers that share one verdict; a syscall with argument rules is a
//! range of its own whose code tries its refusals, then its allowances, then
//! returns the default errno. A refusal wins where both match, as
//! [`policy::verdict`] decides (a test runs the program on every syscall of the
//! table against it).
//!
//! Why not seccompiler's own filter: it is a linear chain of five
//! instructions per syscall with one action per filter, so this policy took a
//! stack of three programs (allow, `EPERM`, `EAFNOSUPPORT`) of ~2,000
//! instructions in all, which the kernel checks, JIT-compiles and runs over
//! every syscall number (its action cache) at each task's start, and frees at
//! its end: ~1 ms of CPU per task more than this program (README, "Before
//! and after").

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
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

fn errno_action(e: i32) -> SeccompAction {
    SeccompAction::Errno(e as u32)
}

/// `SECCOMP_RET_KILL_PROCESS`: a call of another architecture (a 32-bit binary).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `offsetof(struct seccomp_data, nr)` and `…, arch)`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
// BPF opcodes (`linux/bpf_common.h`).
/// `BPF_LD | BPF_W | BPF_ABS` (`BPF_LD` and `BPF_W` are 0).
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x05 | 0x10;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const RET_K: u16 = 0x06;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn audit_arch() -> Result<u32, SeccompError> {
    match arch()? {
        // AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64 (`linux/audit.h`).
        TargetArch::x86_64 => Ok(0xC000_003E),
        TargetArch::aarch64 => Ok(0xC000_00B7),
        other => Err(SeccompError::Arch(format!("{other:?}"))),
    }
}

fn ret(a: Action) -> u32 {
    match a {
        Action::Allow => SeccompAction::Allow.into(),
        Action::Errno(e) => errno_action(e).into(),
    }
}

/// One syscall's code, ending in a return: each rule's comparisons (from
/// seccompiler) followed by its action, refusals before allowances (a refusal
/// wins where both match), then the errno of a call no rule matches.
fn block(rules: &[&Rule]) -> Result<BpfProgram, SeccompError> {
    let mut ordered: Vec<&&Rule> = rules.iter().collect();
    // Errno(_) sorts after Allow: refusals first.
    ordered.sort_by_key(|r| std::cmp::Reverse(r.action));
    let mut out = Vec::new();
    for r in ordered {
        if r.when.is_empty() {
            // Always: nothing after it is reached.
            out.push(stmt(RET_K, ret(r.action)));
            return Ok(out);
        }
        let conds = r
            .when
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()?;
        // A rule's code falls through when every condition holds and jumps
        // one past its end otherwise: past the return that follows it.
        let mut code: BpfProgram = SeccompRule::new(conds).map_err(compile_error)?.into();
        out.append(&mut code);
        out.push(stmt(RET_K, ret(r.action)));
    }
    out.push(stmt(RET_K, ret(Action::Errno(policy::DEFAULT_ERRNO))));
    Ok(out)
}

/// From `start` on (up to the next range), every syscall number has this code.
struct Range {
    start: u32,
    code: BpfProgram,
}

/// A binary search over `ranges` (sorted, the first starting at 0) on the
/// syscall number in the accumulator; each leaf is its range's code.
fn search(ranges: &[Range]) -> BpfProgram {
    if let [one] = ranges {
        return one.code.clone();
    }
    let mid = ranges.len() / 2;
    let left = search(&ranges[..mid]);
    let right = search(&ranges[mid..]);
    let mut out = Vec::with_capacity(left.len() + right.len() + 2);
    // nr >= start of the right half: over the left half (every leaf ends in a
    // return, so the left half never falls into the right one).
    match u8::try_from(left.len()) {
        Ok(skip) => out.push(jump(JMP_JGE_K, ranges[mid].start, skip, 0)),
        Err(_) => {
            out.push(jump(JMP_JGE_K, ranges[mid].start, 0, 1));
            out.push(stmt(JMP_JA, left.len() as u32));
        }
    }
    out.extend(left);
    out.extend(right);
    out
}

/// The policy as one BPF program: the architecture check, then a binary
/// search on the syscall number over ranges of numbers that share one verdict
/// (a syscall with argument rules is a range of its own, with its rules'
/// comparisons). A call takes ~2·log2(ranges) jumps to its verdict, and the
/// kernel has one short program to check, JIT-compile and pre-compute its
/// per-syscall cache for at every task's start. (seccompiler's own filter is a
/// linear chain of five instructions per syscall, with one action per filter:
/// the policy took a stack of three such programs, ~2,000 instructions.)
pub fn compile(rules: &[Rule]) -> Result<Filters, SeccompError> {
    let mut by_nr: BTreeMap<u32, Vec<&Rule>> = BTreeMap::new();
    for r in rules {
        if let Some(nr) = number(r.syscall) {
            let nr = u32::try_from(nr).map_err(|_| SeccompError::Compile(r.syscall.into()))?;
            by_nr.entry(nr).or_default().push(r);
        }
    }
    let unnamed = stmt(RET_K, ret(Action::Errno(policy::DEFAULT_ERRNO)));
    let mut ranges: Vec<Range> = Vec::new();
    let mut push = |start: u32, code: BpfProgram| {
        // Neighbours with the same verdict are one range.
        let same = |r: &Range| r.code.len() == 1 && r.code == code;
        if !ranges.last().is_some_and(same) {
            ranges.push(Range { start, code });
        }
    };
    let mut next = 0u32;
    for (nr, rs) in &by_nr {
        if *nr > next {
            push(next, vec![unnamed.clone()]);
        }
        push(*nr, block(rs)?);
        next = nr + 1;
    }
    push(next, vec![unnamed.clone()]);
    let mut program = vec![
        stmt(LD_W_ABS, DATA_ARCH),
        jump(JMP_JEQ_K, audit_arch()?, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, DATA_NR),
    ];
    program.extend(search(&ranges));
    if program.len() >= 4096 {
        return Err(SeccompError::Compile(format!(
            "{} instructions: more than a BPF program may hold",
            program.len()
        )));
    }
    Ok(Filters {
        programs: vec![program],
    })
}

#[cfg(test)]
mod tests {
    use super::super::numbers;
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
    fn one_short_program() {
        for network in [false, true] {
            let f = Filters::build(network).expect("compiles");
            assert_eq!(f.programs.len(), 1);
            // A few hundred instructions, not a few thousand.
            assert!(f.len() < 800, "{} instructions", f.len());
        }
    }

    /// Runs a classic BPF seccomp program on one call, as the kernel would;
    /// returns its verdict.
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: &[u64; 6]) -> u32 {
        let data = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                16..=63 => {
                    let a = args[((off - 16) / 8) as usize];
                    // Little-endian: the low half first.
                    if (off - 16) % 8 == 4 {
                        (a >> 32) as u32
                    } else {
                        a as u32
                    }
                }
                other => panic!("load at {other}"),
            }
        };
        let (mut acc, mut pc) = (0u32, 0usize);
        for _ in 0..10_000 {
            let i = &prog[pc];
            pc += 1;
            let cond = |c: bool| usize::from(if c { i.jt } else { i.jf });
            match i.code {
                0x20 => acc = data(i.k),
                0x54 => acc &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += cond(acc == i.k),
                0x25 => pc += cond(acc > i.k),
                0x35 => pc += cond(acc >= i.k),
                0x45 => pc += cond(acc & i.k != 0),
                0x06 => return i.k,
                other => panic!("opcode {other:#x} at {}", pc - 1),
            }
        }
        panic!("no verdict: a loop");
    }

    fn expected(v: Option<i32>) -> u32 {
        match v {
            None => SeccompAction::Allow.into(),
            Some(e) => errno_action(e).into(),
        }
    }

    /// The program decides every call exactly as the rules do: every
    /// syscall this table knows with the argument values the rules name (and
    /// next to them), numbers no rule names, x32 numbers and another
    /// architecture.
    #[test]
    fn the_program_decides_as_the_rules_do() {
        let arch = audit_arch().expect("arch");
        for network in [false, true] {
            let rules = policy::rules(network);
            let f = compile(&rules).expect("compiles");
            let prog = &f.programs[0];
            let mut values: Vec<u64> = vec![0, 1, 2, u64::MAX, 1 << 32, 0xffff_ffff];
            for r in &rules {
                for c in &r.when {
                    let v = match c.op {
                        Op::Eq(v) | Op::Ne(v) | Op::Ge(v) => v,
                        Op::MaskedEq { mask, value } => {
                            values.extend([mask, value | !mask, mask & !value]);
                            value
                        }
                    };
                    values.extend([v, v.wrapping_add(1), v.wrapping_sub(1), v | 1 << 40]);
                }
            }
            values.sort_unstable();
            values.dedup();
            let mut checked = 0;
            for (name, nr) in numbers::all() {
                let nr = nr as u32;
                let probed: Vec<u8> = rules
                    .iter()
                    .filter(|r| r.syscall == name)
                    .flat_map(|r| r.when.iter().map(|c| c.arg))
                    .collect();
                for arg in [0u8, 1, 2]
                    .into_iter()
                    .filter(|a| probed.contains(a) || *a == 0)
                {
                    for v in &values {
                        let mut args = [0u64; 6];
                        args[arg as usize] = *v;
                        // A second argument for the two-argument rules.
                        for a2 in [0u64, libc::NETLINK_ROUTE as u64, 7] {
                            if arg == 0 {
                                args[2] = a2;
                            }
                            assert_eq!(
                                run(prog, arch, nr, &args),
                                expected(policy::verdict(&rules, name, &args)),
                                "{name} {args:?} network={network}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
            assert!(checked > 1000, "{checked}");
            let known: std::collections::BTreeSet<u32> =
                numbers::all().map(|(_, nr)| nr as u32).collect();
            let enosys = expected(Some(policy::DEFAULT_ERRNO));
            for nr in (0..1100u32).filter(|n| !known.contains(n)) {
                assert_eq!(run(prog, arch, nr, &[0; 6]), enosys, "unnamed {nr}");
            }
            for nr in [0u32, 1, 59, 0x4000_0000, 0x4000_0000 | 59, u32::MAX] {
                if !known.contains(&nr) {
                    assert_eq!(run(prog, arch, nr, &[0; 6]), enosys, "x32/huge {nr:#x}");
                }
                assert_eq!(
                    run(prog, 0x4000_0003, nr, &[0; 6]),
                    RET_KILL_PROCESS,
                    "i386"
                );
            }
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
