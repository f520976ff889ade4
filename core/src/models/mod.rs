//! Model architectures, one folder per model family.

pub mod clip;
