//! Replays the committed fuzz corpus and a set of malformed inputs through every
//! decoder on the stable toolchain, so that a crash the fuzzer once found stays fixed
//! even where cargo-fuzz cannot run.

use std::path::Path;

use bytes::Bytes;
use ferry_proto::frame::{decode_framed, Frame};
use ferry_proto::token::{peek_claims, Expect, KeySet, SigningKey, TokenKind, AUDIENCE_FERRY};
use ferry_proto::{Hello, Reply, StreamHeader, TraceReport};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    // Malformed variants of each seed: every truncation and a few bit flips.
    let seeds = inputs.clone();
    for seed in seeds {
        for cut in 0..seed.len() {
            inputs.push(seed[..cut].to_vec());
        }
        for i in 0..seed.len() {
            let mut flipped = seed.clone();
            flipped[i] ^= 0xa5;
            inputs.push(flipped);
        }
    }
    inputs
}

fn replay<F: Frame + PartialEq + std::fmt::Debug>(target: &str) -> usize {
    let mut ok = 0;
    for input in corpus(target) {
        if let Ok(frame) = decode_framed::<F>(&mut Bytes::from(input.clone())) {
            let again = decode_framed::<F>(&mut Bytes::from(frame.to_framed_bytes()));
            assert_eq!(again.as_ref().ok(), Some(&frame), "{target}: {input:?}");
            ok += 1;
        }
        let _ = F::decode(&mut Bytes::from(input));
    }
    ok
}

#[test]
fn stream_header_corpus_replays_without_panics() {
    assert!(
        replay::<StreamHeader>("stream_header") > 0,
        "no seed decoded"
    );
}

#[test]
fn hello_corpus_replays_without_panics() {
    assert!(replay::<Hello>("hello") > 0, "no seed decoded");
}

#[test]
fn reply_corpus_replays_without_panics() {
    assert!(replay::<Reply>("reply") > 0, "no seed decoded");
}

#[test]
fn trace_report_corpus_replays_without_panics() {
    assert!(replay::<TraceReport>("trace_report") > 0, "no seed decoded");
}

#[test]
fn token_corpus_never_verifies_against_a_foreign_key() {
    let keys = KeySet::new([SigningKey::generate("k1").unwrap().public_key()]);
    let expect = Expect {
        kind: TokenKind::User,
        audience: AUDIENCE_FERRY,
    };
    for input in corpus("token") {
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        let _ = peek_claims(text);
        assert!(keys.verify(text, 1_800_000_000, expect).is_err());
    }
}
