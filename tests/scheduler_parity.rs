//! The Euler scheduler against diffusers' `EulerDiscreteScheduler`: timesteps, sigmas, the
//! initial noise scale, input scaling and one step, for SD-Turbo's config at 1-4 steps and for
//! v-prediction and linspace spacing.

mod common;

use common::*;
use tastebud_core::Error;
use tastebud_core::scheduler::{EulerScheduler, SchedulerConfig};

#[test]
fn tables_and_step_match_diffusers() {
    let reference = reference_json();
    let cases = reference["schedulers"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for device in devices() {
        for (i, case) in cases.iter().enumerate() {
            let config: SchedulerConfig = serde_json::from_value(case["config"].clone()).unwrap();
            let steps = case["steps"].as_u64().unwrap() as usize;
            let ours = EulerScheduler::new(&config, steps, "scheduler_config.json").unwrap();
            let want_t: Vec<f32> = serde_json::from_value(case["timesteps"].clone()).unwrap();
            let want_s: Vec<f32> = serde_json::from_value(case["sigmas"].clone()).unwrap();
            assert_eq!(ours.timesteps, want_t, "case {i}: timesteps");
            assert_close(&format!("case {i}: sigmas"), &ours.sigmas, &want_s, 1e-6);
            let want_init = case["init_noise_sigma"].as_f64().unwrap() as f32;
            assert!(
                (ours.init_noise_sigma - want_init).abs() <= 1e-6 * want_init,
                "case {i}: init_noise_sigma"
            );

            let t = |name: &str| {
                let (v, s) = reference_tensor(&format!("scheduler{i}.{name}"));
                tensor(v, [s[0], s[1], s[2], s[3]], &device.device)
            };
            let on = device_name(&device);
            let scaled = read(ours.scale_model_input(t("sample"), 0));
            assert_close(
                &format!("case {i} on {on}: scaled input"),
                &scaled,
                &reference_tensor(&format!("scheduler{i}.scaled")).0,
                1e-5,
            );
            let prev = read(ours.step(t("model_output"), 0, t("sample")));
            assert_close(
                &format!("case {i} on {on}: step"),
                &prev,
                &reference_tensor(&format!("scheduler{i}.prev_sample")).0,
                1e-5,
            );
        }
    }
}

#[test]
fn sd_turbo_one_step_constants() {
    let config: SchedulerConfig = serde_json::from_str(
        r#"{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "timestep_spacing": "trailing"}"#,
    )
    .unwrap();
    let one = EulerScheduler::new(&config, 1, "scheduler_config.json").unwrap();
    assert_eq!(one.timesteps, vec![999.0]);
    assert_eq!(one.sigmas, vec![14.614_647, 0.0]);
    assert_eq!(one.init_noise_sigma, 14.614_647);
}

#[test]
fn unsupported_configs_and_steps_are_named() {
    let parse = |json: &str| serde_json::from_str::<SchedulerConfig>(json).unwrap();
    for (json, field) in [
        (r#"{"timestep_spacing": "leading"}"#, "timestep_spacing"),
        (r#"{"prediction_type": "sample"}"#, "prediction_type"),
        (r#"{"beta_schedule": "squaredcos_cap_v2"}"#, "beta_schedule"),
        (r#"{"use_karras_sigmas": true}"#, "use_karras_sigmas"),
    ] {
        let err =
            EulerScheduler::new(&parse(json), 1, "sd/scheduler/scheduler_config.json").unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err}");
        assert!(
            err.to_string().contains(field) && err.to_string().contains("sd/scheduler"),
            "{err}"
        );
    }
    let err = EulerScheduler::new(&parse("{}"), 0, "x").unwrap_err();
    assert!(
        err.to_string().contains("steps") && err.to_string().contains("0 is not in 1..=1000"),
        "{err}"
    );
}
