//! The SD VAE decoder (diffusers `AutoencoderKL`) against diffusers on a tiny random model with
//! the real layout and key names, on flex and wgpu.

mod common;

use common::*;
use tastebud_core::Error;
use tastebud_core::models::vae::AutoencoderKl;

#[test]
fn decoder_matches_diffusers() {
    let (latents, s) = reference_tensor("vae.latents");
    let (want, want_shape) = reference_tensor("vae.image");
    assert_eq!(want_shape, vec![1, 3, 10, 12]);
    for device in devices() {
        let (vae, config) = AutoencoderKl::from_files(model_files("vae"), &device.device).unwrap();
        assert_eq!(config.scaling_factor, 0.18215);
        let image = vae.decode(tensor(
            latents.clone(),
            [s[0], s[1], s[2], s[3]],
            &device.device,
        ));
        assert_eq!(image.dims(), [1, 3, 10, 12]);
        assert_close(
            &format!("vae image on {}", device_name(&device)),
            &read(image),
            &want,
            1e-4,
        );
    }
}

#[test]
fn unsupported_config_is_named() {
    let mut files = model_files("vae");
    let config = String::from_utf8(files.take("config.json").unwrap()).unwrap();
    files.insert(
        "config.json",
        config
            .replace("\"norm_num_groups\": 4", "\"norm_num_groups\": 3")
            .into_bytes(),
    );
    let err = AutoencoderKl::from_files(files, &tastebud_core::ComputeDevice::cpu().device)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("norm_num_groups = 3"),
        "{err}"
    );
}
