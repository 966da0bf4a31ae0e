//! The prompt registry: PromptLedger's personality on top of the generic ledger.
//!
//! The signed statement format every actor request uses, the projection (`state`: decide and
//! apply), the gates (`governance`), the keyring that follows which actor keys may sign at each
//! point of the log, and the writer personality that keeps the projection beside the log.

pub mod events;
pub mod governance;
pub mod keyring;
pub mod model;
pub mod personality;
pub mod state;
pub mod statement;
