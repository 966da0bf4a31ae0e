//! DSSE (Dead Simple Signing Envelope) v1: what an actor signs.
//!
//! An actor's signature covers `PAE(payloadType, payload)`, the DSSE pre-authentication
//! encoding, never a re-encoding of the payload. The ledger stores the payload bytes and the
//! signatures exactly as received (see `docs/ledger-format.md`), so an auditor can check years
//! later that the actor authorized exactly these bytes.
//!
//! Not here: which keys are trusted (that is the [`crate::ledger::verify::Keyring`]'s job) and
//! the JSON wire form's transport (that is the API's).

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use ed25519_dalek::{Signature as EdSignature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Most signatures one envelope may carry (one byte in the stored format).
pub const MAX_SIGNATURES: usize = 16;
/// Longest key id, in bytes (one byte in the stored format).
pub const MAX_KEYID_LEN: usize = 255;
/// Longest payload type, in bytes (two bytes in the stored format).
pub const MAX_PAYLOAD_TYPE_LEN: usize = 1024;

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths as ASCII
/// decimal byte counts.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One signature of an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Which key made it; for PromptLedger keys, the signed-note key id `name+hhhhhhhh`.
    pub keyid: String,
    /// The raw signature bytes (64 for Ed25519).
    pub sig: Vec<u8>,
}

/// A DSSE envelope with its payload decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
}

/// Why an envelope's signatures are not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SignatureError {
    #[error(transparent)]
    Shape(EnvelopeError),
    #[error("unknown or revoked key {0:?}")]
    UnknownKey(String),
    #[error("signature by {0} does not verify")]
    Invalid(String),
}

/// Why an envelope is not acceptable as it stands.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum EnvelopeError {
    #[error("envelope has no signature")]
    NoSignature,
    #[error("envelope has {0} signatures, at most {MAX_SIGNATURES} are allowed")]
    TooManySignatures(usize),
    #[error("payload type is empty")]
    EmptyPayloadType,
    #[error("payload type is {0} bytes, at most {MAX_PAYLOAD_TYPE_LEN} are allowed")]
    PayloadTypeTooLong(usize),
    #[error("key id is {0} bytes, at most {MAX_KEYID_LEN} are allowed")]
    KeyIdTooLong(usize),
    #[error("signature {index} is {len} bytes, an Ed25519 signature is 64")]
    SignatureLength { index: usize, len: usize },
    #[error("JSON envelope: {0}")]
    Json(String),
    #[error("JSON envelope field {field}: not base64")]
    Base64 { field: &'static str },
}

impl Envelope {
    /// Signs `payload` as `payload_type` with one key. `keyid` names the key to verifiers.
    pub fn sign(payload_type: &str, payload: Vec<u8>, keyid: &str, key: &SigningKey) -> Self {
        let sig = key.sign(&pae(payload_type, &payload)).to_bytes().to_vec();
        Envelope {
            payload_type: payload_type.to_owned(),
            payload,
            signatures: vec![Signature {
                keyid: keyid.to_owned(),
                sig,
            }],
        }
    }

    /// The bytes every signature covers.
    pub fn pae(&self) -> Vec<u8> {
        pae(&self.payload_type, &self.payload)
    }

    /// Checks every signature against the key its `keyid` names (strict RFC 8032 verification).
    /// The ledger requires all signatures of an envelope to verify, not a threshold.
    pub fn verify_all(
        &self,
        lookup: impl Fn(&str) -> Option<VerifyingKey>,
    ) -> Result<(), SignatureError> {
        self.check_shape().map_err(SignatureError::Shape)?;
        let message = self.pae();
        for s in &self.signatures {
            let key =
                lookup(&s.keyid).ok_or_else(|| SignatureError::UnknownKey(s.keyid.clone()))?;
            let sig = EdSignature::from_slice(&s.sig)
                .map_err(|_| SignatureError::Invalid(s.keyid.clone()))?;
            key.verify_strict(&message, &sig)
                .map_err(|_| SignatureError::Invalid(s.keyid.clone()))?;
        }
        Ok(())
    }

