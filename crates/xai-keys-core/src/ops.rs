//! Key lifecycle operations over any [`KeyStore`]: issue, import, revoke, disable/enable,
//! rotate, bootstrap, list.
//!
//! Every mutation is validated before anything is written and runs inside one store commit, so
//! it sees the latest state under the lock and is all-or-nothing with its audit lines. Time is a
//! parameter (`now`, epoch seconds) so tests control it.

use serde_json::Value;

use crate::audit::{Actor, AuditDraft};
use crate::error::{Error, Result, TextField};
use crate::policy::{TtlPolicy, TtlRequest};
use crate::record::{KeyMap, KeyRecord, KeyState, Origin};
use crate::scope::Scope;
use crate::store::KeyStore;
use crate::token::{KeyId, PlainToken};
use crate::usage::{self, KeyUsage, UsageMap};

/// Longest label accepted.
pub const MAX_LABEL_CHARS: usize = 256;
/// Shortest key-id prefix accepted by `revoke`, `rotate`, `disable`, `enable`.
pub const MIN_PREFIX: usize = 12;

/// A key's id with its record and state at the time of the operation.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub key_id: KeyId,
    pub record: KeyRecord,
    pub state: KeyState,
}

/// A newly issued key: the plaintext is shown once.
#[derive(Debug)]
pub struct IssuedKey {
    pub plaintext: PlainToken,
    pub info: KeyInfo,
    /// The requested TTL exceeded the maximum and was shortened.
    pub clamped: bool,
}

/// What to issue.
#[derive(Debug)]
pub struct IssueRequest {
    pub scope: Scope,
    pub label: String,
    pub ttl: TtlRequest,
    /// A caller-supplied secret (HSM flow); `None` generates one.
    pub secret: Option<PlainToken>,
}

/// Overrides for a rotation; `None` inherits from the old key.
#[derive(Debug, Default)]
pub struct RotateRequest {
    pub grace_secs: f64,
    pub scope: Option<Scope>,
    pub label: Option<String>,
    pub ttl: Option<TtlRequest>,
}

/// The result of a rotation.
#[derive(Debug)]
pub struct Rotated {
    pub new: IssuedKey,
    pub old_key_id: KeyId,
    /// When the old key stops working (`now` when grace is 0).
    pub old_expires_at: f64,
}

/// The result of `bootstrap-admin`.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    pub info: KeyInfo,
    /// False when the secret was already registered (nothing was written).
    pub created: bool,
}

/// Filters for `list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub scope: Option<Scope>,
    pub state: Option<KeyState>,
    /// Only active keys expiring within this many seconds.
    pub expiring_within: Option<f64>,
}

/// Characters that free text must not carry: C0/C1 controls (newline, tab, ESC) act on a
/// terminal instead of showing, and the Unicode bidirectional controls (U+061C, U+200E,
/// U+200F, U+202A–U+202E, U+2066–U+2069) reorder what follows them, so a label could spoof
/// another in a dashboard or a table. The one definition: labels and reasons are refused with
/// them, and the CLI escapes them in text another tool wrote.
pub fn is_unsafe_text_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Validates a free-text `field` (a label, a revocation reason): trimmed, at most
/// [`MAX_LABEL_CHARS`] characters, no [unsafe characters](is_unsafe_text_char). Errors name
/// the field.
pub fn check_text(field: TextField, text: &str) -> Result<String> {
    let t = text.trim();
    let hint = match field {
        TextField::Label => "",
        TextField::Reason => "; give a short single-line reason such as a ticket id",
        TextField::Ticket => "; give the change ticket id, such as CHG-123",
    };
    if t.chars().count() > MAX_LABEL_CHARS {
        return Err(Error::InvalidText {
            field,
            problem: format!("a {field} is at most {MAX_LABEL_CHARS} characters{hint}"),
        });
    }
    if t.chars().any(is_unsafe_text_char) {
        return Err(Error::InvalidText {
            field,
            problem: format!(
                "a {field} may not contain control characters (newlines, tabs, escapes) or Unicode bidirectional controls{hint}"
            ),
        });
    }
    Ok(t.to_string())
}

/// Validates a label: [`check_text`] for [`TextField::Label`].
pub fn check_label(label: &str) -> Result<String> {
    check_text(TextField::Label, label)
}

