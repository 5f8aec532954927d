//! Signed tokens: who may do what, verifiable offline.
//!
//! A token is three base64url (no padding) parts joined by dots, JWT-shaped so that
//! standard tools can read it: `header.claims.signature`, where the header is
//! `{"alg":"EdDSA","typ":"JWT","kid":KEY_ID}` and the signature is Ed25519 over the
//! ASCII bytes `header.claims`. Only the control plane holds a signing key; relays hold
//! the public [`KeySet`] and verify with no network call. Time is passed in (seconds
//! since the Unix epoch) so that this module stays free of clocks.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// Longest token we will look at; real ones are ~300 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Audience of tokens used between ferry's own components and the CLI.
pub const AUDIENCE_FERRY: &str = "ferry";

/// What a token lets its bearer be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A developer: may reach the workspaces they own.
    User,
    /// A workspace agent: may serve exactly one workspace (its subject).
    Agent,
    /// A relay: may enroll, report the directory, fetch keys.
    Relay,
    /// A browser app session bound to one subdomain (its audience).
    App,
    /// An operator: may mint tokens and manage everything.
    Admin,
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenKind::User => "user",
            TokenKind::Agent => "agent",
            TokenKind::Relay => "relay",
            TokenKind::App => "app",
            TokenKind::Admin => "admin",
        })
    }
}

/// The signed body of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub kind: TokenKind,
    /// User name (user, admin), workspace label (agent), relay name (relay).
    pub sub: String,
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Unique id, so that one token can be revoked.
    pub jti: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token was signed by unknown key `{kid}` (keys may have rotated; log in again)")]
    UnknownKey { kid: String },
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired {ago_secs}s ago")]
    Expired { ago_secs: u64 },
    #[error("token is issued in the future (check the clocks)")]
    NotYetValid,
    #[error("a {got} token cannot be used here; a {expected} token is needed")]
    WrongKind { expected: TokenKind, got: TokenKind },
    #[error("token is for `{got}`, not `{expected}`")]
    WrongAudience { expected: String, got: String },
}

impl TokenError {
    /// The wire error code to answer with.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            TokenError::Expired { .. } => crate::ErrorCode::TokenExpired,
            TokenError::WrongKind { .. } | TokenError::WrongAudience { .. } => {
                crate::ErrorCode::WrongTokenKind
            }
            _ => crate::ErrorCode::Unauthorized,
        }
    }
}

/// Tolerated clock difference between the control plane and a verifier.
const CLOCK_SKEW_SECS: u64 = 60;

/// A private Ed25519 key with its id. Only the control plane has one.
pub struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

/// Why a signing key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[error("signing key: {0}")]
pub struct KeyError(&'static str);

impl SigningKey {
    /// Generates a fresh key.
    pub fn generate(kid: impl Into<String>) -> Result<Self, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError("rng failed"))?;
        Self::from_pkcs8(kid, doc.as_ref())
    }

    /// Loads a key from its PKCS#8 document.
    pub fn from_pkcs8(kid: impl Into<String>, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError("bad PKCS#8"))?;
        Ok(SigningKey {
            kid: kid.into(),
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The PKCS#8 document, for storing the key.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            kid: self.kid.clone(),
            key: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// Signs `claims` into a token string.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: self.kid.clone(),
        };
        // Serializing these two plain structs cannot fail.
        let header = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
        let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{body}");
        let sig = self.pair.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(sig.as_ref()))
    }
}

