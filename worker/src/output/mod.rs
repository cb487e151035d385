//! Output of a task: streaming secret masking, `::add-mask::`, output variables, capped capture (pure, no I/O but the safe file read).
//!
//! # Pipeline
//!
//! ```text
//! raw stdout -> AddMaskFilter -> MaskStream -> Lossy -> MaskStream --+--> Capture (result's stdout)
//!                   |                                                +--> live log chunks
//!                   v (registers values)
//!                MaskSet <-- task secrets, sensitive outputs
//!                   ^
//! raw stderr ------------------> MaskStream -> Lossy -> MaskStream --+--> Capture (result's stderr)
//!                                                                    +--> live log chunks
//! ```
//!
//! - One [`MaskSet`] per task, shared (cheap clones) by both streams, error
//!   messages and the worker's logs ([`MaskSet::mask_str`]). It starts with
//!   the task's secrets; [`AddMaskFilter`] adds `::add-mask::` values from
//!   stdout before the stdout [`MaskStream`] sees the following bytes; each
//!   value of the sensitive output file is added when the sandbox reports
//!   that file changed (and once more at the end, before the result is built).
//! - [`Pipeline`] strings the stages together for both streams: masking on the
//!   raw bytes, the lossy UTF-8 conversion ([`Lossy`]), masking again on the
//!   text; when a value cannot be masked it withholds the rest (fails closed).
//! - Each [`MaskStream`] holds back only a tail that could still begin a
//!   secret; call [`MaskStream::finish`] at end of output to flush it.
//! - [`Capture`] keeps the first bytes of a masked stream for the result.
//! - Output files are read with [`read_capped`] and parsed with [`parse`];
//!   stdout is never parsed for outputs.
//! - [`Notes`] bounds a result's `warnings` and `output_errors` lists.
//! - [`escape_log`] makes sandbox text safe for the worker's own log lines.

mod addmask;
mod capture;
mod logtext;
mod mask;
mod notes;
mod pipeline;
mod utf8;
mod vars;

pub use addmask::{
    AddMaskFilter, AddMaskWarning, ADD_MASK_PREFIX, MAX_ADD_MASK_BYTES, MAX_ADD_MASK_LINE,
    MAX_ADD_MASK_VALUES,
};
pub use capture::Capture;
pub use logtext::{escape_log, MAX_LOG_TEXT};
pub use mask::{
    MaskError, MaskSet, MaskStream, LEVEL_BASE, MASK, MAX_MASK_BYTES, MAX_MASK_VALUES, MIN_MASK_LEN,
};
pub use notes::{Notes, MAX_NOTES};
pub use pipeline::{not_masked, register_sensitive, Pipeline};
/// The one safe read of a file the script wrote (the stub's, shared).
pub use stub::files::{read_capped, FileError};
pub use utf8::Lossy;
pub use vars::{parse, Parsed, VarError, MAX_ERRORS, MAX_NAME_LEN};