/// Resolves a full id or a unique prefix of at least [`MIN_PREFIX`] hex characters.
pub fn resolve(keys: &KeyMap, given: &str) -> Result<KeyId> {
    let g = given.trim().to_ascii_lowercase();
    if g.len() == 64 {
        let id = KeyId::parse(&g)?;
        return if keys.contains_key(&id) {
            Ok(id)
        } else {
            Err(Error::NotFound(g))
        };
    }
    if g.len() < MIN_PREFIX || g.len() > 64 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidKeyId {
            given: given.to_string(),
            reason: format!(
                "give the full 64-character key id or a prefix of at least {MIN_PREFIX} hex characters"
            ),
        });
    }
    let candidates: Vec<&KeyId> = keys
        .range(KeyId::from_trusted(g.clone())..)
        .take_while(|(k, _)| k.as_str().starts_with(&g))
        .map(|(k, _)| k)
        .collect();
    match candidates.as_slice() {
        [] => Err(Error::NotFound(g)),
        [one] => Ok((*one).clone()),
        many => Err(Error::Ambiguous {
            prefix: g,
            candidates: many.iter().map(|k| k.to_string()).collect(),
        }),
    }
}

fn issue_draft(id: &KeyId, r: &KeyRecord) -> AuditDraft {
    let mut d = AuditDraft::new("issue", Some(id.as_str()))
        .with("label", r.label.clone())
        .with("scope", r.scope.as_str())
        .with("expires_at", r.expires_at)
        .with("permanent", r.permanent);
    if let Some(o) = r.origin {
        d = d.with("origin", o.as_str());
    }
    d
}

fn meta_draft(action: &'static str, id: &KeyId, r: &KeyRecord) -> AuditDraft {
    AuditDraft::new(action, Some(id.as_str()))
        .with("label", r.label.clone())
        .with("scope", r.scope.as_str())
}

/// Lifecycle operations bound to a store and a TTL policy.
pub struct KeyManager<'a> {
    store: &'a dyn KeyStore,
    policy: TtlPolicy,
    /// Warnings from the store's commits (readable permissions, recovery notes), for the caller
    /// to show: see [`KeyManager::take_warnings`].
    warnings: std::sync::Mutex<Vec<String>>,
    /// Audit lines written by this manager's commits (0: every call was a no-op).
    lines_written: std::sync::atomic::AtomicUsize,
}

