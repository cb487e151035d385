//! Container sandbox (placeholder, being written).
