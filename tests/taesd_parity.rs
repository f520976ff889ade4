//! TAESD (diffusers `AutoencoderTiny`) decoding against diffusers on a tiny random model with
//! the real block layout and key names, on flex and wgpu.

mod common;

use common::*;
use tastebud_core::Error;
use tastebud_core::models::taesd::TinyAutoencoder;

#[test]
fn decoder_matches_diffusers() {
    let (latents, s) = reference_tensor("taesd.latents");
    let (want, want_shape) = reference_tensor("taesd.image");
    assert_eq!(want_shape, vec![1, 3, 48, 40]);
    for device in devices() {
        let (taesd, config) =
            TinyAutoencoder::from_files(model_files("taesd"), &device.device).unwrap();
        assert_eq!(config.scaling_factor, 1.0);
        let image = taesd.decode(tensor(
            latents.clone(),
            [s[0], s[1], s[2], s[3]],
            &device.device,
        ));
        assert_eq!(image.dims(), [1, 3, 48, 40]);
        assert_close(
            &format!("taesd image on {}", device_name(&device)),
            &read(image),
            &want,
            1e-4,
        );
    }
}

#[test]
fn unsupported_config_is_named() {
    let mut files = model_files("taesd");
    let config = String::from_utf8(files.take("config.json").unwrap()).unwrap();
    files.insert(
        "config.json",
        config.replace("\"relu\"", "\"silu\"").into_bytes(),
    );
    let err = TinyAutoencoder::from_files(files, &tastebud_core::ComputeDevice::cpu().device)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("act_fn = silu"),
        "{err}"
    );
}
