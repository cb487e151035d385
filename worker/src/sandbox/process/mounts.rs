//! The small mount and file helpers the view's builders share ([`super::fs`]
//! builds the root, [`super::special`] its `/dev` and `/proc`); they run in
//! the helper, so errors are plain text for its report.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

pub(super) type Result<T> = std::result::Result<T, String>;

pub(super) fn ctx<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

pub(super) fn mkdir(p: &Path, mode: u32) -> Result<()> {
    match fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {}: {e}", p.display())),
    }
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

/// Binds `src` onto `target`, then sets `flags` (read-write unless
/// `MS_RDONLY`; a bind keeps its source's flags until remounted).
pub(super) fn bind(src: &Path, target: &Path, flags: MsFlags) -> Result<()> {
    let none: Option<&str> = None;
    mount(Some(src), target, none, MsFlags::MS_BIND, none)
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
