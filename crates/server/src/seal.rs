//! Secrets at rest: run secrets are sealed with XChaCha20-Poly1305 under a
//! key kept in `<data>/secret.key` (0600), so the database never holds them
//! in clear. A run's sealed secrets are dropped when it ends.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::ServerError;

/// A 32-byte key for `purpose` (`seal`, `jwt`) from the secret key every
/// replica is given (`--secret-key-file`): one secret to distribute, a
/// separate key for each use.
pub fn derive_key(secret: &[u8], purpose: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"slipway key\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(secret);
    h.finalize().into()
}

pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed secrets are malformed or were sealed under another key")]
    Open,
    #[error("sealing secrets: {0}")]
    Seal(String),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { context, source }
}

impl Sealer {
    pub fn open(path: &Path) -> Result<Sealer, ServerError> {
        let key = match std::fs::read(path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) => {
                return Err(ServerError::Io {
                    context: format!("{} must hold exactly 32 bytes", path.display()),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                getrandom::fill(&mut k).map_err(|e| ServerError::Io {
                    context: "generating the secret key".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io(format!("creating {}", tmp.display())))?;
                f.write_all(&k)
                    .and_then(|()| f.sync_all())
                    .map_err(io(format!("writing {}", tmp.display())))?;
                std::fs::rename(&tmp, path)
                    .map_err(io(format!("renaming to {}", path.display())))?;
                k.to_vec()
            }
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| ServerError::Io {
            context: "loading the secret key".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
        Ok(Sealer { cipher })
    }

    /// A sealer with `key` (derived from the secret key every replica is
    /// given: see [`derive_key`]).
    pub fn from_key(key: [u8; 32]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// base64(nonce ‖ ciphertext) of the JSON map, bound to `owner`
    /// (associated data): the sealed text opens only for the same owner,
    /// so it cannot be moved to another row (another pool's credential,
    /// another run).
    pub fn seal_for(
        &self,
        secrets: &BTreeMap<String, String>,
        owner: &[u8],
    ) -> Result<String, SealError> {
        use chacha20poly1305::aead::Payload;
        let plain = serde_json::to_vec(secrets).map_err(|e| SealError::Seal(e.to_string()))?;
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| SealError::Seal(e.to_string()))?;
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: owner,
                },
            )
            .map_err(|e| SealError::Seal(e.to_string()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Open what was sealed with no owner (run secrets stored before runs
    /// were bound to their id).
    pub fn open_sealed(&self, sealed: &str) -> Result<BTreeMap<String, String>, SealError> {
        self.open_for(sealed, b"")
    }

    pub fn open_for(
        &self,
        sealed: &str,
        owner: &[u8],
    ) -> Result<BTreeMap<String, String>, SealError> {
        use chacha20poly1305::aead::Payload;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SealError::Open)?;
        if raw.len() < 24 {
            return Err(SealError::Open);
        }
        let (nonce, ct) = raw.split_at(24);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: owner,
                },
            )
            .map_err(|_| SealError::Open)?;
        serde_json::from_slice(&plain).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_no_clear_text() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::open(&dir.path().join("k")).unwrap();
        let mut m = BTreeMap::new();
        m.insert("npm".to_owned(), "hunter2-very-secret".to_owned());
        let sealed = s.seal_for(&m, b"").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(s.open_sealed(&sealed).unwrap(), m);
        // Same key file → same key; a tampered text does not open.
        let again = Sealer::open(&dir.path().join("k")).unwrap();
        assert_eq!(again.open_sealed(&sealed).unwrap(), m);
        let mut bad = sealed.into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(s.open_sealed(&String::from_utf8(bad).unwrap()).is_err());
        // Bound to an owner: opens for that owner only.
        let bound = s.seal_for(&m, b"pool-a/registry/h:1").unwrap();
        assert_eq!(s.open_for(&bound, b"pool-a/registry/h:1").unwrap(), m);
        assert!(s.open_for(&bound, b"pool-b/registry/h:1").is_err());
        assert!(s.open_sealed(&bound).is_err());
    }
}
