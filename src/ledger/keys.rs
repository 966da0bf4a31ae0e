//! Ed25519 keys, named and encoded as C2SP signed-note keys.
//!
//! A key has a name (an actor name, or the ledger's origin for the ledger key) and a key id, the
//! signed-note key hash `SHA-256(name || "\n" || 0x01 || public key)[:4]`. The id is written
//! `name+hhhhhhhh` wherever a signature has to say which key made it (DSSE `keyid`, signature
//! lines of checkpoints). Encodings:
//!
//! - verifier key (public): `name+hhhhhhhh+base64(0x01 || public key)`
//! - signer key (secret): `PRIVATE+KEY+name+hhhhhhhh+base64(0x01 || seed)`
//!
//! Not here: reading or writing key files and environment variables (`crate::keyfile`), and
//! which keys are trusted when (the ledger's [`crate::ledger::verify::Keyring`]).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use signed_note::{StandardSigner, StandardVerifier};
use std::fmt;

/// Signature algorithm byte of Ed25519 in signed-note encodings.
const ALG_ED25519: u8 = 0x01;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum KeyError {
    #[error("key name {0:?} is invalid: it must be non-empty, without spaces or '+'")]
    InvalidName(String),
    #[error("malformed signer key (want PRIVATE+KEY+<name>+<8 hex>+<base64>)")]
    MalformedSigner,
    #[error("malformed verifier key (want <name>+<8 hex>+<base64>)")]
    MalformedVerifier,
    #[error("the key id does not match the key")]
    IdMismatch,
    #[error("unsupported key algorithm (only Ed25519 is supported)")]
    Algorithm,
    #[error("weak Ed25519 public key (small order) refused")]
    WeakKey,
}

/// `name+hhhhhhhh`: a key's name and signed-note key hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn new(name: &str, key: &VerifyingKey) -> Self {
        KeyId(format!("{name}+{:08x}", key_hash(name, key)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name part (everything before the last `+`).
    pub fn name(&self) -> &str {
        self.0.rsplit_once('+').map_or(&self.0, |(n, _)| n)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The signed-note key hash of an Ed25519 key.
pub fn key_hash(name: &str, key: &VerifyingKey) -> u32 {
    let mut encoded = Vec::with_capacity(33);
    encoded.push(ALG_ED25519);
    encoded.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &encoded)
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if signed_note::is_key_name_valid(name) {
        Ok(())
    } else {
        Err(KeyError::InvalidName(name.to_owned()))
    }
}

/// A named public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, KeyError> {
        check_name(name)?;
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Parses a verifier key `name+hhhhhhhh+base64(0x01 || key)`; the signed-note library does
    /// the validation so that our rules are exactly the spec's.
    pub fn from_vkey(vkey: &str) -> Result<Self, KeyError> {
        StandardVerifier::new(vkey).map_err(|e| match e {
            signed_note::VerifierError::Format => KeyError::MalformedVerifier,
            signed_note::VerifierError::Alg => KeyError::Algorithm,
            signed_note::VerifierError::Id => KeyError::IdMismatch,
        })?;
        let mut parts = vkey.splitn(3, '+');
        let (name, _id, b64) = (parts.next(), parts.next(), parts.next());
        let raw = b64
            .and_then(|b| STANDARD.decode(b).ok())
            .ok_or(KeyError::MalformedVerifier)?;
        let bytes: [u8; 32] = raw[1..]
            .try_into()
            .map_err(|_| KeyError::MalformedVerifier)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::MalformedVerifier)?;
        PublicKey::new(name.ok_or(KeyError::MalformedVerifier)?, key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    pub fn key_id(&self) -> KeyId {
        KeyId::new(&self.name, &self.key)
    }

    /// The verifier key encoding.
    pub fn to_vkey(&self) -> String {
        signed_note::new_ed25519_verifier_key(&self.name, &self.key)
    }

    pub(crate) fn note_verifier(&self) -> StandardVerifier {
        StandardVerifier::new(&self.to_vkey()).expect("our own encoding parses")
    }
}

/// A named key pair. Its `Debug` output does not show the secret.
#[derive(Clone)]
pub struct KeyPair {
    name: String,
    signing: SigningKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key. The caller hands in the randomness (usually `rand_core::OsRng`).
    pub fn generate<R: CryptoRngCore + ?Sized>(name: &str, rng: &mut R) -> Result<Self, KeyError> {
        check_name(name)?;
        Ok(KeyPair {
            name: name.to_owned(),
            signing: SigningKey::generate(rng),
        })
    }

    /// A key from its 32-byte seed (tests and known-answer vectors).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        check_name(name)?;
        Ok(KeyPair {
            name: name.to_owned(),
            signing: SigningKey::from_bytes(seed),
        })
    }

    /// Parses a signer key `PRIVATE+KEY+name+hhhhhhhh+base64(0x01 || seed)`.
    pub fn from_skey(skey: &str) -> Result<Self, KeyError> {
        StandardSigner::new(skey.trim()).map_err(|e| match e {
            signed_note::SignerError::Format => KeyError::MalformedSigner,
            signed_note::SignerError::Alg => KeyError::Algorithm,
            signed_note::SignerError::Id => KeyError::IdMismatch,
        })?;
        let fields: Vec<&str> = skey.trim().splitn(5, '+').collect();
        let [_, _, name, _, b64] = fields[..] else {
            return Err(KeyError::MalformedSigner);
        };
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| KeyError::MalformedSigner)?;
        let seed: [u8; 32] = raw[1..].try_into().map_err(|_| KeyError::MalformedSigner)?;
        KeyPair::from_seed(name, &seed)
    }

    /// The signer key encoding. Secret.
    pub fn to_skey(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.signing.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            key_hash(&self.name, &self.signing.verifying_key()),
            STANDARD.encode(raw)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.signing.verifying_key(),
        }
    }

    pub fn key_id(&self) -> KeyId {
        KeyId::new(&self.name, &self.signing.verifying_key())
    }

    pub(crate) fn note_signer(&self) -> StandardSigner {
        StandardSigner::new(&self.to_skey()).expect("our own encoding parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    #[test]
    fn signer_key_round_trips_and_matches_its_verifier_key() {
        let pair = KeyPair::from_skey(PETER_SKEY).unwrap();
        assert_eq!(pair.to_skey(), PETER_SKEY);
        assert_eq!(pair.public().to_vkey(), PETER_VKEY);
        assert_eq!(pair.key_id().as_str(), "PeterNeumann+c74f20a3");
        assert_eq!(pair.key_id().name(), "PeterNeumann");
        assert_eq!(PublicKey::from_vkey(PETER_VKEY).unwrap(), pair.public());
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let pair = KeyPair::from_skey(PETER_SKEY).unwrap();
        let shown = format!("{pair:?}");
        assert!(!shown.contains("AYEKFALV"), "{shown}");
    }

    #[test]
    fn names_with_spaces_or_plus_are_refused() {
        assert_eq!(
            KeyPair::from_seed("a b", &[1; 32]).unwrap_err(),
            KeyError::InvalidName("a b".into())
        );
        assert!(KeyPair::from_seed("a+b", &[1; 32]).is_err());
        assert!(KeyPair::from_seed("", &[1; 32]).is_err());
    }
}
