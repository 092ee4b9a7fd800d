//! One datagram of a sock_diag dump answer, as the kernel (or anything that can
//! write to sockq's netlink socket) might send it, through the decoding loop
//! `DiagSocket::dump` runs on every datagram and the listener conversion applied
//! to every answer.
//!
//! Any bytes must give `Ok` or `Err`, never a panic. Input: the datagram itself;
//! the answer is taken as one to dump request number 1 (the seeds use 1).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sockq::inventory::sock_diag::{decode_datagram, listener_from_response};

fuzz_target!(|datagram: &[u8]| {
    let mut responses = 0usize;
    let _ = decode_datagram(datagram, 1, "fuzzed dump", &mut |response| {
        responses += 1;
        let listener = listener_from_response(response);
        // What the inventory does with it next: compare and format.
        let _ = format!("{listener:?}");
    });
    // A datagram holds at most one message per 16 bytes (the netlink header).
    assert!(responses <= datagram.len() / 16);
});
