//! Model architectures, one folder (or file) per model family.

pub mod clip;
pub mod taesd;
