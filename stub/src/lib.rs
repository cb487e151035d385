//! The frame codec between the worker and krill-stub.
