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
