//! Fuzz target `index_model`: see `tests/common/fuzz_bodies.rs`.
#![no_main]

#[path = "../../tests/common/fuzz_bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::index_model(data));
