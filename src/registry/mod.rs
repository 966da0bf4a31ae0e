//! The prompt registry: PromptLedger's personality on top of the generic ledger.
//!
//! So far: the signed statement format every actor request uses, the genesis statement, and
//! the keyring that follows which actor keys may sign at each point of the log.

pub mod keyring;
pub mod model;
pub mod personality;
pub mod state;
pub mod statement;
