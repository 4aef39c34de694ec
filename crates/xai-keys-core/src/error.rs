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

    /// A free-text field (a key's label, an audit reason) breaks the text rules.
    #[error("invalid {field}: {problem}")]
    InvalidText { field: TextField, problem: String },

    #[error("not_found: no key matches {0:?} (run `xai-keys list` to see key ids)")]
    NotFound(String),

    #[error("ambiguous key id prefix {prefix:?} matches {} keys: {}; give more characters", candidates.len(), candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },

    #[error(
        "key {0} is already registered (see `xai-keys list`); refusing to overwrite it: use a new key or secret"
    )]
    Duplicate(String),

    /// `hint` names the way out (`; …`, or empty): see the constructors below.
    #[error("key {key_id} is {state}: {action} refused{hint}")]
    KeyState {
        key_id: String,
        state: String,
        action: String,
        hint: String,
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
        "{kind} {path} has insecure permissions {mode:04o} (writable by group or others); refusing to use it. Fix with `chmod {fix} {path}`",
        kind = if *is_dir { "directory" } else { "file" },
        fix = if *is_dir { "700" } else { "600" },
        path = path.display()
    )]
    InsecurePermissions {
        path: PathBuf,
        mode: u32,
        /// A directory (fixed with `chmod 700`) rather than a file (`chmod 600`).
        is_dir: bool,
    },

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
            | Error::InvalidText { .. }
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
            Error::InvalidText { field, .. } => field.code(),
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

    /// A key's state refuses `action`; the message names the way out for that state.
    pub(crate) fn key_state(key_id: &str, state: crate::record::KeyState, action: &str) -> Self {
        use crate::record::KeyState;
        let hint = match state {
            KeyState::Disabled => {
                format!("; re-enable it first with `xai-keys enable {key_id}`")
            }
            KeyState::Expired => {
                "; an expired key cannot be renewed: issue a new key with `xai-keys issue`".into()
            }
            KeyState::Active => String::new(),
        };
        Error::KeyState {
            key_id: key_id.to_string(),
            state: state.to_string(),
            action: action.to_string(),
            hint,
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

/// The free-text fields [`crate::ops::check_text`] validates, named in its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    /// A key's label.
    Label,
    /// The reason recorded with a revocation.
    Reason,
}

impl TextField {
    pub fn as_str(self) -> &'static str {
        match self {
            TextField::Label => "label",
            TextField::Reason => "reason",
        }
    }

    /// The error code of an invalid value (`invalid_label`, `invalid_reason`).
    pub fn code(self) -> &'static str {
        match self {
            TextField::Label => "invalid_label",
            TextField::Reason => "invalid_reason",
        }
    }
}

impl std::fmt::Display for TextField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do about the common operating-system failures.
fn io_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) | Some(122) => {
            "; free space on that filesystem (or raise the quota) and retry: the failed change was not applied"
        }
        Some(13) | Some(1) => {
            "; run as the store's owner or fix its ownership, and check the modes (directory 0700, files 0600)"
        }
        Some(30) => "; the filesystem is read-only: remount it read-write to make changes",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EACCES/EPERM is as often a mode as an owner problem: the hint names both.
    #[test]
    fn permission_denied_hint_names_ownership_and_modes() {
        for errno in [13, 1] {
            let e = Error::io(
                "read store",
                "/srv/keys/api_keys.json",
                std::io::Error::from_raw_os_error(errno),
            );
            let msg = e.to_string();
            assert!(msg.contains("owner"), "{msg}");
            assert!(
                msg.contains("directory 0700") && msg.contains("files 0600"),
                "{msg}"
            );
        }
    }
}
