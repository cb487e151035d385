//! The task's `/sys/fs/cgroup`: its own cgroup only. The helper unshares a
//! cgroup namespace right after joining the task cgroup (so the namespace's
//! root is that cgroup); here, in its mount namespace, the host's cgroup mounts
//! are detached and the hierarchies the task belongs to are mounted afresh,
//! read-only: a cgroup filesystem mounted inside a cgroup namespace shows the
//! namespace's root and below. The task reads its own limits and usage
//! (`memory.limit_in_bytes`, `pids.max`, …) and nothing of other tasks, workers
//! or the host. Hierarchies the task has no cgroup of its own in (v1's cpuset,
//! devices, the hybrid `unified`, …) are not mounted.
//!
//! [`mount_view`] takes the root of the view, so a view built elsewhere (a
//! minimal root) can call it with its own.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

type Result<T> = std::result::Result<T, String>;

/// Where cgroup filesystems live.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup mount the task gets: where (on the host's layout), which
/// filesystem type, which options (v1: its controllers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub options: String,
}

/// The hierarchies the task cgroup's `cgroup.procs` files are in, from the
/// text of `/proc/self/mountinfo` (the longest mount point over each file).
pub fn hierarchies(mountinfo: &str, procs: &[PathBuf]) -> Vec<Hierarchy> {
    let mounts: Vec<Hierarchy> = mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mnt = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let super_opts = post.nth(1).unwrap_or("");
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            // v1: the controllers (and a `name=`), not rw/ro and friends.
            let options = super_opts
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("relatime"))
                .collect::<Vec<_>>()
                .join(",");
            Some(Hierarchy {
                mount_point: PathBuf::from(mnt),
                fstype: fstype.to_string(),
                options: if fstype == "cgroup2" {
                    String::new()
                } else {
                    options
                },
            })
        })
        .collect();
    let mut out: Vec<Hierarchy> = Vec::new();
    for p in procs {
        let best = mounts
            .iter()
            .filter(|m| p.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.as_os_str().len());
        if let Some(m) = best {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
    }
    out
}

fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Replaces `<root>/sys/fs/cgroup` with the task's own hierarchies (none, in
/// degraded mode: an empty directory). Runs in the task's mount and cgroup
/// namespaces, as root, before privileges are dropped.
pub fn mount_view(root: &Path, hierarchies: &[Hierarchy]) -> Result<()> {
    let none: Option<&str> = None;
    let top = under(root, Path::new(CGROUP_ROOT));
    if !top.is_dir() {
        return Ok(()); // no /sys/fs/cgroup in this view: nothing to show or hide
    }
    // Every host cgroup mount under it goes (they stay out of mountinfo too).
    let _ = umount2(&top, MntFlags::MNT_DETACH);
    let v2_at_top = hierarchies
        .iter()
        .find(|h| h.fstype == "cgroup2" && h.mount_point == Path::new(CGROUP_ROOT));
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Some(h) = v2_at_top {
        return mount(
            Some("cgroup2"),
            &top,
            Some(h.fstype.as_str()),
            flags | MsFlags::MS_RDONLY,
            none,
        )
        .map_err(|e| format!("mounting the task's cgroup2 view: {e}"));
    }
    mount(
        Some("tmpfs"),
        &top,
        Some("tmpfs"),
        flags,
        Some("size=4k,mode=0755"),
    )
    .map_err(|e| format!("mounting a tmpfs on {}: {e}", top.display()))?;
    for h in hierarchies {
        let Ok(rel) = h.mount_point.strip_prefix(CGROUP_ROOT) else {
            continue; // mounted elsewhere on this host: left out of the view
        };
        let at = top.join(rel);
        fs::create_dir_all(&at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
        let opts = (!h.options.is_empty()).then_some(h.options.as_str());
        mount(
            Some(h.fstype.as_str()),
            &at,
            Some(h.fstype.as_str()),
            flags | MsFlags::MS_RDONLY,
            opts,
        )
        .map_err(|e| format!("mounting the task's {} cgroup view: {e}", h.options))?;
    }
    mount(
        none,
        &top,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
        none,
    )
    .map_err(|e| format!("remounting {} read-only: {e}", top.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct";

    #[test]
    fn only_the_hierarchies_the_task_joined() {
        let procs = [
            PathBuf::from("/sys/fs/cgroup/memory/krill/w/t/cgroup.procs"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/krill/w/t/cgroup.procs"),
            PathBuf::from("/sys/fs/cgroup/memory/krill/w/t/cgroup.procs"),
        ];
        let h = hierarchies(V1, &procs);
        assert_eq!(
            h,
            vec![
                Hierarchy {
                    mount_point: "/sys/fs/cgroup/memory".into(),
                    fstype: "cgroup".into(),
                    options: "memory".into()
                },
                Hierarchy {
                    mount_point: "/sys/fs/cgroup/cpu,cpuacct".into(),
                    fstype: "cgroup".into(),
                    options: "cpu,cpuacct".into()
                },
            ]
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate";
        let h = hierarchies(
            v2,
            &[PathBuf::from(
                "/sys/fs/cgroup/krill.service/krill/w/t/cgroup.procs",
            )],
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].fstype, "cgroup2");
        assert!(hierarchies(V1, &[]).is_empty());
    }
}
