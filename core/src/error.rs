//! One error type for the whole core. Every variant names the file, tensor or argument at
//! fault, so a front end can print it as is.

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the model needs is not in the folder (or was not served).
    #[error("{folder}: missing file {wanted}")]
    MissingFile { folder: String, wanted: String },

    /// A JSON file could not be parsed or lacks a required field.
    #[error("{file}: invalid JSON: {reason}")]
    BadJson { file: String, reason: String },

    /// A weight file is not a readable safetensors file.
    #[error("{file}: not a valid safetensors file: {reason}")]
    CorruptWeights { file: String, reason: String },

    /// A tensor has a dtype the model cannot use.
    #[error("{file}: tensor `{tensor}` has dtype {dtype}; expected F32, F16 or BF16")]
    BadDtype {
        file: String,
        tensor: String,
        dtype: String,
    },

    /// A tensor has the wrong shape for the architecture described by the config.
    #[error("{file}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    BadShape {
        file: String,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// Tensors the architecture needs are absent from the weight file.
    #[error("{file}: missing tensors: {}", list(tensors))]
    MissingTensors { file: String, tensors: Vec<String> },

    /// Tensors in the weight file that the architecture does not use.
    #[error(
        "{file}: tensors not used by the model (wrong model or config?): {}",
        list(tensors)
    )]
    UnusedTensors { file: String, tensors: Vec<String> },

    /// Any other failure while applying a tensor to the model.
    #[error("{file}: tensor `{tensor}`: {reason}")]
    BadTensor {
        file: String,
        tensor: String,
        reason: String,
    },

    /// The tokenizer files are missing pieces or are malformed.
    #[error("tokenizer ({file}): {reason}")]
    Tokenizer { file: String, reason: String },

    /// A prompt the model cannot take.
    #[error("prompt: {0}")]
    BadPrompt(String),

    /// An image the model cannot take.
    #[error("image {name}: {reason}")]
    BadImage { name: String, reason: String },

    /// An argument out of range or of the wrong form.
    #[error("{argument}: {reason}")]
    BadArgument { argument: String, reason: String },

    /// No device of the requested kind could be started.
    #[error("device {requested}: {reason}")]
    Device { requested: String, reason: String },

    /// Reading a result back from the device failed.
    #[error("reading results back from the device failed: {0}")]
    Readback(String),

    /// The device had no memory left for a buffer (or one buffer exceeded what it can hold).
    #[error(
        "the device ran out of memory ({0}). To need less: compute in f16 (where the device \
         supports it; it halves weights and activations), decode with TAESD instead of the \
         full VAE, make the image smaller, score fewer candidates per batch, or turn on \
         gradient checkpointing"
    )]
    OutOfMemory(String),

    /// A shipped model file differs from what its manifest records.
    #[error("{file}: damaged: {reason} (restore it, e.g. `git checkout -- models/`)")]
    Damaged { file: String, reason: String },

    /// A model or option that this build does not implement.
    #[error("not supported: {0}")]
    Unsupported(String),
}

impl Error {
    /// [`Error::BadArgument`] from anything printable.
    pub fn argument(argument: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArgument {
            argument: argument.into(),
            reason: reason.into(),
        }
    }
}

impl Error {
    /// A failed readback, told apart: the device's out-of-memory and buffer-too-big errors
    /// become [`Error::OutOfMemory`], anything else [`Error::Readback`]. cubecl reports an
    /// allocation failure at the next sync point, i.e. here, as text.
    pub fn readback(error: impl std::fmt::Display) -> Self {
        let text = error.to_string();
        const MARKERS: [&str; 3] = [
            "can't allocate buffer",
            "out of device memory",
            "out of memory",
        ];
        // The line that says what failed (the rest is context and a backtrace).
        let cause = text.lines().map(str::trim).find(|l| {
            let l = l.to_lowercase();
            MARKERS.iter().any(|m| l.contains(m))
        });
        match cause {
            Some(cause) => Error::OutOfMemory(cause.to_string()),
            None => Error::Readback(text),
        }
    }
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut out = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
