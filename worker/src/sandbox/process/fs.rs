//! The task's view of the filesystem: a fresh root built by the sandbox helper
//! inside the task's new, private mount namespace (as root, before privileges
//! are dropped), entered with `pivot_root`; nothing else of the host stays
//! mounted in the namespace.
//!
//! ```text
//! /                 a small tmpfs, read-only once built
//! /usr /bin /sbin /lib*   the host's, read-only, nosuid, nodev (merged-usr links
//!                   stay links); with --process-rootfs DIR: every top-level
//!                   directory of DIR instead
//! /etc              written here: passwd and group (root, nobody, the task
//!                   user), hosts, hostname, nsswitch.conf, resolv.conf (only
//!                   with network), a copy of ld.so.cache and localtime; ssl,
//!                   ca-certificates, pki and alternatives bound read-only
//! /work             $HOME and the working directory ┐ one private tmpfs of
//! /tmp              mode 1777                       │ `disk_bytes` (three
//! /dev/shm          mode 1777                       ┘ binds of it)
//! /dev              a tmpfs with null zero full random urandom tty only, and
//!                   mqueue (the task's own ipc namespace's message queues)
//! /krill            the task's own dir: script (read-only by mode) and the
//!                   output files, noexec
//! /proc             its own pid namespace (mounted by the init, [`mount_proc`](super::special::mount_proc));
//!                   sys, sysrq-trigger, irq, bus, fs read-only; kcore, keys,
//!                   timer_list, sched_debug masked
//! /sys/fs/cgroup    the task's own cgroup only (cgroup namespace; cgroupns.rs)
//! <dst>             each --process-bind SRC:DST, read-only
//! ```
//!
//! Nothing else of `/sys`; no `/home`, `/srv`, `/opt`, `/var`, `/run`, `/root`, `/mnt`, work
//! trees or other tasks' dirs. `/proc/self/mountinfo` names only these mounts,
//! each by its path inside the view; the task's dir appears as `/krill`.
//!
//! Everything here runs in the single-threaded helper process after exec, so it
//! may allocate.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chown, Gid, Uid};

use super::layout::{HOME, TASK_MOUNT};
use super::message::{SandboxConfig, ViewConfig};
use super::mounts::{bind, ctx, mkdir, Result};
/// Top-level names the view provides itself: never taken from a rootfs, and
/// never the target of an operator's bind.
pub const RESERVED: &[&str] = &["dev", "proc", "sys", "tmp", "run", "etc", "work", "krill"];
/// Parts of the source's `/etc` bound read-only (when present): TLS trust and
/// the alternatives links many programs in /usr/bin point through.
const ETC_BINDS: &[&str] = &["ssl", "ca-certificates", "pki", "alternatives"];
/// Parts of the source's `/etc` copied (a file, or a symlink as a symlink).
const ETC_COPIES: &[&str] = &["ld.so.cache", "localtime", "mime.types"];

/// The task user's (and its group's) name in the view's /etc/passwd and
/// /etc/group: each sandbox has a uid of its own, which the host names not.
pub const TASK_USER: &str = "krill";

// The view's behaviour; the struct is part of the helper's wire (message.rs).
impl ViewConfig {
    /// The files written into the view's /etc for a task running as
    /// `uid`:`gid` on a host named `host`.
    pub fn etc_files(&self, uid: u32, gid: u32, host: &str) -> Vec<(&'static str, String)> {
        let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
        let mut groups = String::from("root:x:0:\n");
        if uid != 65534 {
            passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
        }
        if gid != 65534 {
            groups.push_str("nogroup:x:65534:\n");
        }
        passwd.push_str(&format!(
            "{TASK_USER}:x:{uid}:{gid}:krill task:{HOME}:/bin/sh\n"
        ));
        groups.push_str(&format!("{TASK_USER}:x:{gid}:\n"));
        vec![
            ("passwd", passwd),
            ("group", groups),
            (
                "hosts",
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{host}\n"
                ),
            ),
            ("hostname", format!("{host}\n")),
            (
                "nsswitch.conf",
                "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
                 networks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n"
                    .into(),
            ),
        ]
    }

    /// Where the view's programs and /etc parts come from.
    fn source(&self) -> &Path {
        self.rootfs.as_deref().unwrap_or(Path::new("/"))
    }
}

