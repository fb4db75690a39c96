//! `SessionId::from_str` and its `Display` round trip (see `checks::session_id_input`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chatbus_fuzz::session_id_input(data));
