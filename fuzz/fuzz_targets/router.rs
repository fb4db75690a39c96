//! `router::resolve` and `router::metric_index` on `METHOD PATH` text (see `checks::router_input`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chatbus_fuzz::router_input(data));
