#![no_main]
// Each binary runs one of the shared targets.
#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;
#[path = "../budget.rs"]
mod budget;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::image(data));
