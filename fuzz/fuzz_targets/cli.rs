//! The command line: input bytes split on NUL into arguments (not necessarily
//! UTF-8) after the program name, through sockq's clap definition and its value
//! parsers (addresses, intervals, ranges). Must give a `Cli` or an error, never a
//! panic; the error is rendered the way sockq would print it.

#![no_main]

use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};

use libfuzzer_sys::fuzz_target;
use sockq::cmd::Cli;

fuzz_target!(|bytes: &[u8]| {
    let args =
        std::iter::once(OsStr::new("sockq")).chain(bytes.split(|&b| b == 0).map(OsStr::from_bytes));
    match <Cli as clap::Parser>::try_parse_from(args) {
        Ok(cli) => drop(format!("{cli:?}")),
        Err(e) => drop(e.render().to_string()),
    }
});
