//! `sockq run --config`: arbitrary bytes as the TOML configuration file
//! (`sockq::cmd::config::from_toml`: the `toml` crate, sockq's own checks of
//! seconds, ranges and listener rules). Whatever parses must print
//! (`Settings::to_toml`, what `--print-config` writes) and read back as the same
//! settings. A panic, or a printed configuration that reads back differently, is a
//! crash; errors are the expected outcome of most inputs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sockq::cmd::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(settings) = config::from_toml(text) else {
        return;
    };
    let printed = settings.to_toml();
    match config::from_toml(&printed) {
        Ok(again) => assert_eq!(again, settings, "printed as:\n{printed}"),
        Err(e) => panic!("the printed configuration does not read back: {e}\n{printed}"),
    }
});
