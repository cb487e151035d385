//! One tmpfs of `disk_bytes` per task container, shared by its `/work`, `/tmp`,
//! `/dev/shm` and image `VOLUME`s — a task's disk in total, as in the process
//! sandbox — instead of one tmpfs of that size per mount.
//!
//! The worker mounts the tmpfs on the host under [`DEFAULT_SCRATCH_ROOT`]`/<container
//! name>` (`nosuid`, `nodev`, root 0700), makes a directory per mount in it, and
//! the container binds those. That needs the engine to see the worker's mounts:
//! a local engine in the same mount namespace, with the worker as root
//! ([`usable`] checks both at start). Elsewhere (a worker in a container
//! talking to the host's engine, a remote engine) each mount keeps its own
//! tmpfs of `disk_bytes` and the worker says so in its log.
//!
//! ```text
//! <root>/<container>/   tmpfs size=disk_bytes, root 0700
//!   work/  task uid 0700   → /work
//!   tmp/   task uid 1777   → /tmp
//!   shm/   task uid 1777   → /dev/shm
//!   vol0/… task uid 0700   → each image VOLUME
//! ```
//!
//! Unmounted (lazily: the container's own binds keep the tmpfs alive until it
//! is gone) and removed with the container; the sweep takes dirs whose
//! container no longer exists.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the per-container tmpfs mounts live on the host.
pub const DEFAULT_SCRATCH_ROOT: &str = "/run/krill/scratch";
/// Smallest tmpfs; a size of 0 would mean "unlimited" to the kernel.
pub const MIN_BYTES: u64 = 64 * 1024;

/// A container's scratch tmpfs on the host; unmounted and removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Mounts a tmpfs of `bytes` at `<root>/<name>` with the directories a
    /// container of `volumes` image volumes binds, owned by `uid:gid`.
    pub fn create(
        root: &Path,
        name: &str,
        bytes: u64,
        uid: u32,
        gid: u32,
        volumes: usize,
    ) -> std::io::Result<Scratch> {
        let dir = root.join(name);
        fs::create_dir_all(&dir)?;
        let scratch = Scratch { dir };
        mount(
            Some("tmpfs"),
            &scratch.dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={},mode=0700", bytes.max(MIN_BYTES)).as_str()),
        )?;
        let mut subs = vec![
            ("work".to_string(), 0o700),
            ("tmp".into(), 0o1777),
            ("shm".into(), 0o1777),
        ];
        subs.extend((0..volumes).map(|i| (format!("vol{i}"), 0o700)));
        for (sub, mode) in subs {
            let d = scratch.dir.join(sub);
            fs::create_dir(&d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
            nix::unistd::chown(
                &d,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )?;
        }
        Ok(scratch)
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub fn shm(&self) -> PathBuf {
        self.dir.join("shm")
    }

    /// The directory of the `i`th image volume.
    pub fn volume(&self, i: usize) -> PathBuf {
        self.dir.join(format!("vol{i}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove(&self.dir);
    }
}

fn remove(dir: &Path) {
    let _ = umount2(dir, MntFlags::MNT_DETACH);
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "failed to remove a container's scratch dir");
        }
    }
}

/// Whether this worker can give containers a shared scratch: it can mount
/// under `root`, and the engine behind `docker_host` (`DOCKER_HOST`, `None`:
/// the default socket) is a local process in this mount namespace (its
/// socket's peer, by `SO_PEERCRED`). `Err`: why not.
pub fn usable(root: &Path, docker_host: Option<&str>) -> Result<(), String> {
    let socket = match docker_host {
        None => PathBuf::from("/var/run/docker.sock"),
        Some(h) => match h.strip_prefix("unix://") {
            Some(p) => PathBuf::from(p),
            None => return Err(format!("the engine at {h} is not a local socket")),
        },
    };
    let stream = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("SO_PEERCRED on {}: {e}", socket.display()))?;
    if cred.pid() <= 0 {
        return Err("the engine runs in another pid namespace".into());
    }
    let ns = |p: &str| fs::read_link(p).map_err(|e| format!("{p}: {e}"));
    if ns(&format!("/proc/{}/ns/mnt", cred.pid()))? != ns("/proc/self/ns/mnt")? {
        return Err("the engine runs in another mount namespace".into());
    }
    fs::create_dir_all(root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
    let probe = root.join(format!(".probe-{}", std::process::id()));
    let made = Scratch::create(
        root,
        &probe.file_name().unwrap_or_default().to_string_lossy(),
        MIN_BYTES,
        0,
        0,
        0,
    )
    .map_err(|e| format!("mounting a tmpfs under {}: {e}", root.display()));
    if made.is_err() {
        let _ = fs::remove_dir(&probe);
    }
    made.map(drop)
}

/// Scratch dirs under `root` older than `grace` (by name, their container's):
/// the sweep removes those whose container is gone (a crashed worker's).
pub fn older_than(root: &Path, grace: std::time::Duration) -> Vec<(String, PathBuf)> {
    fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace)
        })
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

/// Unmounts and removes a scratch dir whose container is gone.
pub fn remove_stale(dir: &Path) {
    remove(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (mount); the e2e hostile suite covers the container side.
    #[test]
    fn one_tmpfs_for_every_mount() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let root =
            std::env::temp_dir().join(format!("krill-scratch-{}", uuid::Uuid::new_v4().simple()));
        let s = Scratch::create(&root, "c1", 1 << 20, 4242, 4242, 1).expect("mount");
        let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&fs::metadata(p).expect("stat"));
        assert_eq!(dev(&s.work()), dev(&s.tmp()));
        assert_eq!(dev(&s.shm()), dev(&s.volume(0)));
        // 1 MiB in total: a second MiB anywhere does not fit.
        fs::write(s.work().join("a"), vec![0u8; 700 << 10]).expect("first write");
        assert!(fs::write(s.tmp().join("b"), vec![0u8; 700 << 10]).is_err());
        let dir = s.dir.clone();
        drop(s);
        assert!(!dir.exists());
        let _ = fs::remove_dir_all(&root);
    }
}