impl<'a> KeyManager<'a> {
    pub fn new(store: &'a dyn KeyStore, policy: TtlPolicy) -> Self {
        KeyManager {
            store,
            policy,
            warnings: std::sync::Mutex::new(Vec::new()),
            lines_written: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Returns (and clears) the non-fatal findings of the commits made so far, such as a store
    /// readable by group or others or a completed interrupted change. Front ends show them.
    pub fn take_warnings(&self) -> Vec<String> {
        let mut g = match self.warnings.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::take(&mut *g)
    }

    /// Commits through the store, keeping its warnings for [`KeyManager::take_warnings`].
    ///
    /// Lines written while a change window is open carry its ticket as `change_window`
    /// ([`crate::window`]), so that readers of the log can tell planned changes from others.
    fn commit(&self, actor: &Actor, now: f64, change: &mut crate::store::Change<'_>) -> Result<()> {
        // A window that cannot be read counts as closed: the action goes ahead (an emergency
        // is never blocked) and is reported as outside a window, with the reason as a warning.
        let ticket = match crate::window::current(self.store, now) {
            Ok(w) => w.map(|w| w.ticket),
            Err(e) => {
                self.warn(format!(
                    "change window unknown, recorded as outside a window: {e}"
                ));
                None
            }
        };
        let info = self.store.commit(actor, now, &mut |keys: &mut KeyMap| {
            let drafts = change(keys)?;
            Ok(match &ticket {
                Some(t) => drafts
                    .into_iter()
                    .map(|d| d.with("change_window", t.clone()))
                    .collect(),
                None => drafts,
            })
        })?;
        if !info.warnings.is_empty() {
            match self.warnings.lock() {
                Ok(mut g) => g.extend(info.warnings),
                Err(p) => p.into_inner().extend(info.warnings),
            }
        }
        self.lines_written
            .fetch_add(info.lines.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Audit lines written so far by this manager (an idempotent call that changed nothing,
    /// such as `bootstrap_admin` on a registered secret, writes none).
    pub fn lines_written(&self) -> usize {
        self.lines_written
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn warn(&self, w: String) {
        match self.warnings.lock() {
            Ok(mut g) => g.push(w),
            Err(p) => p.into_inner().push(w),
        }
    }

    pub fn policy(&self) -> TtlPolicy {
        self.policy
    }

    fn new_record(
        &self,
        req_scope: Scope,
        label: String,
        ttl: TtlRequest,
        origin: Origin,
        now: f64,
    ) -> Result<(KeyRecord, bool)> {
        let exp = self.policy.expiry(now, ttl)?;
        Ok((
            KeyRecord {
                label,
                created: now,
                scope: req_scope,
                expires_at: exp.expires_at,
                permanent: exp.expires_at.is_none(),
                disabled: false,
                origin: Some(origin),
                replaced_by: None,
                extra: None,
                hydration: Default::default(),
            },
            exp.clamped,
        ))
    }

    /// Issues a key (generated, or from a supplied secret).
    pub fn issue(&self, req: IssueRequest, actor: &Actor, now: f64) -> Result<IssuedKey> {
        let label = check_label(&req.label)?;
        let (plaintext, origin) = match req.secret {
            Some(s) => (s, Origin::Supplied),
            None => (PlainToken::generate()?, Origin::Generated),
        };
        let (record, clamped) = self.new_record(req.scope, label, req.ttl, origin, now)?;
        let info = self.insert_new(plaintext.key_id(), record, actor, now)?;
        Ok(IssuedKey {
            plaintext,
            info,
            clamped,
        })
    }

    /// Issues `req` only if the store holds no key when the commit applies: decided inside
    /// the commit, so that of several gateways starting together on one new shared store
    /// (fleet mode), exactly one generates the first admin key. `None`: keys appeared first.
    pub fn issue_if_empty(
        &self,
        req: IssueRequest,
        actor: &Actor,
        now: f64,
    ) -> Result<Option<IssuedKey>> {
        let label = check_label(&req.label)?;
        let (plaintext, origin) = match req.secret {
            Some(s) => (s, Origin::Supplied),
            None => (PlainToken::generate()?, Origin::Generated),
        };
        let (record, clamped) = self.new_record(req.scope, label, req.ttl, origin, now)?;
        let id = plaintext.key_id();
        let mut issued = false;
        self.commit(actor, now, &mut |keys: &mut KeyMap| {
            issued = keys.is_empty();
            if !issued {
                return Ok(Vec::new());
            }
            keys.insert(id.clone(), record.clone());
            Ok(vec![issue_draft(&id, &record)])
        })?;
        if !issued {
            return Ok(None);
        }
        let state = record.state(now);
        Ok(Some(IssuedKey {
            plaintext,
            info: KeyInfo {
                key_id: id,
                record,
                state,
            },
            clamped,
        }))
    }

    /// Adds a new key in one commit, refusing to overwrite an existing id.
    fn insert_new(&self, id: KeyId, record: KeyRecord, actor: &Actor, now: f64) -> Result<KeyInfo> {
        self.commit(actor, now, &mut |keys: &mut KeyMap| {
            if keys.contains_key(&id) {
                return Err(Error::Duplicate(id.to_string()));
            }
            keys.insert(id.clone(), record.clone());
            Ok(vec![issue_draft(&id, &record)])
        })?;
        let state = record.state(now);
        Ok(KeyInfo {
            key_id: id,
            record,
            state,
        })
    }

    /// A new record for a key moved from the environment ([`crate::envkeys::import`]).
    pub(crate) fn env_record(
        &self,
        scope: Scope,
        label: String,
        ttl: TtlRequest,
        now: f64,
    ) -> Result<KeyRecord> {
        let label = check_label(&label)?;
        Ok(self
            .new_record(scope, label, ttl, crate::envkeys::ORIGIN, now)?
            .0)
    }

    /// Adds several new keys in one commit (all or none), refusing to overwrite an existing id.
    pub(crate) fn insert_many(
        &self,
        adds: &[(KeyId, KeyRecord)],
        actor: &Actor,
        now: f64,
    ) -> Result<()> {
        self.commit(actor, now, &mut |keys: &mut KeyMap| {
            let mut drafts = Vec::with_capacity(adds.len());
            for (id, record) in adds {
                if keys.contains_key(id) {
                    return Err(Error::Duplicate(id.to_string()));
                }
                keys.insert(id.clone(), record.clone());
                drafts.push(issue_draft(id, record));
            }
            Ok(drafts)
        })
    }

    /// Registers a key by its hash alone (the plaintext stays in an HSM).
    pub fn import(
        &self,
        key_id: &str,
        scope: Scope,
        label: &str,
        ttl: TtlRequest,
        actor: &Actor,
        now: f64,
    ) -> Result<KeyInfo> {
        let id = KeyId::parse(key_id)?;
        let (record, _) =
            self.new_record(scope, check_label(label)?, ttl, Origin::Imported, now)?;
        self.insert_new(id, record, actor, now)
    }

    /// Revokes (deletes) a key; the audit line keeps its metadata.
    pub fn revoke(
        &self,
        given: &str,
        reason: Option<&str>,
        actor: &Actor,
        now: f64,
    ) -> Result<KeyInfo> {
        self.revoke_with(given, reason, None, actor, now)
    }

    /// [`KeyManager::revoke`] with an idle guard: with `if_idle_secs` set to `w` (finite,
    /// greater than zero), the revocation is refused with [`Error::RecentlyUsed`] when the key
    /// was used after `now - w` according to the store's usage statistics
    /// ([`KeyStore::usage`]) merged with `recent`, a caller's not yet recorded uses (the
    /// gateway's in-memory counts; the later `last_used` wins). The statistics are read before
    /// the commit; the id (a full id or a unique prefix) is resolved and the guard checked
    /// inside it, on the map the revocation applies to. Without `if_idle_secs` this is
    /// [`KeyManager::revoke`] (`recent` is ignored, nothing else is read).
    ///
    /// A usage record that cannot be read refuses a guarded revocation (the guard cannot be
    /// checked): the error names the file, which can be deleted safely.
    pub fn revoke_guarded(
        &self,
        given: &str,
        reason: Option<&str>,
        if_idle_secs: Option<f64>,
        recent: Option<&UsageMap>,
        actor: &Actor,
        now: f64,
    ) -> Result<KeyInfo> {
        let Some(window) = if_idle_secs else {
            return self.revoke_with(given, reason, None, actor, now);
        };
        if !window.is_finite() || window <= 0.0 {
            return Err(Error::InvalidInput(format!(
                "the idle guard (--if-idle, if_idle_secs) must be a finite duration greater than zero, got {window} seconds"
            )));
        }
        // Checked before the statistics are read: a bad reason is the caller's first error.
        if let Some(r) = reason {
            check_text(TextField::Reason, r)?;
        }
        let mut seen = self.store.usage()?;
        if let Some(r) = recent {
            usage::merge(&mut seen, r);
        }
        self.revoke_with(given, reason, Some((window, &seen)), actor, now)
    }

    /// Revokes, refusing (inside the commit) a key used within `guard`'s window.
    fn revoke_with(
        &self,
        given: &str,
        reason: Option<&str>,
        guard: Option<(f64, &UsageMap)>,
        actor: &Actor,
        now: f64,
    ) -> Result<KeyInfo> {
        let reason = reason
            .map(|r| check_text(TextField::Reason, r))
            .transpose()?;
        let mut out = None;
        self.commit(actor, now, &mut |keys: &mut KeyMap| {
            let id = resolve(keys, given)?;
            if let Some((window, seen)) = guard
                && let Some(u) = seen.get(id.as_str())
                && u.last_used > now - window
            {
                return Err(Error::RecentlyUsed {
                    key_id: id.to_string(),
                    last_used: u.last_used,
                    idle_secs: window,
                    last_client: u.last_client.clone(),
                    last_route: u.last_route.clone(),
                });
            }
            let Some(rec) = keys.remove(&id) else {
                return Err(Error::NotFound(id.to_string()));
            };
            let mut d = meta_draft("revoke", &id, &rec);
            if let Some(r) = &reason {
                d = d.with("reason", r.clone());
            }
            out = Some(KeyInfo {
                state: rec.state(now),
                key_id: id,
                record: rec,
            });
            Ok(vec![d])
        })?;
        out.ok_or_else(|| Error::NotFound(given.to_string()))
    }

    /// Suspends (`disabled = true`) or re-enables a key. Idempotent: no line if unchanged.
    pub fn set_disabled(
        &self,
        given: &str,
        disabled: bool,
        actor: &Actor,
        now: f64,
    ) -> Result<KeyInfo> {
        let mut out = None;
        self.commit(actor, now, &mut |keys: &mut KeyMap| {
            let id = resolve(keys, given)?;
            let Some(rec) = keys.get_mut(&id) else {
                return Err(Error::NotFound(id.to_string()));
            };
            let changed = rec.disabled != disabled;
            rec.disabled = disabled;
            let rec = rec.clone();
            out = Some(KeyInfo {
                state: rec.state(now),
                key_id: id.clone(),
                record: rec.clone(),
            });
            Ok(if changed {
                vec![meta_draft(
                    if disabled { "disable" } else { "enable" },
                    &id,
                    &rec,
                )]
            } else {
                vec![]
            })
        })?;
        out.ok_or_else(|| Error::NotFound(given.to_string()))
    }

    /// Issues the replacement first, then revokes the old key (grace 0) or makes it expire
    /// after the grace period, in one commit. Inherits label, scope and TTL unless overridden.
    pub fn rotate(
        &self,
        given: &str,
        req: RotateRequest,
        actor: &Actor,
        now: f64,
    ) -> Result<Rotated> {
        if !req.grace_secs.is_finite() || req.grace_secs < 0.0 {
            return Err(Error::InvalidTtl(
                "grace period must be zero or positive".into(),
            ));
        }
        let label = req.label.as_deref().map(check_label).transpose()?;
        let plaintext = PlainToken::generate()?;
        let new_id = plaintext.key_id();
        let mut out: Option<(KeyRecord, bool, KeyId, f64)> = None;
        self.commit(actor, now, &mut |keys: &mut KeyMap| {
            let old_id = resolve(keys, given)?;
            let old = keys
                .get(&old_id)
                .cloned()
                .ok_or_else(|| Error::NotFound(old_id.to_string()))?;
            match old.state(now) {
                KeyState::Active => {}
                s => return Err(Error::key_state(old_id.as_str(), s, "rotate")),
            }
            if let Some(by) = &old.replaced_by {
                return Err(Error::KeyState {
                    key_id: old_id.to_string(),
                    state: format!("already rotated (replaced by {by})"),
                    action: "rotate".into(),
                    hint: format!("; rotate that key instead: `xai-keys rotate {by}`"),
                });
            }
            let ttl = req.ttl.unwrap_or(match old.ttl_secs() {
                None => TtlRequest::Permanent,
                Some(s) => TtlRequest::Seconds(s),
            });
            let (new_rec, clamped) = self.new_record(
                req.scope.unwrap_or(old.scope),
                label.clone().unwrap_or_else(|| old.label.clone()),
                ttl,
                Origin::Generated,
                now,
            )?;
            if keys.contains_key(&new_id) {
                return Err(Error::Duplicate(new_id.to_string()));
            }
            keys.insert(new_id.clone(), new_rec.clone());
            let mut lines = vec![issue_draft(&new_id, &new_rec)];
            let old_expires_at = if req.grace_secs == 0.0 {
                keys.remove(&old_id);
                lines
                    .push(meta_draft("revoke", &old_id, &old).with("replaced_by", new_id.as_str()));
                now
            } else {
                let until = old
                    .expires_at
                    .map_or(now + req.grace_secs, |e| e.min(now + req.grace_secs));
                if let Some(r) = keys.get_mut(&old_id) {
                    r.expires_at = Some(until);
                    r.permanent = false;
                    r.replaced_by = Some(new_id.to_string());
                }
                lines.push(
                    meta_draft("expire", &old_id, &old)
                        .with("expires_at", until)
                        .with("replaced_by", new_id.as_str()),
                );
                until
            };
            lines.push(
                AuditDraft::new("rotate", Some(new_id.as_str()))
                    .with("replaced", old_id.as_str())
                    .with("scope", new_rec.scope.as_str())
                    .with("expires_at", new_rec.expires_at)
                    .with("permanent", new_rec.permanent)
                    .with("grace_seconds", req.grace_secs),
            );
            out = Some((new_rec, clamped, old_id, old_expires_at));
            Ok(lines)
        })?;
        let (record, clamped, old_key_id, old_expires_at) =
            out.ok_or_else(|| Error::NotFound(given.to_string()))?;
        let state = record.state(now);
        Ok(Rotated {
            new: IssuedKey {
                plaintext,
                info: KeyInfo {
                    key_id: new_id,
                    record,
                    state,
                },
                clamped,
            },
            old_key_id,
            old_expires_at,
        })
    }

    /// Registers an admin key from a pre-provisioned secret; idempotent for the same secret.
    pub fn bootstrap_admin(
        &self,
        secret: &PlainToken,
        label: &str,
        ttl: TtlRequest,
        actor: &Actor,
        now: f64,
    ) -> Result<Bootstrapped> {
        let id = secret.key_id();
        let (record, _) = self.new_record(
            Scope::Admin,
            check_label(label)?,
            ttl,
            Origin::Bootstrap,
            now,
        )?;
        // A secret whose key was revoked must not come back: the variable that carries it
        // often stays in a deployment's environment (reference defect A, by this path). A key
        // still present is fine (idempotent); one absent with history in the log is retired.
        let present = self.store.load(now)?.keys.contains_key(&id);
        if !present {
            let history = self.store.events(&crate::audit::EventQuery {
                limit: 1,
                key_id: Some(id.to_string()),
                ..Default::default()
            })?;
            if !history.events.is_empty() {
                return Err(Error::Retired(id.to_string()));
            }
        }
        let mut existing: Option<KeyRecord> = None;
        self.commit(actor, now, &mut |keys: &mut KeyMap| {
            if let Some(r) = keys.get(&id) {
                if r.scope != Scope::Admin {
                    return Err(Error::KeyState {
                        key_id: id.to_string(),
                        state: format!("already registered with scope {}", r.scope),
                        action: "bootstrap-admin".into(),
                        hint: "; this secret belongs to another key: provision a different secret for the admin key".into(),
                    });
                }
                existing = Some(r.clone());
                return Ok(vec![]);
            }
            keys.insert(id.clone(), record.clone());
            Ok(vec![issue_draft(&id, &record)])
        })?;
        Ok(match existing {
            Some(r) => Bootstrapped {
                info: KeyInfo {
                    state: r.state(now),
                    key_id: id,
                    record: r,
                },
                created: false,
            },
            None => Bootstrapped {
                info: KeyInfo {
                    state: record.state(now),
                    key_id: id,
                    record,
                },
                created: true,
            },
        })
    }

    /// Lists keys (metadata only), oldest first, with filters; also returns load warnings.
    pub fn list(&self, filter: &ListFilter, now: f64) -> Result<(Vec<KeyInfo>, Vec<String>, bool)> {
        let snap = self.store.load(now)?;
        let mut out: Vec<KeyInfo> = snap
            .keys
            .into_iter()
            .map(|(key_id, record)| KeyInfo {
                state: record.state(now),
                key_id,
                record,
            })
            .filter(|k| filter.scope.is_none_or(|s| k.record.scope == s))
            .filter(|k| filter.state.is_none_or(|s| k.state == s))
            .filter(|k| {
                filter.expiring_within.is_none_or(|w| {
                    k.state == KeyState::Active && k.record.expires_at.is_some_and(|e| e - now <= w)
                })
            })
            .collect();
        out.sort_by(|a, b| {
            a.record
                .created
                .total_cmp(&b.record.created)
                .then(a.key_id.cmp(&b.key_id))
        });
        Ok((out, snap.warnings, snap.exists))
    }
}

/// The reference's listing fields plus ours, for JSON output.
pub fn listing_json(k: &KeyInfo, now: f64) -> Value {
    let r = &k.record;
    let mut m = serde_json::Map::new();
    m.insert("label".into(), r.label.clone().into());
    m.insert("created".into(), r.created.into());
    m.insert("scope".into(), r.scope.as_str().into());
    m.insert("expires_at".into(), r.expires_at.into());
    m.insert("permanent".into(), r.permanent.into());
    m.insert("expired".into(), r.is_expired(now).into());
    m.insert("state".into(), k.state.as_str().into());
    m.insert("disabled".into(), r.disabled.into());
    m.insert("origin".into(), r.origin.map(|o| o.as_str()).into());
    m.insert("replaced_by".into(), r.replaced_by.clone().into());
    m.insert("fingerprint".into(), k.key_id.fingerprint().into());
    Value::Object(m)
}

/// [`listing_json`] plus the key's last use: `last_used` (epoch seconds or `null`),
/// `use_count` (0 when none), `last_client` and `last_route` (`null` when none).
pub fn listing_json_with_usage(k: &KeyInfo, usage: Option<&KeyUsage>, now: f64) -> Value {
    let mut v = listing_json(k, now);
    if let Some(m) = v.as_object_mut() {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        m.insert("last_used".into(), usage.map(|u| u.last_used).into());
        m.insert("use_count".into(), usage.map_or(0, |u| u.count).into());
        m.insert(
            "last_client".into(),
            usage.and_then(|u| text(&u.last_client)).into(),
        );
        m.insert(
            "last_route".into(),
            usage.and_then(|u| text(&u.last_route)).into(),
        );
    }
    v
}
