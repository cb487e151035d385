//! Output variables, masking and capture (placeholder, being written).