    /// Structural checks that do not need keys: what the stored format can carry and what an
    /// Ed25519 signature looks like.
    pub fn check_shape(&self) -> Result<(), EnvelopeError> {
        if self.signatures.is_empty() {
            return Err(EnvelopeError::NoSignature);
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::TooManySignatures(self.signatures.len()));
        }
        if self.payload_type.is_empty() {
            return Err(EnvelopeError::EmptyPayloadType);
        }
        if self.payload_type.len() > MAX_PAYLOAD_TYPE_LEN {
            return Err(EnvelopeError::PayloadTypeTooLong(self.payload_type.len()));
        }
        for (index, s) in self.signatures.iter().enumerate() {
            if s.keyid.len() > MAX_KEYID_LEN {
                return Err(EnvelopeError::KeyIdTooLong(s.keyid.len()));
            }
            if s.sig.len() != ed25519_dalek::SIGNATURE_LENGTH {
                return Err(EnvelopeError::SignatureLength {
                    index,
                    len: s.sig.len(),
                });
            }
        }
        Ok(())
    }

    /// Parses the standard DSSE JSON envelope (`payload`, `payloadType`, `signatures[].sig`,
    /// optional `signatures[].keyid`); base64 in either the standard or the URL-safe alphabet,
    /// as the DSSE protocol requires.
    pub fn from_json(json: &[u8]) -> Result<Self, EnvelopeError> {
        let wire: JsonEnvelope =
            serde_json::from_slice(json).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        let payload =
            decode_b64(&wire.payload).ok_or(EnvelopeError::Base64 { field: "payload" })?;
        let signatures = wire
            .signatures
            .into_iter()
            .map(|s| {
                Ok(Signature {
                    keyid: s.keyid.unwrap_or_default(),
                    sig: decode_b64(&s.sig).ok_or(EnvelopeError::Base64 { field: "sig" })?,
                })
            })
            .collect::<Result<_, EnvelopeError>>()?;
        Ok(Envelope {
            payload_type: wire.payload_type,
            payload,
            signatures,
        })
    }

    /// The standard DSSE JSON envelope, standard base64.
    pub fn to_json(&self) -> String {
        let wire = JsonEnvelope {
            payload: STANDARD.encode(&self.payload),
            payload_type: self.payload_type.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|s| JsonSignature {
                    keyid: (!s.keyid.is_empty()).then(|| s.keyid.clone()),
                    sig: STANDARD.encode(&s.sig),
                })
                .collect(),
        };
        serde_json::to_string(&wire).expect("envelope serializes")
    }
}

/// DSSE verification with a threshold: counts the distinct trusted keys that produced a valid
/// signature over the PAE. `keys` are tried for each signature; a signature's `keyid`, when
/// present, is only a hint to pick the key (DSSE protocol section "Verification").
pub fn verify_threshold(
    envelope: &Envelope,
    keys: &[(String, VerifyingKey)],
    threshold: usize,
) -> Result<Vec<String>, usize> {
    let message = envelope.pae();
    let mut accepted: Vec<String> = Vec::new();
    for s in &envelope.signatures {
        let Ok(sig) = EdSignature::from_slice(&s.sig) else {
            continue;
        };
        for (name, key) in keys {
            if !s.keyid.is_empty() && &s.keyid != name {
                continue;
            }
            if accepted.contains(name) {
                continue;
            }
            if key.verify_strict(&message, &sig).is_ok() {
                accepted.push(name.clone());
                break;
            }
        }
    }
    if accepted.len() >= threshold {
        Ok(accepted)
    } else {
        Err(accepted.len())
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).or_else(|_| URL_SAFE.decode(s)).ok()
}

#[derive(Serialize, Deserialize)]
struct JsonEnvelope {
    payload: String,
    #[serde(rename = "payloadType")]
    payload_type: String,
    signatures: Vec<JsonSignature>,
}

#[derive(Serialize, Deserialize)]
struct JsonSignature {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    keyid: Option<String>,
    sig: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn json_round_trip_keeps_bytes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let env = Envelope::sign("application/x", vec![0, 1, 2, 255], "k+00000000", &key);
        assert_eq!(Envelope::from_json(env.to_json().as_bytes()).unwrap(), env);
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut env = Envelope::sign("t", vec![], "k", &key);
        env.signatures[0].sig.pop();
        assert_eq!(
            env.check_shape(),
            Err(EnvelopeError::SignatureLength { index: 0, len: 63 })
        );
        env.signatures.clear();
        assert_eq!(env.check_shape(), Err(EnvelopeError::NoSignature));
    }
}
