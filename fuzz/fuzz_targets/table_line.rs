//! Fuzz target `table_line`: see `tests/common/fuzz_bodies.rs`.
#![no_main]

#[path = "../../tests/common/fuzz_bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::table_line(data));
