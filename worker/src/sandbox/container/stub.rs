//! Checks, at start, that krill-stub can run in the task images: the images
//! may be `FROM scratch` (no libc, no ELF interpreter), so the stub must be a
//! static ELF executable for this machine. A dynamically linked build (what
//! `cargo build` leaves beside `krill-worker`) would exec-fail in every
//! container, and every task would fail with exit 127.

use std::path::Path;

/// How to get a stub that works.
pub const FIX: &str = "build the static one with scripts/build-stub (target/krill-stub) \
                       and point --stub-path (KRILL_STUB_PATH) at it";

const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 62;
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183;

/// Why the file at `path` cannot be the stub, if it cannot.
pub fn check(path: &Path) -> Result<(), String> {
    let at = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("krill-stub at {at}: {e}; {FIX}"))?;
    let problem = elf_problem(&bytes);
    match problem {
        None => {}
        Some(p) => return Err(format!("krill-stub at {at} {p}; {FIX}")),
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    if mode & 0o005 != 0o005 {
        return Err(format!(
            "krill-stub at {at} is not readable and executable by every user (mode {mode:o}): \
             the task user runs it; chmod 0755 it"
        ));
    }
    Ok(())
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// What is wrong with `b` as a static ELF executable for this machine (64-bit
/// little-endian; ELF header and program headers only, as readelf -l reads them).
fn elf_problem(b: &[u8]) -> Option<String> {
    if b.get(..4) != Some(b"\x7fELF") {
        return Some("is not an ELF executable".into());
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Some("is not a 64-bit little-endian ELF file".into());
    }
    let bad = || Some("is a truncated ELF file".to_string());
    let Some(kind) = u16_at(b, 16) else {
        return bad();
    };
    let Some(machine) = u16_at(b, 18) else {
        return bad();
    };
    if kind != ET_EXEC && kind != ET_DYN {
        return Some("is not an executable".into());
    }
    if machine != MACHINE {
        return Some(format!(
            "is built for another machine (e_machine {machine})"
        ));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(b, 32), u16_at(b, 54), u16_at(b, 56))
    else {
        return bad();
    };
    for i in 0..usize::from(phnum) {
        let off = usize::try_from(phoff).ok()? + i * usize::from(phentsize);
        let Some(p_type) = u32_at(b, off) else {
            return bad();
        };
        if p_type == PT_INTERP {
            let interp = (|| {
                let o = usize::try_from(u64_at(b, off + 8)?).ok()?;
                let n = usize::try_from(u64_at(b, off + 32)?).ok()?;
                let s = b.get(o..o + n)?;
                Some(
                    String::from_utf8_lossy(s)
                        .trim_end_matches('\0')
                        .to_string(),
                )
            })()
            .unwrap_or_default();
            return Some(format!(
                "is dynamically linked (it needs the ELF interpreter {interp}, which the task \
                 images may not have: they can be FROM scratch)"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_named_with_its_interpreter() {
        // This test binary is linked dynamically.
        let me = std::env::current_exe().expect("exe");
        let err = check(&me).expect_err("dynamic");
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(err.contains("ld-linux") || err.contains("/lib"), "{err}");
        assert!(err.contains("scripts/build-stub"), "{err}");
    }

    #[test]
    fn other_files_are_refused() {
        assert!(elf_problem(b"#!/bin/sh\n").is_some());
        assert!(elf_problem(b"\x7fELF\x01\x01").is_some());
        assert!(elf_problem(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0").is_some());
        let missing = check(Path::new("/krill-no-such-stub")).expect_err("missing");
        assert!(missing.contains("No such file"), "{missing}");
    }

    #[test]
    fn the_static_stub_passes() {
        // scripts/build-stub builds it (scripts/test runs that first).
        let stub = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/krill-stub");
        assert!(
            stub.exists(),
            "{} missing: run scripts/build-stub",
            stub.display()
        );
        check(&stub).expect("a static stub");
    }
}
