#![no_main]
use ferry_proto::token::{peek_claims, Expect, KeySet, SigningKey, TokenKind, AUDIENCE_FERRY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = peek_claims(text);
    let keys = KeySet::new([SigningKey::generate("fuzz").unwrap().public_key()]);
    let expect = Expect { kind: TokenKind::User, audience: AUDIENCE_FERRY };
    assert!(keys.verify(text, 1_800_000_000, expect).is_err());
});
