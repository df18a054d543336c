//! Any bytes as the start of a connection: the ClientHello reassembler and
//! parser never panic, and the answer does not depend on how TCP cut the
//! bytes. The first input byte picks the cut spacing (1..=64 bytes).
//!
//! The parser file is included by path (it needs only `std`), so the fuzz
//! build does not compile the gateway's dependency tree.
#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../src/detect/client_hello.rs"]
mod client_hello;

use client_hello::parse_in_pieces;

/// `isthmus_gateway::detect::DEFAULT_MAX_HELLO`.
const MAX_HELLO: usize = 16 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&spacing, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(spacing % 64) + 1;
    let cuts: Vec<usize> = (step..bytes.len()).step_by(step).collect();
    for max in [MAX_HELLO, 512] {
        let whole = parse_in_pieces(bytes, &[], max);
        let pieces = parse_in_pieces(bytes, &cuts, max);
        assert_eq!(whole, pieces, "cut every {step} bytes, limit {max}");
        if let Ok(Some(hello)) = &whole {
            if let Some(sni) = &hello.sni {
                assert!(!sni.is_empty() && sni.len() <= 255);
                assert!(
                    sni.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"-._".contains(&b))
                );
            }
        }
    }
});
