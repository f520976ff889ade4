//! Picking where tensors live: a wgpu adapter (Vulkan/Metal/DX12 natively, WebGPU in the
//! browser) or burn's flex CPU backend. `auto` prefers a hardware GPU and says what it picked.

use std::str::FromStr;
use std::sync::Mutex;

#[cfg(not(target_family = "wasm"))]
use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::wgpu::wgpu;
use burn::tensor::{DType, Device, FloatDType};
use serde::Serialize;

use crate::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU backend.
    Auto,
    /// Any wgpu adapter, software rasterizers (lavapipe, SwiftShader) included.
    Gpu,
    /// burn's flex CPU backend.
    Cpu,
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(Error::BadArgument {
                argument: "--device".into(),
                reason: format!("`{other}` is not one of auto, gpu, cpu"),
            }),
        }
    }
}

/// The float precision weights and activations are stored and computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// Half the memory of f32 for weights and activations; normalisation statistics are still
    /// accumulated in f32 (burn widens them). Needs `shader-f16` on wgpu.
    F16,
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(Error::argument(
                "--dtype",
                format!("`{other}` is not one of f32, f16"),
            )),
        }
    }
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
        }
    }
}

/// A wgpu adapter as the system reports it.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterSummary {
    pub name: String,
    /// Vulkan, Metal, Dx12, Gl or BrowserWebGpu.
    pub api: String,
    /// DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu (a software rasterizer) or Other.
    pub kind: String,
    pub driver: String,
}

impl AdapterSummary {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            api: format!("{:?}", info.backend),
            kind: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
        }
    }

    /// A real GPU, not a CPU rasterizer (lavapipe, llvmpipe, or Chromium's SwiftShader, which
    /// browsers report as a CPU adapter too).
    pub fn is_hardware(&self) -> bool {
        self.kind != "Cpu"
    }
}

/// The device tensors run on, and a description of it for people.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    pub device: Device,
    /// `wgpu` or `flex`.
    pub backend: &'static str,
    /// The adapter, for wgpu.
    pub adapter: Option<AdapterSummary>,
    /// Why this device was picked, when `auto` had to choose.
    pub reason: Option<String>,
    /// The largest tensor the device can hold in one buffer, in bytes (wgpu: the smaller of
    /// the storage-binding and buffer limits it was started with); `None` on the CPU.
    pub max_buffer_bytes: Option<u64>,
}

impl ComputeDevice {
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            backend: "flex",
            adapter: None,
            reason: None,
            max_buffer_bytes: None,
        }
    }

    /// The precision tensors on this device are created in.
    pub fn precision(&self) -> Precision {
        match self.device.settings().float_dtype {
            FloatDType::F16 => Precision::F16,
            _ => Precision::F32,
        }
    }

    /// Makes every float tensor on this device (weights loaded from now on, inputs, results)
    /// `precision`. burn fixes a device's precision at its first tensor, so call this before
    /// loading anything; asking again for the precision it already has is fine.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if self.precision() == precision {
            return Ok(());
        }
        let dtype = precision.dtype();
        if !self.device.supports_dtype(DType::from(dtype)) {
            return Err(Error::Unsupported(format!(
                "{} on {}: the device cannot compute in it (WebGPU needs the \
                 `shader-f16` feature); use f32",
                precision.name(),
                self.describe()
            )));
        }
        match self.device.configure(dtype) {
            Ok(()) => Ok(()),
            // Another thread configured it the same way first.
            Err(_) if self.precision() == precision => Ok(()),
            Err(e) => Err(device_error(self.backend, &e.to_string())),
        }
    }

    /// One line for logs: `wgpu: llvmpipe (LLVM 15) [Vulkan, Cpu]` or `flex (CPU)`, with
    /// `, f16` when computing in half precision.
    pub fn describe(&self) -> String {
        let mut line = match &self.adapter {
            Some(a) if a.name.is_empty() => {
                format!("wgpu: unnamed adapter [{}, {}]", a.api, a.kind)
            }
            Some(a) => format!("wgpu: {} [{}, {}]", a.name, a.api, a.kind),
            None => "flex (CPU)".to_string(),
        };
        if self.precision() == Precision::F16 {
            line.push_str(" f16");
        }
        if let Some(reason) = &self.reason {
            line.push_str(&format!(" ({reason})"));
        }
        line
    }
}

/// burn registers one wgpu runtime per process and refuses a second: keep the first.
static WGPU: Mutex<Option<(Device, AdapterSummary, u64)>> = Mutex::new(None);

/// The device's largest single buffer that kernels can bind.
fn buffer_limit(device: &wgpu::Device) -> u64 {
    let l = device.limits();
    l.max_storage_buffer_binding_size.min(l.max_buffer_size)
}

/// The graphics APIs Tastebud looks for adapters on: Vulkan, Metal, DX12 natively and the
/// browser's WebGPU. wgpu's GL backend is left out: probing it starts EGL, which on a machine
/// without a display prints "error: XDG_RUNTIME_DIR is invalid or not set" to stderr before
/// every run, and burn's compute kernels are not built for it.
const BACKENDS: wgpu::Backends = wgpu::Backends::PRIMARY;

