//! Checkpoints: C2SP `tlog-checkpoint` note bodies, signed as C2SP signed notes by the ledger key.
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <base64 root hash>\n
//! [extension line\n ...]
//! \n
//! — <key name> <base64(4-byte key hash || Ed25519 signature over the body)>\n
//! ```
//!
//! PromptLedger writes one optional extension line, `state-root <base64 32 bytes>`, the
//! registry projection's state root at that tree size. The note syntax and signature handling
//! are the `signed_note` crate's; this module only builds and reads the body.

use super::keys::{KeyPair, PublicKey};
use super::merkle::Hash;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use signed_note::{Note, VerifierList};

/// Extension line key for the projection's state root.
pub const STATE_ROOT_EXTENSION: &str = "state-root";

/// A checkpoint body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Extension lines, each without its newline.
    pub extensions: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum CheckpointError {
    #[error("checkpoint body is malformed: {0}")]
    Malformed(&'static str),
    #[error("root hash is {0} bytes, a SHA-256 log needs 32")]
    RootLength(usize),
    #[error("signed note is malformed")]
    MalformedNote,
    #[error("checkpoint is not signed by the ledger key {0}")]
    NotSigned(String),
    #[error("checkpoint signature by {0} does not verify")]
    BadSignature(String),
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    WrongOrigin { expected: String, found: String },
}

/// The three mandatory fields of a checkpoint body and the raw rest, before any SHA-256
/// specific check (the published vectors use toy root hashes of other lengths).
#[derive(Debug, PartialEq, Eq)]
pub struct Body<'a> {
    pub origin: &'a str,
    pub size: u64,
    pub root: Vec<u8>,
    pub rest: &'a str,
}

/// Parses a checkpoint body as `tlog-checkpoint` defines it.
pub fn parse_body(text: &str) -> Result<Body<'_>, CheckpointError> {
    let (origin, rest) = text
        .split_once('\n')
        .ok_or(CheckpointError::Malformed("no origin"))?;
    let (size, rest) = rest
        .split_once('\n')
        .ok_or(CheckpointError::Malformed("no size"))?;
    let (root, rest) = rest
        .split_once('\n')
        .ok_or(CheckpointError::Malformed("no root"))?;
    if origin.is_empty() {
        return Err(CheckpointError::Malformed("empty origin"));
    }
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CheckpointError::Malformed("size is not a decimal number"));
    }
    let size = size
        .parse::<u64>()
        .map_err(|_| CheckpointError::Malformed("size overflows"))?;
    let root = STANDARD
        .decode(root)
        .map_err(|_| CheckpointError::Malformed("root not base64"))?;
    Ok(Body {
        origin,
        size,
        root,
        rest,
    })
}

impl Checkpoint {
    /// The note text: what the ledger key signs.
    pub fn body(&self) -> String {
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for ext in &self.extensions {
            out.push_str(ext);
            out.push('\n');
        }
        out
    }

    pub fn from_body(text: &str) -> Result<Self, CheckpointError> {
        let body = parse_body(text)?;
        let root: Hash = body
            .root
            .as_slice()
            .try_into()
            .map_err(|_| CheckpointError::RootLength(body.root.len()))?;
        let extensions = body.rest.lines().map(str::to_owned).collect();
        Ok(Checkpoint {
            origin: body.origin.to_owned(),
            size: body.size,
            root,
            extensions,
        })
    }

    /// The projection state root carried in the `state-root` extension, if any.
    pub fn state_root(&self) -> Option<Hash> {
        self.extensions.iter().find_map(|line| {
            let b64 = line.strip_prefix(STATE_ROOT_EXTENSION)?.strip_prefix(' ')?;
            STANDARD.decode(b64).ok()?.try_into().ok()
        })
    }

    pub fn with_state_root(mut self, state_root: &Hash) -> Self {
        self.extensions.push(format!(
            "{STATE_ROOT_EXTENSION} {}",
            STANDARD.encode(state_root)
        ));
        self
    }

    /// Signs the body as a signed note.
    pub fn sign(&self, key: &KeyPair) -> Vec<u8> {
        let mut note =
            Note::new(self.body().as_bytes(), &[]).expect("checkpoint body is note text");
        note.add_sigs(&[&key.note_signer()])
            .expect("Ed25519 signing does not fail");
        note.to_bytes()
    }

    /// Opens a signed checkpoint: the note must carry a valid signature by `ledger_key`, and the
    /// origin must be the key's name (C2SP: the log's key is named after its origin).
    /// The checkpoint a signed note carries, **without checking any signature**: for callers
    /// that only need its size (the publisher) or have no key to check it with.
    pub fn read_unverified(note: &[u8]) -> Result<Self, CheckpointError> {
        let parsed = Note::from_bytes(note).map_err(|_| CheckpointError::MalformedNote)?;
        let text =
            std::str::from_utf8(parsed.text()).map_err(|_| CheckpointError::MalformedNote)?;
        Checkpoint::from_body(text)
    }

    pub fn open(note: &[u8], ledger_key: &PublicKey) -> Result<Self, CheckpointError> {
        let parsed = Note::from_bytes(note).map_err(|_| CheckpointError::MalformedNote)?;
        let verifiers = VerifierList::new(vec![Box::new(ledger_key.note_verifier())]);
        let (verified, _) = parsed.verify(&verifiers).map_err(|e| match e {
            signed_note::NoteError::InvalidSignature { .. } => {
                CheckpointError::BadSignature(ledger_key.key_id().to_string())
            }
            signed_note::NoteError::MalformedNote => CheckpointError::MalformedNote,
            _ => CheckpointError::NotSigned(ledger_key.key_id().to_string()),
        })?;
        if verified.is_empty() {
            return Err(CheckpointError::NotSigned(ledger_key.key_id().to_string()));
        }
        let text =
            std::str::from_utf8(parsed.text()).map_err(|_| CheckpointError::MalformedNote)?;
        let cp = Checkpoint::from_body(text)?;
        if cp.origin != ledger_key.name() {
            return Err(CheckpointError::WrongOrigin {
                expected: ledger_key.name().to_owned(),
                found: cp.origin,
            });
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_open_round_trips() {
        let key = KeyPair::from_seed("example.org/log", &[5; 32]).unwrap();
        let cp = Checkpoint {
            origin: "example.org/log".into(),
            size: 3,
            root: [7; 32],
            extensions: vec![],
        }
        .with_state_root(&[8; 32]);
        let note = cp.sign(&key);
        let opened = Checkpoint::open(&note, &key.public()).unwrap();
        assert_eq!(opened, cp);
        assert_eq!(opened.state_root(), Some([8; 32]));
    }

    #[test]
    fn another_key_or_origin_is_refused() {
        let key = KeyPair::from_seed("example.org/log", &[5; 32]).unwrap();
        let other = KeyPair::from_seed("example.org/log", &[6; 32]).unwrap();
        let cp = Checkpoint {
            origin: "example.org/log".into(),
            size: 1,
            root: [0; 32],
            extensions: vec![],
        };
        assert!(matches!(
            Checkpoint::open(&cp.sign(&other), &key.public()),
            Err(CheckpointError::NotSigned(_))
        ));
        let wrong = Checkpoint {
            origin: "elsewhere".into(),
            ..cp
        };
        assert!(matches!(
            Checkpoint::open(&wrong.sign(&key), &key.public()),
            Err(CheckpointError::WrongOrigin { .. })
        ));
    }
}
