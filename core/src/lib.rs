//! Tastebud core: models, rewards, loading and devices. No filesystem, no threads, no
//! blocking readback and no printing, so the same code runs natively and on wasm32.

pub mod bert_tokenizer;
pub mod device;
pub mod error;
pub mod files;
pub mod models;
pub mod noise;
pub mod pipeline;
pub mod preprocess;
pub mod reno;
pub mod rewards;
pub mod scheduler;
pub mod search;
pub mod tokenizer;
pub mod torch_pickle;
pub mod weights;

pub use burn;
pub use device::{ComputeDevice, DeviceChoice};
pub use error::{Error, Result};
pub use files::ModelFiles;

use burn::tensor::Tensor;

/// Reads a float tensor back to the host, asynchronously (the only way that works in browsers).
pub async fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    let data = tensor
        .into_data_async()
        .await
        .map_err(|e| Error::Readback(format!("{e:?}")))?;
    data.try_into_vec::<f32>()
        .map_err(|e| Error::Readback(format!("{e:?}")))
}