/// Adapters on [`BACKENDS`], hardware GPUs first.
async fn adapter_infos() -> Vec<wgpu::AdapterInfo> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: BACKENDS,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let mut infos: Vec<wgpu::AdapterInfo> = instance
        .enumerate_adapters(BACKENDS)
        .await
        .iter()
        .map(|a| a.get_info())
        .collect();
    infos.sort_by_key(|i| i.device_type == wgpu::DeviceType::Cpu);
    infos
}

/// The API of the best adapter found, so burn starts its device there instead of probing
/// every API itself (GL included).
#[cfg(not(target_family = "wasm"))]
fn graphics_api(infos: &[wgpu::AdapterInfo]) -> Option<WgpuBackend> {
    match infos.first()?.backend {
        wgpu::Backend::Vulkan => Some(WgpuBackend::Vulkan),
        wgpu::Backend::Metal => Some(WgpuBackend::Metal),
        wgpu::Backend::Dx12 => Some(WgpuBackend::Dx12),
        _ => None,
    }
}

async fn wgpu_device() -> Result<(Device, AdapterSummary, u64)> {
    let poisoned = || device_error("gpu", "device lock poisoned");
    // Natively, tests start devices from several threads: start it under the lock.
    #[cfg(not(target_family = "wasm"))]
    {
        if let Some(cached) = WGPU.lock().map_err(|_| poisoned())?.clone() {
            return Ok(cached);
        }
        let api = graphics_api(&adapter_infos().await);
        let mut slot = WGPU.lock().map_err(|_| poisoned())?;
        if let Some(cached) = slot.clone() {
            return Ok(cached);
        }
        let mut options = Device::wgpu_options();
        if let Some(api) = api {
            options = options.graphics_api(api);
        }
        let (device, setup) = options
            .init_with_setup()
            .map_err(|e| device_error("gpu", &e.to_string()))?;
        let summary = AdapterSummary::from_info(&setup.adapter.get_info());
        let limit = buffer_limit(&setup.device);
        Ok(slot.insert((device, summary, limit)).clone())
    }
    // Browsers only start adapters asynchronously; wasm has one thread.
    #[cfg(target_family = "wasm")]
    {
        if let Some(cached) = WGPU.lock().map_err(|_| poisoned())?.clone() {
            return Ok(cached);
        }
        let (device, setup) = Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| device_error("gpu", &e.to_string()))?;
        let summary = AdapterSummary::from_info(&setup.adapter.get_info());
        let limit = buffer_limit(&setup.device);
        let mut slot = WGPU.lock().map_err(|_| poisoned())?;
        Ok(slot.get_or_insert((device, summary, limit)).clone())
    }
}

fn device_error(requested: &str, reason: &str) -> Error {
    Error::Device {
        requested: requested.to_string(),
        reason: reason.to_string(),
    }
}

/// Opens the device the user asked for.
pub async fn open(choice: DeviceChoice) -> Result<ComputeDevice> {
    match choice {
        DeviceChoice::Cpu => Ok(ComputeDevice::cpu()),
        DeviceChoice::Gpu => {
            let (device, adapter, limit) = wgpu_device().await?;
            Ok(ComputeDevice {
                device,
                backend: "wgpu",
                adapter: Some(adapter),
                reason: None,
                max_buffer_bytes: Some(limit),
            })
        }
        DeviceChoice::Auto => {
            // A software rasterizer is far slower than the CPU backend on the same cores.
            let hardware = list_adapters().await.into_iter().any(|a| a.is_hardware());
            if !hardware {
                let mut cpu = ComputeDevice::cpu();
                cpu.reason = Some("auto: no hardware GPU adapter found".into());
                return Ok(cpu);
            }
            match wgpu_device().await {
                Ok((device, adapter, limit)) if adapter.is_hardware() => Ok(ComputeDevice {
                    device,
                    backend: "wgpu",
                    reason: Some("auto: hardware GPU".into()),
                    adapter: Some(adapter),
                    max_buffer_bytes: Some(limit),
                }),
                Ok((_, adapter, _)) => {
                    let mut cpu = ComputeDevice::cpu();
                    cpu.reason = Some(format!(
                        "auto: wgpu chose software adapter {}",
                        adapter.name
                    ));
                    Ok(cpu)
                }
                Err(e) => {
                    let mut cpu = ComputeDevice::cpu();
                    cpu.reason = Some(format!("auto: GPU failed to start ({e})"));
                    Ok(cpu)
                }
            }
        }
    }
}

/// Every wgpu adapter the system offers on Vulkan, Metal, DX12 or WebGPU, hardware GPUs first
/// (none is started).
pub async fn list_adapters() -> Vec<AdapterSummary> {
    adapter_infos()
        .await
        .iter()
        .map(AdapterSummary::from_info)
        .collect()
}
