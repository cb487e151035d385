//! # The wire format between the worker and `krill-stub`, shared by both sides
//!
//! `krill-stub` runs as a task container's command. The worker talks to it over
//! the container's stdin and stdout (Docker's attach stream), in frames:
//!
//! ```text
//! [kind u8][len u32 big-endian][payload: len bytes]
//! ```
//!
//! - worker → stub: one [`ToStub::Request`] (JSON payload), then optionally
//!   [`ToStub::Terminate`] while the script runs and [`ToStub::Release`] once the
//!   worker has read what it needs from the still-running container.
//! - stub → worker: [`FromStub`]: output chunks, sensitive-file snapshots, the
//!   final output files, and the exit status, always last.
//!
//! The script's stdout and stderr are pipes into the stub, which frames them, so
//! nothing the script prints can forge a frame.
//!
//! ## Layout
//! - [`codec`]: frame encoding/decoding and the typed messages.
//! - [`files`]: reading an output-variable file safely (no symlink, FIFO, hard link or huge
//!   file): the one `read_capped`, used by the stub and the worker.

pub mod codec;
pub mod files;

pub use codec::{
    decode_frame, encode_frame, read_frame, ExitStatus, FrameDecoder, FrameError, FromStub,
    Request, ToStub, HEADER_LEN, MAX_REQUEST_BYTES,
};
pub use files::{read_capped, FileError};
