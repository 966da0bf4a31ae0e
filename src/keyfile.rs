//! Key files and key environment variables (the edge; the key math is in `ledger::keys`).
//!
//! A key file holds one signer key (`PRIVATE+KEY+name+hhhhhhhh+base64`) and a newline, and is
//! created with mode 0600. CI systems can pass the same string in an environment variable
//! instead of a file.

use crate::ledger::keys::{KeyError, KeyPair};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key in {origin}: {source}")]
    Parse { origin: String, source: KeyError },
    #[error("no key given: pass a key file or set {0}")]
    Missing(String),
}

/// Writes a secret key to a new file readable only by its owner. Refuses to overwrite.
pub fn write_key(path: &Path, key: &KeyPair) -> Result<(), KeyFileError> {
    let err = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(format!("{}\n", key.to_skey()).as_bytes())
        .map_err(err)?;
    file.sync_all().map_err(err)
}

pub fn read_key(path: &Path) -> Result<KeyPair, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    KeyPair::from_skey(text.trim()).map_err(|source| KeyFileError::Parse {
        origin: path.display().to_string(),
        source,
    })
}

/// A key from the environment variable `env_var` if it is set, else from `file`.
pub fn load_key(file: Option<&Path>, env_var: &str) -> Result<KeyPair, KeyFileError> {
    if let Ok(value) = std::env::var(env_var) {
        if !value.trim().is_empty() {
            return KeyPair::from_skey(value.trim()).map_err(|source| KeyFileError::Parse {
                origin: format!("${env_var}"),
                source,
            });
        }
    }
    match file {
        Some(path) => read_key(path),
        None => Err(KeyFileError::Missing(env_var.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/admin.key");
        let key = KeyPair::from_seed("admin", &[4; 32]).unwrap();
        write_key(&path, &key).unwrap();
        assert_eq!(read_key(&path).unwrap().to_skey(), key.to_skey());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            write_key(&path, &key),
            Err(KeyFileError::Write { .. })
        ));
    }
}