/// Parses one `--process-bind` value: `SRC` or `SRC:DST`, both absolute; the
/// source must exist; the target may not be `/` or inside a part the view
/// provides itself ([`RESERVED`]).
pub fn parse_bind(spec: &str) -> std::result::Result<(PathBuf, PathBuf), String> {
    let (src, dst) = match spec.split_once(':') {
        Some((s, d)) => (s, d),
        None => (spec, spec),
    };
    let (src, dst) = (PathBuf::from(src), PathBuf::from(dst));
    for p in [&src, &dst] {
        if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "--process-bind {spec}: paths must be absolute, without `..`"
            ));
        }
    }
    let first = dst.components().nth(1).map(|c| c.as_os_str().to_owned());
    match first {
        None => return Err(format!("--process-bind {spec}: cannot replace `/`")),
        Some(f) if RESERVED.iter().any(|r| f == *r) => {
            return Err(format!(
                "--process-bind {spec}: `/{}` is provided by the sandbox itself",
                f.to_string_lossy()
            ))
        }
        Some(_) => {}
    }
    if !src.exists() {
        return Err(format!(
            "--process-bind {spec}: {} does not exist",
            src.display()
        ));
    }
    Ok((src, dst))
}

/// `mount_setattr(2)` (Linux 5.12): the only way to make every mount of a
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

/// Builds the task's root in the current (new) mount namespace and enters it;
/// `host` is the host name its /etc gives.
pub fn build_view(cfg: &SandboxConfig, host: &str) -> Result<()> {
    let none: Option<&str> = None;
    // Nothing done here may propagate back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(ctx(|| "making / private".into()))?;
    let view = &cfg.view;
    // Read before the host's mounts go: which cgroup hierarchies the task is in.
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(ctx(|| "reading /proc/self/mountinfo".into()))?;

    // The scratch tmpfs: $HOME, /tmp and /dev/shm share its `disk_bytes`.
    let scratch = cfg.task_dir.join("scratch");
    tmpfs(
        &scratch,
        &format!("size={},mode=0700", cfg.disk_bytes.max(4096)),
    )?;
    for (sub, mode) in [("work", 0o700), ("tmp", 0o1777), ("shm", 0o1777)] {
        let d = scratch.join(sub);
        fs::create_dir(&d).map_err(ctx(|| format!("mkdir {}", d.display())))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    }
    chown(
        &scratch.join("work"),
        Some(Uid::from_raw(cfg.uid)),
        Some(Gid::from_raw(cfg.gid)),
    )
    .map_err(ctx(|| "chown work".into()))?;

    // The new root.
    let root = cfg.task_dir.join("root");
    tmpfs(&root, "size=4m,mode=0755")?;
    programs(view, &root)?;
    etc(view, &root.join("etc"), cfg, host)?;
    for (sub, at, flags) in [
        ("work", HOME, MsFlags::empty()),
        ("tmp", "/tmp", MsFlags::empty()),
    ] {
        let target = inside(&root, Path::new(at));
        mkdir(&target, 0o755)?;
        bind(
            &scratch.join(sub),
            &target,
            flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }
    let krill = inside(&root, Path::new(TASK_MOUNT));
    mkdir(&krill, 0o755)?;
    bind(
        &cfg.task_dir.join("krill"),
        &krill,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    super::special::minimal_dev(&root.join("dev"), &scratch.join("shm"))?;
    mkdir(&root.join("proc"), 0o555)?;
    // /sys holds only the task's own cgroup (cgroup namespace; cgroupns.rs).
    let cgroups = root.join(super::cgroupns::CGROUP_ROOT.trim_start_matches('/'));
    fs::create_dir_all(&cgroups).map_err(ctx(|| format!("mkdir {}", cgroups.display())))?;
    super::cgroupns::mount_view(
        &root,
        &super::cgroupns::hierarchies(&mountinfo, &cfg.cgroup_procs),
    )?;
    for (src, dst) in &view.binds {
        operator_bind(src, &inside(&root, dst))?;
    }
    enter(&root)?;
    // Nothing can be added to the root itself from now on.
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        none,
    )
    .map_err(ctx(|| "remounting / read-only".into()))
}

/// Resizes the scratch tmpfs (through the task's `$HOME`, one of its binds:
/// a remount without `MS_BIND` reconfigures the shared superblock).
pub fn resize_scratch(disk_bytes: u64) -> Result<()> {
    let none: Option<&str> = None;
    mount(
        none,
        HOME,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={}", disk_bytes.max(4096)).as_str()),
    )
    .map_err(ctx(|| "resizing the scratch tmpfs".into()))
}

/// `path` (absolute, in the view) under `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The program directories: the host's `/usr`, `/bin`, `/sbin`, `/lib*`, or
/// every top-level directory of the rootfs but [`RESERVED`]; symlinks (merged
/// /usr) are made again as symlinks.
fn programs(view: &ViewConfig, root: &Path) -> Result<()> {
    let source = view.source();
    let entries = fs::read_dir(source).map_err(ctx(|| format!("reading {}", source.display())))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        let wanted = if view.rootfs.is_some() {
            !RESERVED.contains(&n.as_ref())
        } else {
            matches!(n.as_ref(), "usr" | "bin" | "sbin") || n.starts_with("lib")
        };
        if !wanted {
            continue;
        }
        let Ok(kind) = e.file_type() else { continue };
        let target = root.join(&name);
        if kind.is_symlink() {
            let to = fs::read_link(e.path()).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(&to, &target)
                .map_err(ctx(|| format!("symlink {}", target.display())))?;
        } else if kind.is_dir() {
            mkdir(&target, 0o755)?;
            bind_read_only(&e.path(), &target)?;
        }
    }
    Ok(())
}

