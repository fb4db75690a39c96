//! `input::new_message` on any bytes, then `render::message` and `PollAnswer` on what it accepts
//! (see `checks::check_new_message`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chatbus_fuzz::check_new_message(data));
