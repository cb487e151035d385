//! The view's special filesystems: the task's minimal `/dev` (built by the
//! helper with the root; `/dev/mqueue` is its ipc namespace's queues) and its `/proc` (mounted by its init, in its own pid
//! namespace), with the kernel's knobs read-only and its most revealing files
//! masked.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::mounts::{bind, ctx, mkdir, Result};

/// Files of `/proc` that stay readable but not writable.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// Files of `/proc` masked with `/dev/null` (dirs with an empty tmpfs).
const PROC_MASKED: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "acpi",
    "scsi",
];

/// Character devices of the task's /dev: (name, major, minor).
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Mounts `/proc` for the current pid namespace (from its init), read-only as
/// a whole (so no task process can lower the `oom_score_adj` or set the login
/// uid the helper set for it to inherit: the kernel lets a process lower its
/// own `oom_score_adj` down to what it was given, and nothing pins it without
/// `CAP_SYS_RESOURCE`), with the kernel's knobs bound read-only again and its
/// most revealing files masked.
pub fn mount_proc() -> Result<()> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ctx(|| "mounting /proc".into()))?;
    for name in PROC_READ_ONLY {
        let p = Path::new("/proc").join(name);
        if p.exists() {
            bind(
                &p,
                &p,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )?;
        }
    }
    for name in PROC_MASKED {
        hide(&Path::new("/proc").join(name))?;
    }
    Ok(())
}

/// A tmpfs /dev with the harmless devices only, and /dev/shm from the scratch.
pub(super) fn minimal_dev(dev: &Path, shm: &Path) -> Result<()> {
    mkdir(dev, 0o755)?;
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(ctx(|| "mounting /dev".into()))?;
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(ctx(|| format!("mknod {}", p.display())))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).map_err(|e| e.to_string())?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link)).map_err(|e| e.to_string())?;
    }
    let shm_dir = dev.join("shm");
    fs::create_dir(&shm_dir).map_err(|e| e.to_string())?;
    bind(shm, &shm_dir, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    // The task's own ipc namespace's POSIX message queues (their mq_open works
    // on this filesystem: Landlock lets the task use it through this path).
    let mqueue = dev.join("mqueue");
    fs::create_dir(&mqueue).map_err(|e| e.to_string())?;
    mount(
        Some("mqueue"),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ctx(|| "mounting /dev/mqueue".into()))?;
    let none: Option<&str> = None;
    // No more device nodes may be created or used under /dev from now on.
    mount(
        none,
        dev,
        none,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(ctx(|| "remounting /dev read-only".into()))
}

/// Covers `p` (when it exists) with something empty.
fn hide(p: &Path) -> Result<()> {
    let Ok(meta) = fs::metadata(p) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=0555"),
        )
        .map_err(ctx(|| format!("hiding {}", p.display())))
    } else {
        bind(
            Path::new("/dev/null"),
            p,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        )
    }
}
