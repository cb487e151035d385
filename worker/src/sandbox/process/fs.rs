//! The task's view of the filesystem, built by the sandbox helper inside the
//! task's fresh mount namespace (as root, before privileges are dropped):
//!
//! ```text
//! /                         the host, read-only, nosuid, nodev (every mount, recursively)
//! /tmp, /dev/shm, $HOME     one private tmpfs of `disk_bytes` (three bind mounts of it)
//! /dev                      a tmpfs with null zero full random urandom tty only
//! <work_root>               an empty tmpfs: no other task's dir is visible …
//!   <worker>/<task>         … except this task's own, bound back (its output files)
//! /proc                     the task's own pid namespace (mounted by its init)
//! /sys/fs/cgroup            the task's own cgroup only (cgroup namespace; cgroupns.rs)
//! /run                      empty when the task has no network (host unix sockets)
//! HIDDEN                    empty (docker/containerd sockets and state, broker files, /root)
//! ```
//!
//! Everything here runs in the single-threaded helper process after exec, so it
//! may allocate.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};

use super::message::SandboxConfig;

/// Host paths a task never sees: anything that would let it reach the container
/// engine, the broker's state or root's files. Directories get an empty
/// read-only tmpfs on top; files and sockets get `/dev/null`.
pub const HIDDEN: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/docker",
    "/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/rabbitmq",
    "/etc/rabbitmq",
    "/etc/krill",
    "/root",
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

/// `mount_setattr(2)` (Linux 5.12): the only way to make every mount of the
/// tree read-only in one call.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

type Result<T> = std::result::Result<T, String>;

fn ctx<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

/// Builds the task's filesystem view in the current (new, private) mount namespace.
pub fn build_view(cfg: &SandboxConfig) -> Result<()> {
    let none: Option<&str> = None;
    // Nothing done here may propagate back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(ctx(|| "making / private".into()))?;
    read_only_host()?;
    // The task's own cgroup, and no other, under /sys/fs/cgroup.
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(ctx(|| "reading /proc/self/mountinfo".into()))?;
    super::cgroupns::mount_view(
        Path::new("/"),
        &super::cgroupns::hierarchies(&mountinfo, &cfg.cgroup_procs),
    )?;

    // The scratch tmpfs: $HOME, /tmp and /dev/shm share its `disk_bytes`.
    let scratch = cfg.task_dir.join("scratch");
    tmpfs(
        &scratch,
        &format!("size={},mode=0700", cfg.disk_bytes.max(4096)),
    )?;
    for (sub, mode) in [("home", 0o700), ("tmp", 0o1777), ("shm", 0o1777)] {
        let d = scratch.join(sub);
        fs::create_dir(&d).map_err(ctx(|| format!("mkdir {}", d.display())))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    }
    chown(
        &scratch.join("home"),
        Some(Uid::from_raw(cfg.uid)),
        Some(Gid::from_raw(cfg.gid)),
    )
    .map_err(ctx(|| "chown home".into()))?;
    // Handles on what is about to be hidden, to bind it back from.
    let task = path_fd(&cfg.task_dir)?;
    let home = path_fd(&scratch.join("home"))?;
    let tmp = path_fd(&scratch.join("tmp"))?;
    let shm = path_fd(&scratch.join("shm"))?;

    // /tmp first: the work root may live under it.
    if Path::new("/tmp").is_dir() {
        bind(
            &tmp,
            Path::new("/tmp"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }
    // Every other task's dir disappears under an empty tmpfs; this one comes back.
    if !cfg.work_root.is_dir() {
        // It lived under /tmp: make its mount point in the task's own /tmp.
        fs::create_dir_all(&cfg.work_root).map_err(|e| format!("mkdir work root: {e}"))?;
    }
    tmpfs(&cfg.work_root, "size=64k,mode=0711")?;
    fs::create_dir_all(&cfg.task_dir).map_err(|e| format!("mkdir task dir: {e}"))?;
    bind(
        &task,
        &cfg.task_dir,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    bind(
        &home,
        &cfg.task_dir.join("home"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    minimal_dev(&shm)?;
    if cfg.net_ns {
        // Unix sockets ignore net namespaces: without network, no host service
        // in /run (D-Bus, systemd-resolved, container engines) is reachable either.
        hide(Path::new("/run"))?;
    }
    for p in HIDDEN {
        hide(Path::new(p))?;
    }
    Ok(())
}

/// Resizes the scratch tmpfs (through the task's `$HOME`, one of its binds:
/// a remount without `MS_BIND` reconfigures the shared superblock).
pub fn resize_scratch(cfg: &SandboxConfig, disk_bytes: u64) -> Result<()> {
    let none: Option<&str> = None;
    let home = cfg.task_dir.join("home");
    mount(
        none,
        &home,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={}", disk_bytes.max(4096)).as_str()),
    )
    .map_err(ctx(|| "resizing the scratch tmpfs".into()))
}

/// Every mount of the tree: read-only, nosuid, nodev (in this namespace only).
fn read_only_host() -> Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let root = CString::new("/").map_err(|e| e.to_string())?;
    // SAFETY: `root` is a valid NUL-terminated path and `attr` a properly laid out
    // `struct mount_attr` whose size is passed; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            root.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "making the host read-only (mount_setattr, Linux 5.12+): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn tmpfs(at: &Path, opts: &str) -> Result<()> {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts),
    )
    .map_err(ctx(|| format!("mounting a tmpfs on {}", at.display())))
}

fn path_fd(p: &Path) -> Result<OwnedFd> {
    open(p, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(ctx(|| format!("opening {}", p.display())))
}

/// Binds what `src` refers to onto `target`, then sets `flags` (read-write
/// unless `MS_RDONLY`; a bind keeps its source's flags until remounted).
fn bind(src: &OwnedFd, target: &Path, flags: MsFlags) -> Result<()> {
    let none: Option<&str> = None;
    let from = format!("/proc/self/fd/{}", src.as_raw_fd());
    mount(Some(from.as_str()), target, none, MsFlags::MS_BIND, none)
        .map_err(ctx(|| format!("binding onto {}", target.display())))?;
    mount(
        none,
        target,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        none,
    )
    .map_err(ctx(|| format!("remounting {}", target.display())))
}

/// A tmpfs /dev with the harmless devices only, and /dev/shm from the scratch.
fn minimal_dev(shm: &OwnedFd) -> Result<()> {
    let dev = Path::new("/dev");
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
            Some("size=4k,mode=0755"),
        )
        .map_err(ctx(|| format!("hiding {}", p.display())))
    } else {
        let null = path_fd(Path::new("/dev/null"))?;
        bind(&null, p, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID)
    }
}
