//! `input::cutoff` on `unix[/nano]` text, against Go's `time.Unix` in `i128` (see `checks::cutoff_input`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chatbus_fuzz::cutoff_input(&String::from_utf8_lossy(data)));
