//! Reading an output-variable file the script controls, without trusting it.
//!
//! The script may have replaced the file by a symbolic link (to a secret of the
//! stub's or to /dev/zero), a FIFO (a read would block forever), a directory, or
//! a huge sparse file. [`read_capped`] opens it with `O_NOFOLLOW | O_NONBLOCK`,
//! accepts only a regular file, and never reads more than `cap + 1` bytes. Error
//! texts never contain any of the file's content.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads the whole file at `path` if it is a regular file of at most `cap` bytes.
/// `name` (e.g. `KRILL_OUTPUT`) is used in the error text.
pub fn read_capped(path: &Path, cap: u64, name: &str) -> Result<Vec<u8>, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{name} is a symbolic link"),
            _ if e.kind() == ErrorKind::NotFound => format!("{name} was removed"),
            _ => format!("cannot open {name}: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {name}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    if meta.len() > cap {
        return Err(format!("{name} is larger than the cap of {cap} bytes"));
    }
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut content)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if content.len() as u64 > cap {
        return Err(format!("{name} is larger than the cap of {cap} bytes"));
    }
    Ok(content)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("krill-stub-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_small_regular_file() {
        let dir = temp_dir("regular");
        let p = dir.join("out");
        std::fs::write(&p, b"a=1\n").unwrap();
        assert_eq!(read_capped(&p, 4, "KRILL_OUTPUT").unwrap(), b"a=1\n");
        assert_eq!(
            read_capped(&p, 3, "KRILL_OUTPUT").unwrap_err(),
            "KRILL_OUTPUT is larger than the cap of 3 bytes"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_symlink_fifo_directory_sparse_and_missing() {
        let dir = temp_dir("hostile");
        let link = dir.join("link");
        symlink("/etc/passwd", &link).unwrap();
        assert_eq!(
            read_capped(&link, 1 << 20, "X").unwrap_err(),
            "X is a symbolic link"
        );

        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_capped(&fifo, 1 << 20, "X").unwrap_err(),
            "X is not a regular file"
        );

        assert_eq!(
            read_capped(&dir, 1 << 20, "X").unwrap_err(),
            "X is not a regular file"
        );

        let sparse = dir.join("sparse");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        assert_eq!(
            read_capped(&sparse, 1 << 20, "X").unwrap_err(),
            "X is larger than the cap of 1048576 bytes"
        );

        assert_eq!(
            read_capped(&dir.join("nope"), 1, "X").unwrap_err(),
            "X was removed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
