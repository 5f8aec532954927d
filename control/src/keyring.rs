//! Token signing keys, kept in the store so that every control-plane replica signs and
//! verifies with the same set.
//!
//! The newest unretired key signs. Rotation adds a key and retires the others; a
//! retired key stays published (at `/api/v1/keys`, and so in every relay's cache) until
//! the last token it signed has expired, so rotating never logs anyone out.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_proto::token::{KeySet, PublicKey, SigningKey};

use crate::store::{KeyRow, Store, StoreError};

/// Why the keys could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key `{kid}` in the store is unreadable: {reason}")]
    BadKey { kid: String, reason: String },
    #[error(transparent)]
    Key(#[from] ferry_proto::token::KeyError),
    #[error("the store holds no usable signing key")]
    NoSigner,
}

/// The keys in force: one signer and every key a valid token may carry.
pub struct Keyring {
    signer: SigningKey,
    published: KeySet,
}

/// A fresh, unguessable key id (two replicas may create keys in the same second).
fn new_kid(now: i64) -> String {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("k{now}-{suffix}")
}

/// Generates a key and stores it (unretired).
pub async fn create_key(store: &Store, now: i64) -> Result<String, KeyringError> {
    let key = SigningKey::generate(new_kid(now))?;
    import_key(store, &key, now).await?;
    Ok(key.kid().to_string())
}

/// Stores an existing key (e.g. the file-based key of an older data directory).
pub async fn import_key(store: &Store, key: &SigningKey, now: i64) -> Result<(), KeyringError> {
    store
        .insert_key(&KeyRow {
            kid: key.kid().to_string(),
            pkcs8_b64: B64.encode(key.pkcs8()),
            created_at: now,
            retired_at: None,
            dropped_at: None,
        })
        .await?;
    Ok(())
}

/// Makes a new signing key and retires the others; returns the new key id. With
/// `drop_old` the others are dropped too: every token they signed stops verifying
/// (for a key that may have leaked).
pub async fn rotate(store: &Store, now: i64, drop_old: bool) -> Result<String, KeyringError> {
    let kid = create_key(store, now).await?;
    if drop_old {
        store.drop_keys_except(&kid, now).await?;
    } else {
        store.retire_keys_except(&kid, now).await?;
    }
    Ok(kid)
}

impl Keyring {
    /// Reads the keys from the store.
    pub async fn load(store: &Store, now: i64) -> Result<Keyring, KeyringError> {
        let rows = store.keys().await?;
        let mut signer_row = None;
        let mut published = Vec::new();
        for row in rows.iter().filter(|r| r.dropped_at.is_none()) {
            let keep = match row.retired_at {
                None => true,
                // A retired key matters while a token it signed may still be presented.
                Some(_) => store
                    .last_expiry_signed_by(&row.kid)
                    .await?
                    .is_some_and(|last| last > now),
            };
            if !keep {
                continue;
            }
            let key = decode(row)?;
            published.push(key.public_key());
            if row.retired_at.is_none() {
                // Rows come oldest first: the last unretired one is the newest.
                signer_row = Some(row);
            }
        }
        let signer = decode(signer_row.ok_or(KeyringError::NoSigner)?)?;
        Ok(Keyring {
            signer,
            published: KeySet::new(published),
        })
    }

    pub fn signer(&self) -> &SigningKey {
        &self.signer
    }

    pub fn published(&self) -> &KeySet {
        &self.published
    }

    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.published.to_public_keys()
    }
}

fn decode(row: &KeyRow) -> Result<SigningKey, KeyringError> {
    let bad = |reason: String| KeyringError::BadKey {
        kid: row.kid.clone(),
        reason,
    };
    let pkcs8 = B64.decode(&row.pkcs8_b64).map_err(|e| bad(e.to_string()))?;
    SigningKey::from_pkcs8(row.kid.clone(), &pkcs8).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenRow;

    fn token(jti: &str, kid: &str, exp: i64) -> TokenRow {
        TokenRow {
            jti: jti.into(),
            kind: "user".into(),
            subject: "alice".into(),
            name: "t".into(),
            kid: kid.into(),
            created_at: 0,
            expires_at: exp,
            revoked_at: None,
        }
    }

    #[tokio::test]
    async fn a_retired_key_is_published_until_its_last_token_expires() {
        let dir = crate::testing::scratch_dir("keyring");
        let store = crate::testing::sqlite_store(&dir).await.unwrap();
        let old = create_key(&store, 100).await.unwrap();
        store.record_token(&token("t1", &old, 500)).await.unwrap();
        let new = rotate(&store, 200, false).await.unwrap();

        let ring = Keyring::load(&store, 300).await.unwrap();
        assert_eq!(ring.signer().kid(), new);
        let kids: Vec<String> = ring.public_keys().into_iter().map(|k| k.kid).collect();
        assert!(kids.contains(&old) && kids.contains(&new), "{kids:?}");

        // Once the last token the old key signed has expired, it is dropped.
        let ring = Keyring::load(&store, 501).await.unwrap();
        let kids: Vec<String> = ring.public_keys().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![new.clone()]);

        // A retired key that never signed anything is not published at all.
        let newest = rotate(&store, 600, false).await.unwrap();
        let ring = Keyring::load(&store, 601).await.unwrap();
        let kids: Vec<String> = ring.public_keys().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![newest.clone()]);

        // Dropping: the old key goes at once, though its token still lives.
        store
            .record_token(&token("t2", &newest, 5000))
            .await
            .unwrap();
        let last = rotate(&store, 700, true).await.unwrap();
        let ring = Keyring::load(&store, 701).await.unwrap();
        let kids: Vec<String> = ring.public_keys().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![last]);
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
