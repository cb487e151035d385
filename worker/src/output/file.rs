//! Safe read of a file the script wrote (`$KRILL_OUTPUT`, `$KRILL_SENSITIVE_OUTPUT`): no symlink, no FIFO, bounded size.
//!
//! The script controls the directory's contents, so [`read_capped`] trusts
//! nothing about the entry: it opens it with `O_NOFOLLOW | O_NONBLOCK |
//! O_CLOEXEC | O_NOCTTY` (a symlink is refused, never followed; opening a FIFO
//! does not block), then checks with `fstat` on the open descriptor that it is
//! a regular file with a single link (a hard link could expose a host file the
//! script cannot read itself) and at most `cap` bytes, and reads at most
//! `cap + 1` bytes so a file growing meanwhile is caught. A cheap `lstat`
//! before opening avoids even opening FIFOs and devices in the usual case; the
//! checks on the descriptor are the ones that count.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why an output file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The name is not a plain file name.
    #[error("invalid output file name `{0}`")]
    InvalidName(String),
    /// The entry is a symlink; it was not followed.
    #[error("`{0}` is a symlink")]
    Symlink(String),
    /// The entry is a FIFO, socket, device or directory.
    #[error("`{name}` is a {kind}, not a regular file")]
    NotRegular {
        /// The file name.
        name: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file has other hard links.
    #[error("`{name}` has {links} hard links")]
    HardLinked {
        /// The file name.
        name: String,
        /// Its link count.
        links: u64,
    },
    /// The file is over the cap (it was not read).
    #[error("`{name}` is larger than {cap} bytes")]
    TooLarge {
        /// The file name.
        name: String,
        /// The cap.
        cap: u64,
    },
    /// The file grew past the cap while being read.
    #[error("`{name}` grew larger than {cap} bytes while being read")]
    Grew {
        /// The file name.
        name: String,
        /// The cap.
        cap: u64,
    },
    /// Any other I/O error.
    #[error("cannot read `{name}`")]
    Io {
        /// The file name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Reads `dir/name`, which must be a regular file of at most `cap` bytes.
/// A missing file reads as empty.
pub fn read_capped(dir: &Path, name: &str, cap: u64) -> Result<Vec<u8>, FileError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FileError::InvalidName(name.to_owned()));
    }
    let path = dir.join(name);
    let io_err = |source| FileError::Io {
        name: name.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => check_type(name, meta.file_type())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(FileError::Symlink(name.to_owned()))
        }
        Err(e) => return Err(io_err(e)),
    };
    // fstat on the descriptor: what we read is what we checked.
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
    read_limited(file, meta.len(), cap).map_err(|e| match e {
        Limited::Grew => FileError::Grew {
            name: name.to_owned(),
            cap,
        },
        Limited::Io(e) => io_err(e),
    })
}

fn check_type(name: &str, ft: std::fs::FileType) -> Result<(), FileError> {
    let kind = if ft.is_file() {
        return Ok(());
    } else if ft.is_symlink() {
        return Err(FileError::Symlink(name.to_owned()));
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

enum Limited {
    Grew,
    Io(io::Error),
}

/// Reads at most `cap + 1` bytes; more than `cap` means the file grew.
fn read_limited(file: impl Read, size: u64, cap: u64) -> Result<Vec<u8>, Limited> {
    let mut buf = Vec::with_capacity(usize::try_from(size.min(cap)).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(Limited::Io)?;
    if buf.len() as u64 > cap {
        return Err(Limited::Grew);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "krill-output-file-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).expect("create temp dir");
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_a_normal_file() {
        let dir = TempDir::new();
        std::fs::write(dir.0.join("out"), b"a=1\n").expect("write");
        assert_eq!(read_capped(&dir.0, "out", 4).expect("read"), b"a=1\n");
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = TempDir::new();
        assert_eq!(read_capped(&dir.0, "out", 10).expect("read"), b"");
    }

    #[test]
    fn symlink_is_refused() {
        let dir = TempDir::new();
        std::os::unix::fs::symlink("/etc/passwd", dir.0.join("out")).expect("symlink");
        let err = read_capped(&dir.0, "out", 1 << 20).expect_err("symlink");
        assert!(matches!(err, FileError::Symlink(_)), "{err:?}");
        assert_eq!(err.to_string(), "`out` is a symlink");
        // A dangling one too.
        std::os::unix::fs::symlink("/nonexistent", dir.0.join("dangling")).expect("symlink");
        let err = read_capped(&dir.0, "dangling", 10).expect_err("symlink");
        assert!(matches!(err, FileError::Symlink(_)), "{err:?}");
    }

    #[test]
    fn open_refuses_symlinks_even_after_the_precheck() {
        // The O_NOFOLLOW path itself, as in a race after the lstat.
        let dir = TempDir::new();
        let link = dir.0.join("out");
        std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
        let err = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&link)
            .expect_err("not followed");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = TempDir::new();
        nix::unistd::mkfifo(&dir.0.join("out"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let err = read_capped(&dir.0, "out", 10).expect_err("fifo");
        assert_eq!(err.to_string(), "`out` is a fifo, not a regular file");
    }

    #[test]
    fn socket_and_directory_are_refused() {
        let dir = TempDir::new();
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.0.join("sock")).expect("bind socket");
        let err = read_capped(&dir.0, "sock", 10).expect_err("socket");
        assert_eq!(err.to_string(), "`sock` is a socket, not a regular file");
        std::fs::create_dir(dir.0.join("d")).expect("mkdir");
        let err = read_capped(&dir.0, "d", 10).expect_err("directory");
        assert_eq!(err.to_string(), "`d` is a directory, not a regular file");
    }

    #[test]
    fn device_is_refused() {
        let err = read_capped(Path::new("/dev"), "null", 10).expect_err("device");
        assert_eq!(
            err.to_string(),
            "`null` is a character device, not a regular file"
        );
    }

    #[test]
    fn huge_sparse_file_is_refused_without_reading() {
        let dir = TempDir::new();
        let f = File::create(dir.0.join("out")).expect("create");
        f.set_len(1 << 40).expect("set_len");
        let err = read_capped(&dir.0, "out", 1 << 20).expect_err("too large");
        assert_eq!(err.to_string(), "`out` is larger than 1048576 bytes");
        std::fs::write(dir.0.join("five"), b"12345").expect("write");
        assert!(matches!(
            read_capped(&dir.0, "five", 4),
            Err(FileError::TooLarge { cap: 4, .. })
        ));
    }

    #[test]
    fn hard_link_is_refused() {
        let dir = TempDir::new();
        std::fs::write(dir.0.join("a"), b"x").expect("write");
        std::fs::hard_link(dir.0.join("a"), dir.0.join("out")).expect("link");
        let err = read_capped(&dir.0, "out", 10).expect_err("hard link");
        assert_eq!(err.to_string(), "`out` has 2 hard links");
    }

    #[test]
    fn growing_file_is_caught() {
        // fstat said 2 bytes, the reader yields more than the cap.
        let reader = io::Cursor::new(vec![b'x'; 100]);
        assert!(matches!(read_limited(reader, 2, 10), Err(Limited::Grew)));
        let reader = io::Cursor::new(vec![b'x'; 10]);
        assert!(matches!(read_limited(reader, 2, 10), Ok(b) if b.len() == 10));
    }

    #[test]
    fn invalid_names_are_refused() {
        let dir = TempDir::new();
        for name in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(
                matches!(
                    read_capped(&dir.0, name, 10),
                    Err(FileError::InvalidName(_))
                ),
                "{name:?}"
            );
        }
    }
}
