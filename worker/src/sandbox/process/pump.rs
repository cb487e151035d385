//! Reading a task's stdout and stderr, and watching `$KRILL_SENSITIVE_OUTPUT` so
//! new sensitive values are masked before anything printed after them.

use std::fs;
use std::path::PathBuf;
use std::time::SystemTime;

use broker::protocol::Stream;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::mpsc;

use super::layout::SENSITIVE_FILE;
use crate::output::read_capped;
use crate::sandbox::Event;

const READ_CHUNK: usize = 64 * 1024;

/// Watches the sensitive-output file (on the host side of its bind mount).
#[derive(Debug)]
pub struct SensitiveWatch {
    dir: PathBuf,
    cap: u64,
    seen: Option<(u64, SystemTime)>,
}

impl SensitiveWatch {
    pub fn new(dir: PathBuf, cap: u64) -> Self {
        SensitiveWatch {
            dir,
            cap,
            seen: None,
        }
    }

    /// The file's content if it changed since the last call.
    fn changed(&mut self) -> Option<Bytes> {
        let meta = fs::symlink_metadata(self.dir.join(SENSITIVE_FILE)).ok()?;
        let stamp = (meta.len(), meta.modified().ok()?);
        if meta.len() == 0 || self.seen == Some(stamp) {
            return None;
        }
        self.seen = Some(stamp);
        read_capped(
            &self.dir.join(SENSITIVE_FILE),
            self.cap,
            "KRILL_SENSITIVE_OUTPUT",
        )
        .ok()
        .map(Bytes::from)
    }
}

/// Reads both pipes until EOF, sending sensitive-file changes before the output
/// that follows them.
pub async fn pump(
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    events: mpsc::Sender<Event>,
    mut watch: SensitiveWatch,
) {
    let mut out = stdout;
    let mut err = stderr;
    let mut buf_out = vec![0u8; READ_CHUNK];
    let mut buf_err = vec![0u8; READ_CHUNK];
    while out.is_some() || err.is_some() {
        let (stream, n) = tokio::select! {
            // Stdout first when both are ready: an `::add-mask::` line printed
            // before a write to stderr is registered before that write is masked.
            biased;
            r = read_opt(&mut out, &mut buf_out), if out.is_some() => (Stream::Stdout, r),
            r = read_opt(&mut err, &mut buf_err), if err.is_some() => (Stream::Stderr, r),
        };
        match n {
            0 => match stream {
                Stream::Stdout => out = None,
                Stream::Stderr => err = None,
            },
            n => {
                if let Some(content) = watch.changed() {
                    if events.send(Event::Sensitive(content)).await.is_err() {
                        return;
                    }
                }
                let buf = if stream == Stream::Stdout {
                    &buf_out
                } else {
                    &buf_err
                };
                if events
                    .send(Event::Output(stream, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    if let Some(content) = watch.changed() {
        let _ = events.send(Event::Sensitive(content)).await;
    }
}

async fn read_opt<R: tokio::io::AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> usize {
    match r {
        Some(r) => r.read(buf).await.unwrap_or(0),
        None => 0,
    }
}
