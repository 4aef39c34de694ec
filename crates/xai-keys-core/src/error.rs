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

    /// A secret whose key was revoked (or rotated away) is offered again.
    #[error(
        "key {0} was revoked earlier (see `xai-keys events --key-id {0}`); a retired secret is never registered again: provision a new secret"
    )]
    Retired(String),

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

    /// The usage sidecar (`<store>.usage`) cannot be parsed. It only holds last-use
    /// statistics, so deleting it loses nothing else.
    #[error(
        "usage file {path} is corrupt: {problem}. It only holds last-use statistics, so it can be deleted safely (`rm {path}`); the next flush writes a fresh one",
        path = path.display()
    )]
    CorruptUsage { path: PathBuf, problem: String },

    /// A guarded revocation (`--if-idle`) found the key used within the idle window.
    #[error(
        "key {key_id} was last used {when} by client {client} on route {route}, within the idle window of {window}: revoke refused. Confirm that this client has switched to another key, or retry without the idle guard (--if-idle)",
        when = fmt_epoch_utc(*last_used),
        client = shown(last_client),
        route = shown(last_route),
        window = fmt_secs(*idle_secs)
    )]
    RecentlyUsed {
        key_id: String,
        /// When the key was last used, epoch seconds.
        last_used: f64,
        /// The idle window the caller asked for, seconds.
        idle_secs: f64,
        last_client: String,
        last_route: String,
    },

    /// A change window is open already.
    #[error(
        "change window {ticket:?} is open, ending {until}: close it first (`xai-keys window close`) or wait for it to end",
        until = fmt_epoch_utc(*expires_at)
    )]
    WindowOpen { ticket: String, expires_at: f64 },

    /// The change-window record cannot be read.
    #[error(
        "change window file {path} is corrupt: {problem}. Remove it (`rm {path}`) to treat the window as closed, then open a new one if a change is planned",
        path = path.display()
    )]
    CorruptWindow { path: PathBuf, problem: String },

    /// The lockdown record cannot be read. Gateways treat it as a lockdown to loopback.
    #[error(
        "lockdown file {path} is corrupt: {problem}. Gateways treat it as a lockdown with /admin/* open to loopback only; `xai-keys lockdown off` removes it, `xai-keys lockdown on` replaces it",
        path = path.display()
    )]
    CorruptLockdown { path: PathBuf, problem: String },

    /// A networked store (etcd) could not be reached or answered with an error. Nothing was
    /// changed unless the message says the outcome is unknown.
    #[error("key store {store} is unavailable: {problem}")]
    Unavailable { store: String, problem: String },

    /// A compare-and-swap commit lost to other writers too many times in a row.
    #[error(
        "key store {store} is busy: {attempts} attempts lost to concurrent changes; nothing was changed, try again"
    )]
    Busy { store: String, attempts: u32 },

    /// `migrate` refused to copy (or found the copy wrong); the message says what to do.
    #[error("migration into {store} refused: {problem}")]
    Migration { store: String, problem: String },
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
            Error::PermanentDisabled
            | Error::Duplicate(_)
            | Error::KeyState { .. }
            | Error::RecentlyUsed { .. }
            | Error::Retired(_)
            | Error::WindowOpen { .. }
            | Error::Busy { .. }
            | Error::Migration { .. } => ErrorClass::Conflict,
            Error::CorruptStore { .. }
            | Error::CorruptUsage { .. }
            | Error::CorruptWindow { .. }
            | Error::CorruptLockdown { .. }
            | Error::CorruptLog { .. }
            | Error::StoreMismatch { .. }
            | Error::InsecurePermissions { .. }
            | Error::LockTimeout { .. }
            | Error::Backup { .. } => ErrorClass::Integrity,
            Error::Io { .. } | Error::Random(_) | Error::Unavailable { .. } => ErrorClass::Io,
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
            Error::CorruptUsage { .. } => "corrupt_usage",
            Error::RecentlyUsed { .. } => "recently_used",
            Error::Retired(_) => "retired",
            Error::WindowOpen { .. } => "window_open",
            Error::CorruptWindow { .. } => "corrupt_window",
            Error::CorruptLockdown { .. } => "corrupt_lockdown",
            Error::Unavailable { .. } => "store_unavailable",
            Error::Busy { .. } => "store_busy",
            Error::Migration { .. } => "migration_refused",
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
    /// A change window's ticket.
    Ticket,
}

impl TextField {
    pub fn as_str(self) -> &'static str {
        match self {
            TextField::Label => "label",
            TextField::Reason => "reason",
            TextField::Ticket => "ticket",
        }
    }

    /// The error code of an invalid value (`invalid_label`, `invalid_reason`).
    pub fn code(self) -> &'static str {
        match self {
            TextField::Label => "invalid_label",
            TextField::Reason => "invalid_reason",
            TextField::Ticket => "invalid_ticket",
        }
    }
}

impl std::fmt::Display for TextField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text another process supplied (a client address, a route), quoted with the characters that
/// would act on a terminal escaped; `unknown` when empty.
fn shown(s: &str) -> String {
    if s.is_empty() {
        return "unknown".into();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if crate::ops::is_unsafe_text_char(c) || c == '"' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// Epoch seconds as RFC 3339 UTC to the second (`2026-01-31T12:00:00Z`), for messages.
pub(crate) fn fmt_epoch_utc(t: f64) -> String {
    if !t.is_finite() || t.abs() > 1e14 {
        return format!("at epoch {t}");
    }
    let secs = t.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "at {year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A window in seconds, compactly (`15m`, `1h30m`, `90.5s`).
fn fmt_secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 || s.fract() != 0.0 || s > 1e12 {
        return format!("{s}s");
    }
    let mut n = s as u64;
    if n == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if n >= size {
            out.push_str(&format!("{}{unit}", n / size));
            n %= size;
        }
    }
    out
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

    #[test]
    fn epoch_times_and_windows_read_naturally() {
        assert_eq!(fmt_epoch_utc(0.0), "at 1970-01-01T00:00:00Z");
        assert_eq!(fmt_epoch_utc(1_769_860_800.9), "at 2026-01-31T12:00:00Z");
        assert_eq!(fmt_epoch_utc(951_782_400.0), "at 2000-02-29T00:00:00Z");
        assert_eq!(fmt_secs(900.0), "15m");
        assert_eq!(fmt_secs(5_400.0), "1h30m");
        assert_eq!(fmt_secs(90.5), "90.5s");
    }

    #[test]
    fn recently_used_names_when_who_and_the_way_out() {
        let e = Error::RecentlyUsed {
            key_id: "ab".repeat(32),
            last_used: 1_769_860_800.0,
            idle_secs: 900.0,
            last_client: "10.0.0.7".into(),
            last_route: "/api/v1/tx\x1b[2J".into(),
        };
        let msg = e.to_string();
        assert_eq!(e.code(), "recently_used");
        assert_eq!(e.class(), ErrorClass::Conflict);
        for want in [
            "2026-01-31T12:00:00Z",
            "\"10.0.0.7\"",
            "/api/v1/tx",
            "15m",
            "switched",
            "without the idle guard",
        ] {
            assert!(msg.contains(want), "{want}: {msg}");
        }
        assert!(!msg.contains('\x1b'), "{msg}");
    }
}
