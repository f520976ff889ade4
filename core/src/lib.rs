//! Tastebud core: models, rewards, loading and devices. No filesystem, no threads, no
//! blocking readback and no printing, so the same code runs natively and on wasm32.

pub mod bert_tokenizer;
pub mod device;
pub mod error;
pub mod files;
pub mod gguf;
pub mod manifest;
pub mod models;
pub mod noise;
pub mod personal;
pub mod pipeline;
pub mod preprocess;
pub mod profile;
pub mod quant;
pub mod reno;
pub mod resample;
pub mod rewards;
pub mod scheduler;
pub mod search;
pub mod shapes;
pub mod tokenizer;
pub mod torch_pickle;
pub mod weights;

pub use burn;
pub use device::{ComputeDevice, DeviceChoice, Precision};
pub use error::{Error, Result};
pub use files::ModelFiles;
pub use image;

use burn::tensor::Tensor;

/// Reads a float tensor back to the host as f32 (whatever precision the device computes in),
/// asynchronously (the only way that works in browsers).
pub async fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    let data = tensor.into_data_async().await.map_err(Error::readback)?;
    data.try_cast_as::<f32>()
        .and_then(|d| d.try_into_vec::<f32>())
        .map_err(|e| Error::Readback(format!("{e:?}")))
}