/// The view's /etc: the files the worker rendered, a few copied from the
/// source's /etc, TLS trust and alternatives bound read-only.
fn etc(view: &ViewConfig, at: &Path, cfg: &SandboxConfig, host: &str) -> Result<()> {
    let network = cfg.network;
    mkdir(at, 0o755)?;
    let src = view.source().join("etc");
    for (name, content) in view.etc_files(cfg.uid, cfg.gid, host) {
        write(&at.join(name), content.as_bytes())?;
    }
    for name in ETC_COPIES {
        let from = src.join(name);
        let Ok(meta) = fs::symlink_metadata(&from) else {
            continue;
        };
        let to = at.join(name);
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&from).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(link, &to).map_err(|e| e.to_string())?;
        } else if meta.is_file() {
            let bytes = fs::read(&from).map_err(ctx(|| format!("reading {}", from.display())))?;
            write(&to, &bytes)?;
        }
    }
    if network {
        // Often a link into /run, which the view has not: the content is copied.
        if let Ok(bytes) = fs::read(src.join("resolv.conf")) {
            write(&at.join("resolv.conf"), &bytes)?;
        }
    }
    for name in ETC_BINDS {
        let from = src.join(name);
        if from.is_dir() && !from.is_symlink() {
            let to = at.join(name);
            mkdir(&to, 0o755)?;
            bind_read_only(&from, &to)?;
        }
    }
    Ok(())
}

/// One `--process-bind`: a directory or a file, read-only, nosuid, nodev.
fn operator_bind(src: &Path, target: &Path) -> Result<()> {
    let is_dir = src.is_dir();
    if !target.exists() {
        let parent = target.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(ctx(|| {
            format!(
                "--process-bind: making the mount point {}",
                target.display()
            )
        }))?;
        if is_dir {
            mkdir(target, 0o755)?;
        } else {
            write(target, b"")?;
        }
    }
    bind_read_only(src, target)
}

/// `pivot_root` into `root`, the old root detached: nothing of the host's
/// mount table is left in this namespace.
fn enter(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(ctx(|| "chdir to the new root".into()))?;
    nix::unistd::pivot_root(".", ".").map_err(ctx(|| "pivot_root".into()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx(|| "detaching the old root".into()))?;
    nix::unistd::chdir("/").map_err(ctx(|| "chdir /".into()))
}

fn write(p: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(p, bytes).map_err(ctx(|| format!("writing {}", p.display())))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())
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

/// Binds `src` (with every mount under it) onto `target`, every one of them
/// read-only, nosuid, nodev.
fn bind_read_only(src: &Path, target: &Path) -> Result<()> {
    let none: Option<&str> = None;
    mount(
        Some(src),
        target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(ctx(|| format!("binding {} read-only", src.display())))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let path = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `path` is a valid NUL-terminated path and `attr` a properly laid
    // out `struct mount_attr` whose size is passed; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "making {} read-only (mount_setattr, Linux 5.12+): {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_and_refuse_what_the_view_owns() {
        // A source that exists everywhere, outside what the view owns.
        let tmp = PathBuf::from("/usr/share");
        let t = tmp.display().to_string();
        assert_eq!(
            parse_bind(&t).expect("same path"),
            (tmp.clone(), tmp.clone())
        );
        assert_eq!(
            parse_bind(&format!("{t}:/data/in")).expect("other target"),
            (tmp.clone(), PathBuf::from("/data/in"))
        );
        for bad in [
            format!("{t}:/"),
            format!("{t}:/proc/x"),
            format!("{t}:/krill"),
            format!("{t}:/work/x"),
            format!("{t}:relative"),
            format!("{t}:/a/../proc"),
            "/krill-no-such-dir-anywhere".to_string(),
        ] {
            assert!(parse_bind(&bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn etc_names_the_task_user() {
        let v = ViewConfig::default();
        let files = v.etc_files(1234, 1235, "krill");
        let file = |n: &str| {
            files
                .iter()
                .find(|(name, _)| *name == n)
                .map(|(_, c)| c.clone())
                .unwrap_or_default()
        };
        assert!(file("passwd").contains("krill:x:1234:1235:krill task:/work:"));
        assert!(file("passwd").contains("nobody:x:65534"));
        assert!(file("group").contains("krill:x:1235:"));
        assert!(file("hosts").contains("localhost"));
        let passwd = &ViewConfig::default().etc_files(65534, 65534, "krill")[0].1;
        assert_eq!(passwd.matches("65534").count(), 2, "{passwd}");
    }
}
