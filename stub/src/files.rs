//! Reading an output-variable file the script controls, without trusting it:
//! the one `read_capped`, used by `krill-stub` in containers and by the worker
//! for the process sandbox.
//!
//! The script may have replaced the file by a symbolic link (to a secret of the
//! reader's or to /dev/zero), a FIFO (a read would block forever), a directory,
//! a hard link to a file it cannot read itself, or a huge sparse file.
//! [`read_capped`] opens it with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC |
//! O_NOCTTY` (a symlink is refused, never followed; opening a FIFO does not
//! block), then checks with `fstat` on the open descriptor that it is a regular
//! file with a single link and at most `cap` bytes, and reads at most `cap + 1`
//! bytes so a file growing meanwhile is caught. A cheap `lstat` before opening
//! avoids even opening FIFOs and devices in the usual case; the checks on the
//! descriptor are the ones that count. Error texts never contain any of the
//! file's content.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why an output file was not read; `name` is what the error calls it
/// (e.g. `KRILL_OUTPUT`).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The entry is a symlink; it was not followed.
    #[error("{name} is a symbolic link")]
    Symlink { name: String },
    /// The entry is a FIFO, socket, device or directory.
    #[error("{name} is not a regular file")]
    NotRegular {
        name: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file has other hard links.
    #[error("{name} has {links} hard links")]
    HardLinked { name: String, links: u64 },
    /// The file is over the cap (it was not read).
    #[error("{name} is larger than {cap} bytes")]
    TooLarge { name: String, cap: u64 },
    /// The file grew past the cap while being read.
    #[error("{name} grew larger than {cap} bytes while being read")]
    Grew { name: String, cap: u64 },
    /// The file is not there (the reader made it: the script removed it).
    #[error("{name} was removed")]
    Missing { name: String },
    /// Any other I/O error.
    #[error("cannot read {name}: {error}")]
    Io { name: String, error: io::Error },
}

/// Reads the file at `path`, which must be a regular file with one link and
/// at most `cap` bytes. `name` names it in errors.
pub fn read_capped(path: &Path, cap: u64, name: &str) -> Result<Vec<u8>, FileError> {
    let io_err = |error: io::Error| match error.kind() {
        io::ErrorKind::NotFound => FileError::Missing {
            name: name.to_owned(),
        },
        _ => FileError::Io {
            name: name.to_owned(),
            error,
        },
    };
    let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
    check_type(name, meta.file_type())?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => FileError::Symlink {
                name: name.to_owned(),
            },
            _ => io_err(e),
        })?;
    // fstat on the descriptor: what is read is what was checked.
    let meta = file.metadata().map_err(io_err)?;
    check_type(name, meta.file_type())?;
    if meta.nlink() > 1 {
        return Err(FileError::HardLinked {
            name: name.to_owned(),
            links: meta.nlink(),
        });
    }
    if meta.len() > cap {
        return Err(FileError::TooLarge {
            name: name.to_owned(),
            cap,
        });
    }
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut content)
        .map_err(io_err)?;
    if content.len() as u64 > cap {
        return Err(FileError::Grew {
            name: name.to_owned(),
            cap,
        });
    }
    Ok(content)
}

fn check_type(name: &str, ft: std::fs::FileType) -> Result<(), FileError> {
    let kind = if ft.is_file() {
        return Ok(());
    } else if ft.is_symlink() {
        return Err(FileError::Symlink {
            name: name.to_owned(),
        });
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    };
    Err(FileError::NotRegular {
        name: name.to_owned(),
        kind,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("krill-files-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn reads_a_small_regular_file() {
        let dir = TempDir::new("regular");
        let p = dir.0.join("out");
        std::fs::write(&p, b"a=1\n").unwrap();
        assert_eq!(read_capped(&p, 4, "KRILL_OUTPUT").unwrap(), b"a=1\n");
        assert_eq!(
            read_capped(&p, 3, "KRILL_OUTPUT").unwrap_err().to_string(),
            "KRILL_OUTPUT is larger than 3 bytes"
        );
    }

    #[test]
    fn refuses_symlink_fifo_socket_directory_device_sparse_and_missing() {
        let dir = TempDir::new("hostile");
        let link = dir.0.join("link");
        symlink("/etc/passwd", &link).unwrap();
        let err = read_capped(&link, 1 << 20, "X").unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{err:?}");
        assert_eq!(err.to_string(), "X is a symbolic link");
        symlink("/nonexistent", dir.0.join("dangling")).unwrap();
        assert!(matches!(
            read_capped(&dir.0.join("dangling"), 10, "X"),
            Err(FileError::Symlink { .. })
        ));

        let fifo = dir.0.join("fifo");
        mkfifo(&fifo);
        let err = read_capped(&fifo, 1 << 20, "X").unwrap_err();
        assert!(
            matches!(err, FileError::NotRegular { kind: "fifo", .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "X is not a regular file");

        let _listener = std::os::unix::net::UnixListener::bind(dir.0.join("sock")).unwrap();
        assert!(matches!(
            read_capped(&dir.0.join("sock"), 10, "X"),
            Err(FileError::NotRegular { kind: "socket", .. })
        ));
        assert!(matches!(
            read_capped(&dir.0, 10, "X"),
            Err(FileError::NotRegular {
                kind: "directory",
                ..
            })
        ));
        assert!(matches!(
            read_capped(Path::new("/dev/null"), 10, "X"),
            Err(FileError::NotRegular {
                kind: "character device",
                ..
            })
        ));

        let sparse = dir.0.join("sparse");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        assert_eq!(
            read_capped(&sparse, 1 << 20, "X").unwrap_err().to_string(),
            "X is larger than 1048576 bytes"
        );

        assert_eq!(
            read_capped(&dir.0.join("nope"), 1, "X")
                .unwrap_err()
                .to_string(),
            "X was removed"
        );
    }

    #[test]
    fn open_refuses_symlinks_even_after_the_precheck() {
        // The O_NOFOLLOW path itself, as in a race after the lstat.
        let dir = TempDir::new("race");
        let link = dir.0.join("out");
        symlink("/etc/passwd", &link).unwrap();
        let err = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&link)
            .expect_err("not followed");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn a_hard_link_is_refused() {
        let dir = TempDir::new("hardlink");
        std::fs::write(dir.0.join("a"), b"x").unwrap();
        std::fs::hard_link(dir.0.join("a"), dir.0.join("out")).unwrap();
        assert_eq!(
            read_capped(&dir.0.join("out"), 10, "KRILL_OUTPUT")
                .unwrap_err()
                .to_string(),
            "KRILL_OUTPUT has 2 hard links"
        );
    }
}