/// Builds claims with a fresh random id.
pub fn new_claims(kind: TokenKind, sub: &str, aud: &str, now: u64, ttl_secs: u64) -> Claims {
    let mut id = [0u8; 12];
    // SystemRandom only fails if the OS has no entropy source; an all-zero id then
    // merely makes revocation by id coarser, never verification weaker.
    let _ = ring::rand::SystemRandom::new().fill(&mut id);
    Claims {
        kind,
        sub: sub.to_string(),
        aud: aud.to_string(),
        iat: now,
        exp: now.saturating_add(ttl_secs),
        jti: id.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// A public verification key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub kid: String,
    /// Raw 32-byte Ed25519 public key, base64url on the wire.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// The public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Vec<u8>>,
}

/// What a verifier requires of a token.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub kind: TokenKind,
    pub audience: &'a str,
}

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        KeySet {
            keys: keys.into_iter().map(|k| (k.kid, k.key)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn to_public_keys(&self) -> Vec<PublicKey> {
        let mut keys: Vec<PublicKey> = self
            .keys
            .iter()
            .map(|(kid, key)| PublicKey {
                kid: kid.clone(),
                key: key.clone(),
            })
            .collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        keys
    }

    /// Verifies signature, expiry, kind and audience; returns the claims.
    pub fn verify(&self, token: &str, now: u64, expect: Expect<'_>) -> Result<Claims, TokenError> {
        let claims = self.verify_signature(token, now)?;
        if claims.kind != expect.kind {
            return Err(TokenError::WrongKind {
                expected: expect.kind,
                got: claims.kind,
            });
        }
        if claims.aud != expect.audience {
            return Err(TokenError::WrongAudience {
                expected: expect.audience.to_string(),
                got: claims.aud,
            });
        }
        Ok(claims)
    }

    /// Verifies signature and time only; the caller checks kind and audience.
    pub fn verify_signature(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.splitn(3, '.');
        let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(TokenError::Malformed("bad header"))?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Malformed("unsupported algorithm"));
        }
        let key = self
            .keys
            .get(&header.kid)
            .ok_or_else(|| TokenError::UnknownKey {
                kid: header.kid.chars().take(64).collect(),
            })?;
        let sig = B64
            .decode(s)
            .map_err(|_| TokenError::Malformed("bad signature encoding"))?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        signature::UnparsedPublicKey::new(&signature::ED25519, key)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64
            .decode(c)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(TokenError::Malformed("bad claims"))?;
        if claims.exp <= now {
            return Err(TokenError::Expired {
                ago_secs: now - claims.exp,
            });
        }
        if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Reads the claims without verifying them: for showing a user what a token says
/// (e.g. their own user name), never for deciding access.
pub fn peek_claims(token: &str) -> Option<Claims> {
    let c = token.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(c).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::generate("k1").unwrap()
    }

    fn user() -> Expect<'static> {
        Expect {
            kind: TokenKind::User,
            audience: AUDIENCE_FERRY,
        }
    }

    #[test]
    fn a_signed_token_verifies_with_the_public_key_only() {
        let k = key();
        let claims = new_claims(TokenKind::User, "alice", AUDIENCE_FERRY, NOW, 60);
        let token = k.sign(&claims);
        let set = KeySet::new([k.public_key()]);
        assert_eq!(set.verify(&token, NOW + 1, user()).unwrap(), claims);
        assert_eq!(peek_claims(&token).unwrap().sub, "alice");
    }

    #[test]
    fn refuses_expired_wrong_kind_wrong_audience_and_foreign_keys() {
        let k = key();
        let set = KeySet::new([k.public_key()]);
        let t = k.sign(&new_claims(TokenKind::User, "a", AUDIENCE_FERRY, NOW, 60));
        assert!(matches!(
            set.verify(&t, NOW + 61, user()),
            Err(TokenError::Expired { ago_secs: 1 })
        ));
        let agent = k.sign(&new_claims(
            TokenKind::Agent,
            "w--a",
            AUDIENCE_FERRY,
            NOW,
            60,
        ));
        assert!(matches!(
            set.verify(&agent, NOW, user()),
            Err(TokenError::WrongKind { .. })
        ));
        let app = k.sign(&new_claims(TokenKind::User, "a", "elsewhere", NOW, 60));
        assert!(matches!(
            set.verify(&app, NOW, user()),
            Err(TokenError::WrongAudience { .. })
        ));
        let other = SigningKey::generate("k1").unwrap();
        let forged = other.sign(&new_claims(TokenKind::User, "a", AUDIENCE_FERRY, NOW, 60));
        assert_eq!(
            set.verify(&forged, NOW, user()),
            Err(TokenError::BadSignature)
        );
        let unknown = SigningKey::generate("k2").unwrap();
        let t2 = unknown.sign(&new_claims(TokenKind::User, "a", AUDIENCE_FERRY, NOW, 60));
        assert!(matches!(
            set.verify(&t2, NOW, user()),
            Err(TokenError::UnknownKey { .. })
        ));
    }

    #[test]
    fn a_tampered_claim_breaks_the_signature() {
        let k = key();
        let set = KeySet::new([k.public_key()]);
        let t = k.sign(&new_claims(
            TokenKind::User,
            "alice",
            AUDIENCE_FERRY,
            NOW,
            60,
        ));
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = new_claims(TokenKind::User, "bob", AUDIENCE_FERRY, NOW, 60);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&forged_claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            set.verify(&forged, NOW, user()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let set = KeySet::new([key().public_key()]);
        for junk in ["", ".", "..", "a.b.c", "eyJ9.eyJ9.", &"x".repeat(5000)] {
            assert!(set.verify(junk, NOW, user()).is_err());
        }
    }
}
