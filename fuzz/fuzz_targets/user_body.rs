//! `input::new_user` and `input::display_name` on the same bytes (see `checks::check_user_body`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chatbus_fuzz::check_user_body(data));
