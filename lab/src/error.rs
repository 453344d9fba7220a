//! The lab's own errors: its state file and its listeners.

use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot read lab state {path}: {source}")]
    ReadState {
        path: String,
        source: std::io::Error,
    },
    #[error("lab state {path} is not a lab state file: {source}")]
    BadState {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot write lab state {path}: {source}")]
    WriteState {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write server log {path}: {source}")]
    WriteLog {
        path: String,
        source: std::io::Error,
    },
    #[error("listener: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}
