//! Output of a task: streaming secret masking, `::add-mask::`, output variables, capped capture (pure, no I/O but the safe file read).
//!
//! # Pipeline
//!
//! ```text
//! raw stdout -> AddMaskFilter -> MaskStream --+--> Capture (result's stdout)
//!                   |                         +--> live log chunks
//!                   v (registers values)
//!                MaskSet <-- task secrets, sensitive outputs
//!                   ^
//! raw stderr ------------------> MaskStream --+--> Capture (result's stderr)
//!                                             +--> live log chunks
//! ```
//!
//! - One [`MaskSet`] per task, shared (cheap clones) by both streams, error
//!   messages and the worker's logs ([`MaskSet::mask_str`]). It starts with
//!   the task's secrets; [`AddMaskFilter`] adds `::add-mask::` values from
//!   stdout before the stdout [`MaskStream`] sees the following bytes; each
//!   value of the sensitive output file is added when the sandbox reports
//!   that file changed (and once more at the end, before the result is built).
//! - Each [`MaskStream`] holds back only a tail that could still begin a
//!   secret; call [`MaskStream::finish`] at end of output to flush it.
//! - [`Capture`] keeps the first bytes of a masked stream for the result.
//! - Output files are read with [`read_capped`] and parsed with [`parse`];
//!   stdout is never parsed for outputs.

mod addmask;
mod capture;
mod mask;
mod vars;

pub use addmask::{AddMaskFilter, AddMaskWarning, ADD_MASK_PREFIX, MAX_ADD_MASK_LINE};
pub use capture::Capture;
pub use mask::{
    MaskError, MaskSet, MaskStream, MASK, MAX_MASK_BYTES, MAX_MASK_VALUES, MIN_MASK_LEN,
};
/// The one safe read of a file the script wrote (the stub's, shared).
pub use stub::files::{read_capped, FileError};
pub use vars::{parse, Parsed, VarError, MAX_NAME_LEN};
