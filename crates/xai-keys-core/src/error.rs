//! The core's one error type.
//!
//! Every variant names what is wrong and, where there is one, the way out, so that the CLI and
//! the gateway can show `Display` to an operator unchanged. No variant ever carries key material.

use std::path::PathBuf;

/// Convenience alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Broad classes the front ends map to exit codes and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller asked for something invalid (bad scope, TTL, secret, id).
    Invalid,
    /// The key or id does not exist.
    NotFound,
    /// The request is valid but refused in the current state (expired, disabled, duplicate).
    Conflict,
    /// The store, log or filesystem is in a state we refuse to act on (corrupt, insecure, locked).
    Integrity,
    /// An operating-system I/O failure.
    Io,
}

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid scope {given:?}: valid scopes are user, operator, auditor, admin")]
    InvalidScope { given: String },

    #[error("invalid TTL: {0}")]
    InvalidTtl(String),

    #[error(
        "permanent API keys are disabled by configuration (set XAI_API_KEY_ALLOW_PERMANENT=1 to allow them)"
    )]
    PermanentDisabled,

    #[error("invalid configuration: {var}={value:?}: {reason}")]
    InvalidConfig {
        var: String,
        value: String,
        reason: String,
    },

    #[error("invalid secret: {0}")]
    InvalidSecret(String),

    #[error("invalid key id {given:?}: {reason}")]
    InvalidKeyId { given: String, reason: String },

    #[error("invalid label: {0}")]
    InvalidLabel(String),

    #[error("not_found: no key matches {0:?} (run `xai-keys list` to see key ids)")]
    NotFound(String),

    #[error("ambiguous key id prefix {prefix:?} matches {} keys: {}; give more characters", candidates.len(), candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },

    #[error("a key with id {0} already exists; refusing to overwrite it")]
    Duplicate(String),

    #[error("key {key_id} is {state}: {action} refused")]
    KeyState {
        key_id: String,
        state: String,
        action: String,
    },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error(
        "store {path} is corrupt: {problem}{location}; nothing was changed. Run `xai-keys verify` for details, or `xai-keys restore BACKUP` to recover",
        location = match (line, column) { (Some(l), Some(c)) => format!(" at line {l}, column {c}"), _ => String::new() }
    )]
    CorruptStore {
        path: PathBuf,
        problem: String,
        line: Option<usize>,
        column: Option<usize>,
    },

    #[error(
        "audit log {path} is damaged at line {line}: {problem}. Run `xai-keys verify` for details, or `xai-keys restore BACKUP`"
    )]
    CorruptLog {
        path: PathBuf,
        line: usize,
        problem: String,
    },

    #[error(
        "store {store} does not match the state recorded by the last audit line ({detail}): it was changed outside xai-keys or the log was truncated. Nothing was changed. Inspect with `xai-keys verify`, then `xai-keys restore BACKUP` or accept the current file with `xai-keys verify --adopt`"
    )]
    StoreMismatch { store: PathBuf, detail: String },

    #[error(
        "{path} has insecure permissions {mode:04o} (writable by group or others); refusing to use it. Fix with `chmod 600 {path}` (files) or `chmod 700` (directories)",
        path = path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },

    #[error(
        "timed out after {seconds}s waiting for the store lock {path}: another xai-keys process holds it; retry, or find it with `fuser {path}`",
        path = path.display()
    )]
    LockTimeout { path: PathBuf, seconds: u64 },

    /// The cause is part of the message (not a `source`), so chains print it once.
    #[error("{op} {path}: {err}{hint}", path = path.display(), hint = io_hint(err))]
    Io {
        op: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },

    #[error("operating system random number generator failed: {0}")]
    Random(String),

    #[error("backup {path}: {problem}", path = path.display())]
    Backup { path: PathBuf, problem: String },
}

impl Error {
    /// The class of this error, for exit codes and HTTP statuses.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidScope { .. }
            | Error::InvalidTtl(_)
            | Error::InvalidConfig { .. }
            | Error::InvalidSecret(_)
            | Error::InvalidKeyId { .. }
            | Error::InvalidLabel(_)
            | Error::InvalidInput(_)
            | Error::Ambiguous { .. } => ErrorClass::Invalid,
            Error::NotFound(_) => ErrorClass::NotFound,
            Error::PermanentDisabled | Error::Duplicate(_) | Error::KeyState { .. } => {
                ErrorClass::Conflict
            }
            Error::CorruptStore { .. }
            | Error::CorruptLog { .. }
            | Error::StoreMismatch { .. }
            | Error::InsecurePermissions { .. }
            | Error::LockTimeout { .. }
            | Error::Backup { .. } => ErrorClass::Integrity,
            Error::Io { .. } | Error::Random(_) => ErrorClass::Io,
        }
    }

    /// A short stable code (`not_found`, `invalid_scope`, …) for JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidScope { .. } => "invalid_scope",
            Error::InvalidTtl(_) => "invalid_ttl",
            Error::PermanentDisabled => "permanent_keys_disabled",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::InvalidSecret(_) => "invalid_secret",
            Error::InvalidKeyId { .. } => "invalid_key_id",
            Error::InvalidLabel(_) => "invalid_label",
            Error::InvalidInput(_) => "invalid_input",
            Error::NotFound(_) => "not_found",
            Error::Ambiguous { .. } => "ambiguous",
            Error::Duplicate(_) => "duplicate",
            Error::KeyState { .. } => "key_state",
            Error::CorruptStore { .. } => "corrupt_store",
            Error::CorruptLog { .. } => "corrupt_log",
            Error::StoreMismatch { .. } => "store_mismatch",
            Error::InsecurePermissions { .. } => "insecure_permissions",
            Error::LockTimeout { .. } => "lock_timeout",
            Error::Io { .. } => "io_error",
            Error::Random(_) => "rng_error",
            Error::Backup { .. } => "backup_error",
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            err: source,
        }
    }
}

/// What to do about the common operating-system failures.
fn io_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) | Some(122) => {
            "; free space on that filesystem (or raise the quota) and retry: the failed change was not applied"
        }
        Some(13) | Some(1) => "; run as the store's owner or fix its ownership",
        Some(30) => "; the filesystem is read-only: remount it read-write to make changes",
        _ => "",
    }
}
