//! Frames `[kind u8][len u32 BE][payload]` and the typed messages carried in them.

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};

/// Bytes before a frame's payload: the kind and the length.
pub const HEADER_LEN: usize = 5;

/// The largest [`Request`] frame the stub accepts (script, env and secrets included).
pub const MAX_REQUEST_BYTES: u32 = 16 * 1024 * 1024;

// Stub -> worker.
const K_STDOUT: u8 = 1;
const K_STDERR: u8 = 2;
const K_SENSITIVE: u8 = 3;
const K_OUTPUTS: u8 = 4;
const K_SENSITIVE_FINAL: u8 = 5;
const K_EXIT: u8 = 6;
const K_STUB_ERROR: u8 = 7;
// Worker -> stub.
const K_REQUEST: u8 = 0x10;
const K_TERMINATE: u8 = 0x11;
const K_RELEASE: u8 = 0x12;

/// A frame that cannot be decoded. The connection is unusable after one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The stream ended inside a frame.
    Truncated { have: usize },
    /// A frame's length is over what the reader accepts.
    TooLong { len: u64, max: u32 },
    /// A kind this side does not know.
    UnknownKind(u8),
    /// The payload does not fit its kind.
    Malformed { kind: u8, reason: String },
    /// Reading the stream failed.
    Io(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated { have } => {
                write!(f, "stream ended inside a frame ({have} bytes buffered)")
            }
            FrameError::TooLong { len, max } => {
                write!(f, "frame of {len} bytes is over the limit of {max}")
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::Malformed { kind, reason } => {
                write!(f, "malformed frame of kind {kind}: {reason}")
            }
            FrameError::Io(e) => write!(f, "reading frames: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends one frame to `out`. Fails only when the payload does not fit a u32 length.
pub fn encode_frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLong {
        len: payload.len() as u64,
        max: u32::MAX,
    })?;
    out.reserve(HEADER_LEN + payload.len());
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// A frame found in a buffer: its kind, its payload, and the bytes it took.
pub type Decoded<'a> = (u8, &'a [u8], usize);

/// Decodes the frame at the start of `buf`: `Ok(None)` when more bytes are needed,
/// else the kind, the payload and how many bytes of `buf` the frame took.
/// A length over `max_len` is an error as soon as the header is complete.
pub fn decode_frame(buf: &[u8], max_len: u32) -> Result<Option<Decoded<'_>>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len > max_len {
        return Err(FrameError::TooLong {
            len: u64::from(len),
            max: max_len,
        });
    }
    let end = HEADER_LEN + len as usize;
    match buf.get(HEADER_LEN..end) {
        Some(payload) => Ok(Some((header[0], payload, end))),
        None => Ok(None),
    }
}

/// Reads one whole frame from a blocking reader: `Ok(None)` on a clean end of
/// stream before the frame started, [`FrameError::Truncated`] inside one.
pub fn read_frame(r: &mut impl Read, max_len: u32) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut have = 0;
    while have < HEADER_LEN {
        match r.read(&mut header[have..]) {
            Ok(0) if have == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated { have }),
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e.to_string())),
        }
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len > max_len {
        return Err(FrameError::TooLong {
            len: u64::from(len),
            max: max_len,
        });
    }
    let mut payload = Vec::new();
    let got = r
        .take(u64::from(len))
        .read_to_end(&mut payload)
        .map_err(|e| FrameError::Io(e.to_string()))?;
    if got < len as usize {
        return Err(FrameError::Truncated {
            have: HEADER_LEN + got,
        });
    }
    Ok(Some((header[0], payload)))
}

/// Buffers a byte stream and yields whole frames (the worker's side of the attach stream).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_len: u32,
}

impl FrameDecoder {
    pub fn new(max_len: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_len,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<FromStub>, FrameError> {
        match decode_frame(&self.buf[self.start..], self.max_len)? {
            None => Ok(None),
            Some((kind, payload, used)) => {
                let msg = FromStub::decode(kind, payload)?;
                self.start += used;
                Ok(Some(msg))
            }
        }
    }

    /// Call at end of stream: an error if a frame was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        let have = self.buf.len() - self.start;
        if have == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated { have })
        }
    }
}

/// What the worker asks the stub to run. `env` values may be secrets: never log them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub task_id: String,
    pub script: String,
    /// Program and arguments; the script file's path is appended.
    pub interpreter: Vec<String>,
    /// The task's environment (secrets included). The stub adds `PATH` (from
    /// `path`, unless set here), `HOME` and the `KRILL_*` variables; nothing of its
    /// own environment reaches the script.
    pub env: Vec<(String, String)>,
    /// `PATH` for the script and for finding the interpreter.
    pub path: String,
    /// Cap on each output-variable file, bytes.
    pub output_file_cap: u64,
    /// Writable work dir: the script's cwd and `HOME`.
    pub work_dir: String,
    /// Root-owned directory (group: the script's gid, setgid, `0710`) in which
    /// the stub writes the script file (`0644`) and creates the
    /// `$KRILL_OUTPUT` and `$KRILL_SENSITIVE_OUTPUT` files (`0660`): the script
    /// can write to them, never rename, replace or link them.
    pub output_dir: String,
    /// The uid and gid the script runs as. The stub runs as another user
    /// (root, with only the capabilities to drop privileges and to end the
    /// script's processes) and drops to these between fork and exec.
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("task_id", &self.task_id)
            .field("script_bytes", &self.script.len())
            .field("interpreter", &self.interpreter)
            .field(
                "env_names",
                &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("path", &self.path)
            .field("output_file_cap", &self.output_file_cap)
            .field("work_dir", &self.work_dir)
            .field("output_dir", &self.output_dir)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .finish()
    }
}

/// A message from the worker to the stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToStub {
    /// The task; the stub writes nothing before it has read this.
    Request(Box<Request>),
    /// Stop the script: SIGTERM to its process group, SIGKILL after a grace.
    Terminate,
    /// The worker has what it needs; the stub may exit (its container stops).
    Release,
}

impl ToStub {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            ToStub::Request(r) => {
                let json = serde_json::to_vec(r).map_err(|e| FrameError::Malformed {
                    kind: K_REQUEST,
                    reason: e.to_string(),
                })?;
                encode_frame(K_REQUEST, &json, out)
            }
            ToStub::Terminate => encode_frame(K_TERMINATE, &[], out),
            ToStub::Release => encode_frame(K_RELEASE, &[], out),
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, FrameError> {
        match kind {
            K_REQUEST => serde_json::from_slice(payload)
                .map(|r| ToStub::Request(Box::new(r)))
                .map_err(|e| FrameError::Malformed {
                    kind,
                    reason: e.to_string(),
                }),
            K_TERMINATE => Ok(ToStub::Terminate),
            K_RELEASE => Ok(ToStub::Release),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// How the script ended, as the stub saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// A message from the stub to the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromStub {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The whole current content of `$KRILL_SENSITIVE_OUTPUT`; sent whenever it
    /// changed, before any output read after the change.
    Sensitive(Vec<u8>),
    /// Final content of `$KRILL_OUTPUT`, or why it could not be read safely.
    Outputs(Result<Vec<u8>, String>),
    /// Final content of `$KRILL_SENSITIVE_OUTPUT`, or why it could not be read safely.
    SensitiveFinal(Result<Vec<u8>, String>),
    /// The script ended; always the last message of a run.
    Exit(ExitStatus),
    /// The stub itself failed (not the script); no `Exit` follows.
    StubError(String),
}

fn file_result(kind: u8, payload: &[u8]) -> Result<Result<Vec<u8>, String>, FrameError> {
    match payload.split_first() {
        Some((0, content)) => Ok(Ok(content.to_vec())),
        Some((1, text)) => Ok(Err(String::from_utf8_lossy(text).into_owned())),
        _ => Err(FrameError::Malformed {
            kind,
            reason: "bad file status byte".into(),
        }),
    }
}

fn encode_file_result(
    kind: u8,
    r: &Result<Vec<u8>, String>,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let mut payload = Vec::with_capacity(1 + r.as_ref().map_or_else(|e| e.len(), |c| c.len()));
    match r {
        Ok(content) => {
            payload.push(0);
            payload.extend_from_slice(content);
        }
        Err(text) => {
            payload.push(1);
            payload.extend_from_slice(text.as_bytes());
        }
    }
    encode_frame(kind, &payload, out)
}

impl FromStub {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            FromStub::Stdout(b) => encode_frame(K_STDOUT, b, out),
            FromStub::Stderr(b) => encode_frame(K_STDERR, b, out),
            FromStub::Sensitive(b) => encode_frame(K_SENSITIVE, b, out),
            FromStub::Outputs(r) => encode_file_result(K_OUTPUTS, r, out),
            FromStub::SensitiveFinal(r) => encode_file_result(K_SENSITIVE_FINAL, r, out),
            FromStub::Exit(status) => {
                let (tag, value) = match status {
                    ExitStatus::Code(c) => (0u8, *c),
                    ExitStatus::Signal(s) => (1u8, *s),
                };
                let mut payload = [0u8; 5];
                payload[0] = tag;
                payload[1..].copy_from_slice(&value.to_be_bytes());
                encode_frame(K_EXIT, &payload, out)
            }
            FromStub::StubError(text) => encode_frame(K_STUB_ERROR, text.as_bytes(), out),
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, FrameError> {
        Ok(match kind {
            K_STDOUT => FromStub::Stdout(payload.to_vec()),
            K_STDERR => FromStub::Stderr(payload.to_vec()),
            K_SENSITIVE => FromStub::Sensitive(payload.to_vec()),
            K_OUTPUTS => FromStub::Outputs(file_result(kind, payload)?),
            K_SENSITIVE_FINAL => FromStub::SensitiveFinal(file_result(kind, payload)?),
            K_EXIT => {
                let bad = || FrameError::Malformed {
                    kind,
                    reason: "exit payload is not 5 bytes".into(),
                };
                let [tag, a, b, c, d] = <[u8; 5]>::try_from(payload).map_err(|_| bad())?;
                let value = i32::from_be_bytes([a, b, c, d]);
                match tag {
                    0 => FromStub::Exit(ExitStatus::Code(value)),
                    1 => FromStub::Exit(ExitStatus::Signal(value)),
                    _ => return Err(bad()),
                }
            }
            K_STUB_ERROR => FromStub::StubError(String::from_utf8_lossy(payload).into_owned()),
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all_from_stub() -> Vec<FromStub> {
        vec![
            FromStub::Stdout(b"hello\n".to_vec()),
            FromStub::Stderr(vec![]),
            FromStub::Sensitive(b"TOKEN=abc\n".to_vec()),
            FromStub::Outputs(Ok(b"a=1\n".to_vec())),
            FromStub::Outputs(Err("KRILL_OUTPUT is a symbolic link".into())),
            FromStub::SensitiveFinal(Ok(vec![0, 1, 2, 255])),
            FromStub::SensitiveFinal(Err("too big".into())),
            FromStub::Exit(ExitStatus::Code(-3)),
            FromStub::Exit(ExitStatus::Signal(9)),
            FromStub::StubError("cannot write script".into()),
        ]
    }

    #[test]
    fn from_stub_round_trip_through_decoder_byte_by_byte() {
        let msgs = all_from_stub();
        let mut wire = Vec::new();
        for m in &msgs {
            m.encode(&mut wire).unwrap();
        }
        let mut dec = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        dec.finish().unwrap();
        assert_eq!(got, msgs);
    }

    #[test]
    fn to_stub_round_trip() {
        let req = Request {
            task_id: "t1".into(),
            script: "echo hi".into(),
            interpreter: vec!["sh".into(), "-eu".into()],
            env: vec![("SECRET".into(), "s3cr3t".into())],
            path: "/bin".into(),
            output_file_cap: 1024,
            work_dir: "/work".into(),
            output_dir: "/.krill/out".into(),
            uid: 65534,
            gid: 65534,
        };
        assert!(!format!("{req:?}").contains("s3cr3t"));
        for m in [
            ToStub::Request(Box::new(req)),
            ToStub::Terminate,
            ToStub::Release,
        ] {
            let mut wire = Vec::new();
            m.encode(&mut wire).unwrap();
            let (kind, payload) = read_frame(&mut wire.as_slice(), MAX_REQUEST_BYTES)
                .unwrap()
                .unwrap();
            assert_eq!(ToStub::decode(kind, &payload).unwrap(), m);
        }
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut wire = Vec::new();
        FromStub::Stdout(b"0123456789".to_vec())
            .encode(&mut wire)
            .unwrap();
        for cut in 1..wire.len() {
            let part = &wire[..cut];
            let mut dec = FrameDecoder::new(1024);
            dec.push(part);
            assert_eq!(dec.next_message().unwrap(), None);
            assert_eq!(dec.finish(), Err(FrameError::Truncated { have: cut }));
            assert!(matches!(
                read_frame(&mut &part[..], 1024),
                Err(FrameError::Truncated { .. })
            ));
        }
        assert_eq!(read_frame(&mut &wire[..0], 1024), Ok(None));
    }

    #[test]
    fn length_over_cap_is_an_error_from_the_header_alone() {
        let mut wire = Vec::new();
        encode_frame(K_STDOUT, &[7u8; 100], &mut wire).unwrap();
        assert_eq!(
            decode_frame(&wire[..HEADER_LEN], 99),
            Err(FrameError::TooLong { len: 100, max: 99 })
        );
        assert!(decode_frame(&wire, 100).unwrap().is_some());
        assert_eq!(
            read_frame(&mut wire.as_slice(), 10),
            Err(FrameError::TooLong { len: 100, max: 10 })
        );
    }

    #[test]
    fn unknown_kind_and_bad_payloads_are_errors() {
        assert_eq!(FromStub::decode(99, b""), Err(FrameError::UnknownKind(99)));
        assert!(FromStub::decode(K_EXIT, &[0, 1, 2]).is_err());
        assert!(FromStub::decode(K_EXIT, &[2, 0, 0, 0, 1]).is_err());
        assert!(FromStub::decode(K_OUTPUTS, &[]).is_err());
        assert!(ToStub::decode(K_REQUEST, b"{\"task_id\":1}").is_err());
        assert!(ToStub::decode(K_STDOUT, b"").is_err());
    }
}
