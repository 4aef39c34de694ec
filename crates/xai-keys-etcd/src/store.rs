//! [`EtcdStore`]: the [`KeyStore`] trait on an etcd cluster.
//!
//! Reads fix one revision (a linearizable read of the head) and read everything else at it, so
//! a reader never mixes two commits. Writes are compare-and-swap transactions on the head's
//! `mod_revision` (see [`crate::layout`]): a writer that lost the race reads again and re-runs
//! its change on the new state, so concurrent admins on different nodes never lose each
//! other's updates. The audit lines of a change are written in the same transaction as the
//! change, chained exactly as in the file store's log, so a dump of `<prefix>/log/` is a valid
//! `api_keys.json.log`.
//!
//! A gateway opens the store with `watch` on: a [`crate::mirror::Mirror`] then keeps a copy of
//! the prefix current from etcd's watch stream, `load` and `version` are answered from it, and
//! [`KeyStore::freshness`] says how long it has gone without confirming that copy with a quorum.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, SortOrder, SortTarget, Txn,
    TxnOp,
};
use serde_json::Value;
use xai_keys_core::audit::{
    self, Actor, AuditDraft, AuditEvent, EventPage, EventQuery, FollowBatch, FollowFrom,
    FollowSource, LogFollower,
};
use xai_keys_core::lockdown::Lockdown;
use xai_keys_core::record::{self, KeyMap, KeyRecord, LoadContext, RenderCache};
use xai_keys_core::store::{
    BackupManifest, Change, Check, CommitInfo, Freshness, Integrity, KeyStore, RestoreReport,
    Snapshot, StoreVersion, VerifyOptions, VerifyReport,
};
use xai_keys_core::token::{KeyId, sha256_hex};
use xai_keys_core::usage::{self, KeyUsage, UsageMap};
use xai_keys_core::window::ChangeWindow;
use xai_keys_core::{Error, Result};
use zeroize::Zeroizing;

use crate::bridge::Bridge;
use crate::layout::{HEAD_FORMAT, Head, Layout, prefix_end, usage_shard};
use crate::mirror::Mirror;
use crate::url::EtcdUrl;

/// Keys per range request when reading many (records, log lines).
pub(crate) const PAGE: i64 = 2000;
/// Attempts of a compare-and-swap commit before giving up with [`Error::Busy`].
const MAX_ATTEMPTS: u32 = 64;
/// `prev_hash` of the first line of an empty log (as in the file store).
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// TLS material for `etcds://` (PEM files).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA that signed the members' certificates (required with TLS).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for clusters that require client certificates.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How to reach and use the cluster. Build it with [`EtcdOptions::from_env`].
#[derive(Clone)]
pub struct EtcdOptions {
    pub url: EtcdUrl,
    pub tls: TlsFiles,
    /// etcd's own authentication (user, password).
    pub user: Option<(String, Zeroizing<String>)>,
    /// Bound on each etcd call.
    pub timeout: Duration,
    /// The most operations one transaction may carry: etcd's `--max-txn-ops` (default 128).
    pub max_txn_ops: usize,
    /// Keep a watched copy of the store in memory (gateways).
    pub watch: bool,
    /// Legacy records' default TTL when hydrated (as the file store's option).
    pub default_ttl_secs: f64,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("url", &self.url.to_string())
            .field("tls", &self.tls)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("password", &self.user.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_txn_ops", &self.max_txn_ops)
            .field("watch", &self.watch)
            .finish()
    }
}

impl EtcdOptions {
    /// Options for `url` from `XAI_ETCD_*` settings read through `var`:
    /// `XAI_ETCD_CA_FILE`, `XAI_ETCD_CERT_FILE`, `XAI_ETCD_KEY_FILE` (TLS);
    /// `XAI_ETCD_USER` with `XAI_ETCD_PASSWORD_FILE` (preferred) or `XAI_ETCD_PASSWORD`;
    /// `XAI_ETCD_TIMEOUT` (default 5s); `XAI_ETCD_MAX_TXN_OPS` (default 128).
    pub fn from_env(url: EtcdUrl, var: &dyn Fn(&str) -> Option<String>) -> Result<EtcdOptions> {
        let invalid = |name: &str, value: &str, reason: String| Error::InvalidConfig {
            var: name.into(),
            value: value.into(),
            reason,
        };
        let path = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let tls = TlsFiles {
            ca: path("XAI_ETCD_CA_FILE"),
            cert: path("XAI_ETCD_CERT_FILE"),
            key: path("XAI_ETCD_KEY_FILE"),
        };
        if !url.tls && (tls.ca.is_some() || tls.cert.is_some()) {
            return Err(invalid(
                "XAI_ETCD_CA_FILE",
                &tls.ca.as_deref().unwrap_or(Path::new("")).display().to_string(),
                "TLS files are set but the store URL is etcd:// (plain): use etcds:// to connect with TLS".into(),
            ));
        }
        if url.tls && tls.ca.is_none() {
            return Err(invalid(
                "XAI_ETCD_CA_FILE",
                "",
                "etcds:// needs the cluster's CA certificate: set XAI_ETCD_CA_FILE to its PEM file"
                    .into(),
            ));
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(invalid(
                "XAI_ETCD_CERT_FILE",
                "",
                "a client certificate needs both XAI_ETCD_CERT_FILE and XAI_ETCD_KEY_FILE".into(),
            ));
        }
        let user = match var("XAI_ETCD_USER").filter(|u| !u.is_empty()) {
            None => None,
            Some(u) => {
                let pw = if let Some(p) = path("XAI_ETCD_PASSWORD_FILE") {
                    let bytes = xai_keys_core::store::read_small_regular_file(&p, 4096)?
                        .ok_or_else(|| {
                            invalid(
                                "XAI_ETCD_PASSWORD_FILE",
                                &p.display().to_string(),
                                "no such file".into(),
                            )
                        })?;
                    let s = String::from_utf8(bytes).map_err(|_| {
                        invalid(
                            "XAI_ETCD_PASSWORD_FILE",
                            &p.display().to_string(),
                            "not UTF-8".into(),
                        )
                    })?;
                    Zeroizing::new(s.trim_end_matches(['\r', '\n']).to_string())
                } else if let Some(pw) = var("XAI_ETCD_PASSWORD") {
                    Zeroizing::new(pw)
                } else {
                    return Err(invalid(
                        "XAI_ETCD_USER",
                        &u,
                        "a user needs a password: set XAI_ETCD_PASSWORD_FILE (or XAI_ETCD_PASSWORD)".into(),
                    ));
                };
                Some((u, pw))
            }
        };
        let timeout = match var("XAI_ETCD_TIMEOUT").filter(|v| !v.is_empty()) {
            None => Duration::from_secs(5),
            Some(v) => humantime::parse_duration(&v)
                .ok()
                .filter(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(300))
                .ok_or_else(|| {
                    invalid(
                        "XAI_ETCD_TIMEOUT",
                        &v,
                        "a duration between 100ms and 5m (e.g. 5s)".into(),
                    )
                })?,
        };
        let max_txn_ops = match var("XAI_ETCD_MAX_TXN_OPS").filter(|v| !v.is_empty()) {
            None => 128,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (8..=1_000_000).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "XAI_ETCD_MAX_TXN_OPS",
                        &v,
                        "a whole number from 8 up, at most the cluster's --max-txn-ops".into(),
                    )
                })?,
        };
        Ok(EtcdOptions {
            url,
            tls,
            user,
            timeout,
            max_txn_ops,
            watch: false,
            default_ttl_secs: 0.0,
        })
    }
}

/// Shared by the store, its mirror and its log followers.
pub(crate) struct Inner {
    pub(crate) bridge: Bridge,
    pub(crate) client: Client,
    pub(crate) layout: Layout,
    pub(crate) location: String,
    pub(crate) opts: EtcdOptions,
    /// Kept between commits of a long-running process (the digest of a large store). One cache
    /// for the writer and the watched copy: a commit renders the new records, and the copy that
    /// then receives the same records renders them again from the cache.
    render: Mutex<RenderCache>,
}

impl Inner {
    /// The render cache. Taken after the mirror's lock when both are held, never before.
    pub(crate) fn render(&self) -> std::sync::MutexGuard<'_, RenderCache> {
        self.render
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The key store on etcd. Cheap to share (`Arc` inside).
pub struct EtcdStore {
    pub(crate) inner: Arc<Inner>,
    mirror: Option<Arc<Mirror>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("location", &self.inner.location)
            .finish()
    }
}

/// Record values by key id, as stored. Ids and values are reference-counted: the watched copy,
/// the states parsed from it and the copy a watch response is applied to share every value
/// rather than each holding its own (at 100,000 keys the values are about 25 MB).
pub(crate) type RawRecords = BTreeMap<Arc<str>, Arc<[u8]>>;

/// Everything under the prefix that decides the keys, read at one revision.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawState {
    pub rev: i64,
    /// The head's value and `mod_revision`.
    pub head: Option<(Vec<u8>, i64)>,
    /// Record values by key id.
    pub records: RawRecords,
    pub window: Option<Vec<u8>>,
    pub lockdown: Option<Vec<u8>>,
    /// The last log line: its sequence number and text.
    pub tail: Option<(u64, Vec<u8>)>,
}

/// A [`RawState`] parsed and checked.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub raw: RawState,
    pub head: Option<Head>,
    pub keys: KeyMap,
    pub digest: String,
    pub integrity: Integrity,
    pub warnings: Vec<String>,
}

/// What one attempt of a change wants written.
pub(crate) struct Step {
    pub drafts: Vec<AuditDraft>,
    pub ops: Vec<TxnOp>,
}

/// Reads `[start, end)` at `rev` (0: now), page by page. Returns the pairs and the revision read.
pub(crate) async fn range_all(
    mut kv: KvClient,
    start: Vec<u8>,
    end: Vec<u8>,
    rev: i64,
) -> std::result::Result<(Vec<(Vec<u8>, Vec<u8>)>, i64), etcd_client::Error> {
    let mut out = Vec::new();
    let mut from = start;
    let mut rev = rev;
    loop {
        let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if rev > 0 {
            o = o.with_revision(rev);
        }
        let mut r = kv.get(from.clone(), Some(o)).await?;
        if rev <= 0 {
            rev = r.header().map_or(0, |h| h.revision());
        }
        let more = r.more();
        let kvs = r.take_kvs();
        let last = kvs.last().map(|kv| kv.key().to_vec());
        out.extend(kvs.into_iter().map(|kv| kv.into_key_value()));
        match last {
            Some(mut k) if more => {
                k.push(0);
                from = k;
            }
            _ => break,
        }
    }
    Ok((out, rev))
}

/// The last log entry at `rev`.
pub(crate) async fn log_tail(
    kv: &mut KvClient,
    layout: &Layout,
    rev: i64,
) -> std::result::Result<Option<(u64, Vec<u8>)>, etcd_client::Error> {
    let dir = layout.log_dir();
    let mut o = GetOptions::new()
        .with_range(prefix_end(&dir))
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(1);
    if rev > 0 {
        o = o.with_revision(rev);
    }
    let r = kv.get(dir, Some(o)).await?;
    Ok(r.kvs()
        .first()
        .and_then(|kv| Some((layout.log_seq(kv.key())?, kv.value().to_vec()))))
}

/// One consistent read of everything that decides the keys: one read-only transaction (a
/// single linearizable round trip at one revision) for the head, the window, the lockdown, the
/// last log line and the first page of records; further pages, if any, at the same revision.
pub(crate) async fn read_raw(
    client: Client,
    layout: Layout,
) -> std::result::Result<RawState, etcd_client::Error> {
    let mut kv = client.kv_client();
    let dir = layout.keys_dir();
    let log_dir = layout.log_dir();
    let txn = Txn::new().and_then(vec![
        TxnOp::get(layout.head(), None),
        TxnOp::get(layout.window(), None),
        TxnOp::get(layout.lockdown(), None),
        TxnOp::get(
            log_dir.clone(),
            Some(
                GetOptions::new()
                    .with_range(prefix_end(&log_dir))
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(1),
            ),
        ),
        TxnOp::get(
            dir.clone(),
            Some(
                GetOptions::new()
                    .with_range(prefix_end(&dir))
                    .with_limit(PAGE),
            ),
        ),
    ]);
    let r = kv.txn(txn).await?;
    let rev = r.header().map_or(0, |h| h.revision());
    let mut gets = r.op_responses().into_iter().map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let mut next = || {
        gets.next().flatten().ok_or_else(|| {
            etcd_client::Error::InvalidArgs("the store read's transaction answered short".into())
        })
    };
    let (head, window, lockdown, tail, first) = (next()?, next()?, next()?, next()?, next()?);
    let head = head
        .kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision()));
    let window = window.kvs().first().map(|kv| kv.value().to_vec());
    let lockdown = lockdown.kvs().first().map(|kv| kv.value().to_vec());
    let tail = tail
        .kvs()
        .first()
        .and_then(|kv| Some((layout.log_seq(kv.key())?, kv.value().to_vec())));
    let mut records = BTreeMap::new();
    let mut last_key = None;
    for kv in first.kvs() {
        if let Some(id) = layout.key_id(kv.key()) {
            records.insert(Arc::from(id), Arc::from(kv.value()));
        }
        last_key = Some(kv.key().to_vec());
    }
    if first.more()
        && let Some(mut from) = last_key
    {
        from.push(0);
        let (pairs, _) = range_all(kv.clone(), from, prefix_end(&dir), rev).await?;
        for (k, v) in pairs {
            if let Some(id) = layout.key_id(&k) {
                records.insert(Arc::from(id), Arc::from(v));
            }
        }
    }
    Ok(RawState {
        rev,
        head,
        records,
        window,
        lockdown,
        tail,
    })
}

/// Parses record values into a map, through the file store's own parser (the same checks,
/// the same legacy hydration).
pub(crate) fn parse_records(
    records: &RawRecords,
    location: &str,
    ctx: LoadContext,
) -> Result<KeyMap> {
    let mut buf = Vec::with_capacity(records.values().map(|v| v.len() + 72).sum::<usize>() + 2);
    buf.push(b'{');
    for (i, (id, v)) in records.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        // Ids come from key names: quote them as JSON strings (a bad one fails the parse).
        let quoted = serde_json::to_vec(&**id).unwrap_or_default();
        buf.extend_from_slice(&quoted);
        buf.push(b':');
        buf.extend_from_slice(v);
    }
    buf.push(b'}');
    record::parse_store(&buf, Path::new(&format!("{location}/keys/")), ctx)
}

/// The `prev_hash` the next line links to, from the log's last line (or zeros when empty).
/// `None` when the last line is a legacy (unchained) line: the caller hashes the whole log.
fn tail_link(tail: &Option<(u64, Vec<u8>)>) -> Option<String> {
    match tail {
        None => Some(ZERO_HASH.to_string()),
        Some((_, line)) => serde_json::from_slice::<AuditEvent>(line)
            .ok()
            .filter(audit::is_chained)
            .and_then(|o| audit::str_field(&o, "hash").map(str::to_string)),
    }
}

impl State {
    pub(crate) fn from_raw(
        raw: RawState,
        location: &str,
        ctx: LoadContext,
        render: &mut RenderCache,
    ) -> Result<State> {
        let keys = parse_records(&raw.records, location, ctx)?;
        State::from_parsed(raw, keys, location, render)
    }

    /// [`State::from_raw`] with the records already parsed as `keys` (the watched copy parses
    /// only the records a change touched).
    pub(crate) fn from_parsed(
        raw: RawState,
        keys: KeyMap,
        location: &str,
        render: &mut RenderCache,
    ) -> Result<State> {
        let bytes = record::render_store_cached(&keys, render);
        let digest = render.digest(&bytes);
        let mut warnings = Vec::new();
        let head = match &raw.head {
            None => None,
            Some((v, _)) => match serde_json::from_slice::<Head>(v) {
                Ok(h) if h.format == HEAD_FORMAT => Some(h),
                Ok(h) => {
                    return Err(Error::CorruptStore {
                        path: PathBuf::from(format!("{location}/head")),
                        problem: format!(
                            "format {:?} is not {HEAD_FORMAT:?} (written by a newer xai-keys?)",
                            h.format
                        ),
                        line: None,
                        column: None,
                    });
                }
                Err(e) => {
                    return Err(Error::CorruptStore {
                        path: PathBuf::from(format!("{location}/head")),
                        problem: e.to_string(),
                        line: None,
                        column: None,
                    });
                }
            },
        };
        let legacy = keys.values().filter(|r| r.hydration.any()).count();
        if legacy > 0 {
            warnings.push(format!(
                "{legacy} legacy record(s) lack created/scope/expires_at; defaults are shown and will be written by the next change"
            ));
        }
        let integrity = match (&head, &raw.tail) {
            (None, None) if keys.is_empty() => Integrity::NoChainYet,
            (None, None) => Integrity::Erased,
            (None, Some((seq, _))) => Integrity::Unverifiable(format!(
                "{seq} audit line(s) but no head: a migration or restore into this prefix was interrupted; run it again"
            )),
            (Some(h), tail) => {
                let tail_ok = match tail {
                    Some((seq, line)) => {
                        *seq == h.seq
                            && serde_json::from_slice::<AuditEvent>(line)
                                .ok()
                                .and_then(|o| audit::str_field(&o, "hash").map(str::to_string))
                                .is_some_and(|x| x == h.hash)
                    }
                    None => h.seq == 0,
                };
                if !tail_ok {
                    Integrity::Unverifiable(format!(
                        "the head records line {} ({}) but the log ends elsewhere: the log was edited or truncated outside xai-keys",
                        h.seq,
                        xai_keys_core::token::short(&h.hash)
                    ))
                } else if h.store_sha256 != digest {
                    Integrity::Mismatch
                } else {
                    Integrity::Recorded
                }
            }
        };
        Ok(State {
            raw,
            head,
            keys,
            digest,
            integrity,
            warnings,
        })
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            keys: self.keys.clone(),
            exists: self.head.is_some() || !self.keys.is_empty(),
            warnings: self.warnings.clone(),
            integrity: self.integrity.clone(),
        }
    }
}

impl EtcdStore {
    /// Connects to the cluster (checking that it answers) and, with `opts.watch`, starts the
    /// watched copy.
    pub fn open(opts: EtcdOptions) -> Result<EtcdStore> {
        let location = opts.url.to_string();
        let bridge = Bridge::new(location.clone(), opts.timeout)?;
        let mut copts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(opts.timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((u, p)) = &opts.user {
            // etcd's simple tokens expire (5 min by default): a long-running gateway renews.
            copts = copts
                .with_user(u.clone(), p.to_string())
                .with_auto_token_refresh(true);
        }
        if opts.url.tls {
            let read = |p: &Path, what: &str| {
                std::fs::read(p).map_err(|e| Error::InvalidConfig {
                    var: what.into(),
                    value: p.display().to_string(),
                    reason: format!("cannot read it: {e}"),
                })
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &opts.tls.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(
                    ca,
                    "XAI_ETCD_CA_FILE",
                )?));
            }
            if let (Some(c), Some(k)) = (&opts.tls.cert, &opts.tls.key) {
                let key = Zeroizing::new(read(k, "XAI_ETCD_KEY_FILE")?);
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read(c, "XAI_ETCD_CERT_FILE")?,
                    &*key,
                ));
            }
            copts = copts.with_tls(tls);
        }
        let endpoints = opts.url.endpoint_urls();
        let client = bridge.run("connect", async move {
            Client::connect(endpoints, Some(copts)).await
        })?;
        let inner = Arc::new(Inner {
            bridge,
            client,
            layout: Layout::new(&opts.url.prefix),
            location,
            opts: opts.clone(),
            render: Mutex::new(RenderCache::default()),
        });
        // Fail now, with a clear message, if the cluster does not answer.
        let c = inner.client.clone();
        let head = inner.layout.head();
        inner.bridge.run("read the store's head", async move {
            c.kv_client().get(head, None).await.map(|_| ())
        })?;
        let mirror = if opts.watch {
            Some(Mirror::start(inner.clone())?)
        } else {
            None
        };
        Ok(EtcdStore { inner, mirror })
    }

    pub(crate) fn ctx(&self, now: f64) -> LoadContext {
        LoadContext {
            now,
            default_ttl_secs: self.inner.opts.default_ttl_secs,
        }
    }

    fn render(&self) -> std::sync::MutexGuard<'_, RenderCache> {
        self.inner.render()
    }

    /// Reads and checks the current state (one revision).
    pub(crate) fn read_state(&self, now: f64) -> Result<State> {
        self.read_state_with(now, false)
    }

    /// [`EtcdStore::read_state`]; `tolerant`: records that do not parse are read as no keys
    /// with the state `Unverifiable` (kept raw, so that a replacing change deletes them), for
    /// the one change that must work on a damaged store: restore.
    pub(crate) fn read_state_with(&self, now: f64, tolerant: bool) -> Result<State> {
        let (c, l) = (self.inner.client.clone(), self.inner.layout.clone());
        let raw = self
            .inner
            .bridge
            .run_read("read the store", move || read_raw(c.clone(), l.clone()))?;
        match State::from_raw(
            raw.clone(),
            &self.inner.location,
            self.ctx(now),
            &mut self.render(),
        ) {
            Err(e @ Error::CorruptStore { .. }) if tolerant => Ok(State {
                head: None,
                keys: KeyMap::new(),
                digest: String::new(),
                integrity: Integrity::Unverifiable(e.to_string()),
                warnings: vec![format!(
                    "the live records are unreadable ({e}); they are replaced"
                )],
                raw,
            }),
            other => other,
        }
    }

    /// The whole audit log as the file store's bytes (one line per entry, `\n`-terminated),
    /// read at `rev` (0: now), and the number of lines.
    pub(crate) fn dump_log(&self, rev: i64) -> Result<(Vec<u8>, usize)> {
        let kv = self.inner.client.kv_client();
        let dir = self.inner.layout.log_dir();
        let (pairs, _) = self.inner.bridge.run_for(
            "read the audit log",
            self.inner.bridge.timeout() * 12,
            async move { range_all(kv, dir.as_bytes().to_vec(), prefix_end(&dir), rev).await },
        )?;
        let mut out = Vec::with_capacity(pairs.iter().map(|(_, v)| v.len() + 1).sum());
        for (_, v) in &pairs {
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        Ok((out, pairs.len()))
    }

    /// The store's location for error paths (`etcd://…/prefix/<what>`).
    pub(crate) fn path_of(&self, what: &str) -> PathBuf {
        PathBuf::from(format!("{}/{what}", self.inner.location))
    }

    fn unanchored(&self, st: &State) -> Error {
        let detail = match &st.integrity {
            Integrity::Mismatch => format!(
                "records under {}/keys/ hash to {}, the head records {}",
                self.inner.location,
                xai_keys_core::token::short(&st.digest),
                st.head
                    .as_ref()
                    .map_or("nothing", |h| xai_keys_core::token::short(&h.store_sha256))
            ),
            Integrity::Erased => "records exist but there is no head or audit log".into(),
            Integrity::Unverifiable(why) => why.clone(),
            _ => String::new(),
        };
        Error::StoreMismatch {
            store: PathBuf::from(&self.inner.location),
            detail,
        }
    }

    /// Runs `step` on a fresh read and commits what it returns, compare-and-swap on the head;
    /// on a lost race, reads again and re-runs it. `Ok(None)`: the step chose to write nothing.
    pub(crate) fn transact(
        &self,
        actor: &Actor,
        now: f64,
        anchored_only: bool,
        step: &mut dyn FnMut(&State, &mut KeyMap) -> Result<Option<Step>>,
    ) -> Result<Option<CommitInfo>> {
        self.transact_with(actor, now, anchored_only, false, step)
    }

    /// [`EtcdStore::transact`]; `tolerant_reads` (with `anchored_only` off): unreadable
    /// records are read as none (restore replaces them).
    pub(crate) fn transact_with(
        &self,
        actor: &Actor,
        now: f64,
        anchored_only: bool,
        tolerant_reads: bool,
        step: &mut dyn FnMut(&State, &mut KeyMap) -> Result<Option<Step>>,
    ) -> Result<Option<CommitInfo>> {
        let layout = &self.inner.layout;
        let mut transport_retries = 0;
        // Set when an attempt lost a race or its transport failed: the next one backs off. An
        // attempt on the watched copy that is decided again on a fresh read does not wait.
        let mut back_off = false;
        for attempt in 0..MAX_ATTEMPTS {
            if std::mem::take(&mut back_off) {
                // Jittered backoff: 2-20 ms growing with the attempt, so writers spread out.
                let mut b = [0u8; 1];
                let _ = getrandom::fill(&mut b);
                let ms = 2 + u64::from(attempt.min(9)) * 2 + u64::from(b[0] % 8);
                std::thread::sleep(Duration::from_millis(ms));
            }
            let tolerant = !anchored_only && tolerant_reads;
            // A gateway's first attempt starts from its watched copy instead of reading every
            // record again: the compare-and-swap on the head's revision commits it only if
            // nothing changed since that copy's revision. Anything else the attempt would decide
            // from the copy (a refusal, an error, nothing to do) is decided again on a fresh
            // read, so only a commit the cluster accepted rests on the copy.
            let from_copy = match (&self.mirror, attempt, tolerant) {
                (Some(m), 0, false) => m.state(),
                _ => None,
            };
            let on_copy = from_copy.is_some();
            let st = match from_copy {
                Some(st) => st,
                None => Arc::new(self.read_state_with(now, tolerant)?),
            };
            if anchored_only && !st.integrity.is_consistent() {
                if on_copy {
                    continue;
                }
                return Err(self.unanchored(&st));
            }
            let mut keys = st.keys.clone();
            let step_out = match step(&st, &mut keys) {
                Ok(Some(out)) if !(out.drafts.is_empty() && out.ops.is_empty()) => out,
                _ if on_copy => continue,
                Ok(Some(_)) => {
                    return Ok(Some(CommitInfo {
                        lines: Vec::new(),
                        store_sha256: String::new(),
                        warnings: st.warnings.clone(),
                    }));
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(e),
            };
            // Only the records that changed are rendered again (the store's render cache).
            let digest = {
                let mut render = self.render();
                let bytes = record::render_store_cached(&keys, &mut render);
                render.digest(&bytes)
            };
            let mut prev = match tail_link(&st.raw.tail) {
                Some(h) => h,
                None => sha256_hex(&self.dump_log(st.raw.rev)?.0),
            };
            let first_seq = st.raw.tail.as_ref().map_or(0, |t| t.0) + 1;
            let mut ops: Vec<TxnOp> = Vec::new();
            // Records: only what changed.
            for (id, rec) in &keys {
                if let Some(v) = rewritten_value(&st, id, rec)? {
                    ops.push(TxnOp::put(layout.key(id.as_str()), v, None));
                }
            }
            let kept: std::collections::BTreeSet<&str> = keys.keys().map(|k| k.as_str()).collect();
            for id in st.raw.records.keys() {
                if !kept.contains(&**id) {
                    ops.push(TxnOp::delete(layout.key(id), None));
                }
            }
            // Audit lines, marked as the file store marks a multi-line commit.
            let last = step_out.drafts.len().saturating_sub(1);
            let mut lines = Vec::with_capacity(step_out.drafts.len());
            let mut first_text = None;
            for (i, d) in step_out.drafts.iter().enumerate() {
                let marked;
                let d = if i < last {
                    marked = d.clone().with(audit::TX_CONTINUES, true);
                    &marked
                } else {
                    d
                };
                let (event, h) = audit::build_event(now, d, actor, &digest, &prev);
                let text = Value::Object(event.clone()).to_string();
                if first_text.is_none() {
                    first_text = Some(text.clone());
                }
                ops.push(TxnOp::put(layout.log(first_seq + i as u64), text, None));
                prev = h;
                lines.push(event);
            }
            let head = Head {
                format: HEAD_FORMAT.into(),
                seq: first_seq + step_out.drafts.len() as u64 - 1,
                hash: prev.clone(),
                store_sha256: digest.clone(),
                keys: keys.len(),
                updated: now,
            };
            if step_out.drafts.is_empty() {
                // Nothing audited: only the step's own operations (never used for keys).
            } else {
                let hv = serde_json::to_vec(&head)
                    .map_err(|e| Error::InvalidInput(format!("cannot serialise head: {e}")))?;
                ops.push(TxnOp::put(layout.head(), hv, None));
            }
            ops.extend(step_out.ops);
            if ops.len() > self.inner.opts.max_txn_ops {
                return Err(Error::InvalidInput(format!(
                    "this change needs {} operations in one etcd transaction, more than XAI_ETCD_MAX_TXN_OPS={} (etcd's --max-txn-ops, 128 by default). Raise the cluster's --max-txn-ops and XAI_ETCD_MAX_TXN_OPS together, or make the change in smaller parts",
                    ops.len(),
                    self.inner.opts.max_txn_ops
                )));
            }
            let cmp = match &st.raw.head {
                Some((_, m)) => Compare::mod_revision(layout.head(), CompareOp::Equal, *m),
                None => Compare::version(layout.head(), CompareOp::Equal, 0),
            };
            // An empty log must still be empty (a migration may be copying into it).
            let mut cmps = vec![cmp];
            if st.raw.head.is_none() {
                cmps.push(Compare::version(layout.log(first_seq), CompareOp::Equal, 0));
            }
            let txn = Txn::new().when(cmps).and_then(ops);
            let mut kv = self.inner.client.kv_client();
            let res = self
                .inner
                .bridge
                .run("commit", async move { kv.txn(txn).await });
            match res {
                Ok(r) if r.succeeded() => {
                    // Read your writes: a gateway's watched copy reaches this revision before
                    // the change is acknowledged, so the gateway's own index (rebuilt right
                    // after the commit) already enforces it.
                    if let (Some(m), Some(h)) = (&self.mirror, r.header()) {
                        m.wait_for(h.revision(), self.inner.bridge.timeout());
                    }
                    return Ok(Some(CommitInfo {
                        lines,
                        store_sha256: digest,
                        warnings: st.warnings.clone(),
                    }));
                }
                Ok(_) => {
                    // Someone else committed first (or the watched copy was behind): read again.
                    back_off = !on_copy;
                    continue;
                }
                Err(e) => {
                    // The outcome is unknown: look for our first line where it would be.
                    let Some(text) = first_text else {
                        return Err(e);
                    };
                    let kv = self.inner.client.kv_client();
                    let key = layout.log(first_seq);
                    let found = self.inner.bridge.run_read("check the commit", move || {
                        let (mut kv, key) = (kv.clone(), key.clone());
                        async move {
                            kv.get(key, None)
                                .await
                                .map(|r| r.kvs().first().map(|kv| kv.value().to_vec()))
                        }
                    });
                    match found {
                        Ok(Some(v)) if v == text.as_bytes() => {
                            return Ok(Some(CommitInfo {
                                lines,
                                store_sha256: digest,
                                warnings: st.warnings.clone(),
                            }));
                        }
                        // Not applied, and the cluster answers again: read and try again (a
                        // connection that failed once after an outage), a few times at most.
                        Ok(_) if transport_retries < 3 => {
                            transport_retries += 1;
                            back_off = true;
                            continue;
                        }
                        Ok(_) => {
                            return Err(Error::Unavailable {
                                store: self.inner.location.clone(),
                                problem: format!("{e}; nothing was changed"),
                            });
                        }
                        Err(_) => {
                            return Err(Error::Unavailable {
                                store: self.inner.location.clone(),
                                problem: format!(
                                    "{e}; the change may or may not have been applied: check with `xai-keys events` once the cluster answers"
                                ),
                            });
                        }
                    }
                }
            }
        }
        Err(Error::Busy {
            store: self.inner.location.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    fn parse_window(&self, v: &[u8]) -> Result<ChangeWindow> {
        let corrupt = |problem: String| Error::CorruptWindow {
            path: self.path_of("window"),
            problem,
        };
        let w: ChangeWindow = serde_json::from_slice(v).map_err(|e| corrupt(e.to_string()))?;
        xai_keys_core::window::check_recorded(&w).map_err(corrupt)?;
        Ok(w)
    }

    fn parse_lockdown(&self, v: &[u8]) -> Result<Lockdown> {
        let corrupt = |problem: String| Error::CorruptLockdown {
            path: self.path_of("lockdown"),
            problem,
        };
        let l: Lockdown = serde_json::from_slice(v).map_err(|e| corrupt(e.to_string()))?;
        xai_keys_core::lockdown::check_recorded(&l).map_err(corrupt)?;
        Ok(l)
    }

    fn get_value(&self, key: String) -> Result<Option<Vec<u8>>> {
        let kv = self.inner.client.kv_client();
        self.inner.bridge.run_read("read", move || {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move {
                kv.get(key, None)
                    .await
                    .map(|r| r.kvs().first().map(|kv| kv.value().to_vec()))
            }
        })
    }

    /// The watched copy's state, when this store keeps one and it is loaded.
    fn mirrored(&self) -> Option<Arc<State>> {
        self.mirror.as_ref().and_then(|m| m.state())
    }
}

impl KeyStore for EtcdStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn freshness(&self) -> Freshness {
        match &self.mirror {
            Some(m) => m.freshness(),
            None => Freshness::Live,
        }
    }

    fn load(&self, now: f64) -> Result<Snapshot> {
        if let Some(st) = self.mirrored() {
            return Ok(st.snapshot());
        }
        Ok(self.read_state(now)?.snapshot())
    }

    fn version(&self) -> Result<StoreVersion> {
        if let Some(m) = &self.mirror
            && let Some(v) = m.version()
        {
            return Ok(StoreVersion(v));
        }
        // Any write anywhere in the cluster moves its revision: a reload may be needless,
        // never missed.
        let kv = self.inner.client.kv_client();
        let head = self.inner.layout.head();
        let rev = self.inner.bridge.run_read("read the revision", move || {
            let (mut kv, head) = (kv.clone(), head.clone());
            async move {
                kv.get(head, Some(GetOptions::new().with_count_only()))
                    .await
                    .map(|r| r.header().map_or(0, |h| h.revision()))
            }
        })?;
        Ok(StoreVersion(format!("etcd:{rev}")))
    }

    fn wait_for_change(&self, seen: Option<&StoreVersion>, limit: Duration) {
        match &self.mirror {
            Some(m) => m.wait_for_change(seen.map(|v| v.0.as_str()), limit),
            None => std::thread::sleep(limit),
        }
    }

    fn commit(&self, actor: &Actor, now: f64, change: &mut Change<'_>) -> Result<CommitInfo> {
        let info = self.transact(actor, now, true, &mut |_st, keys| {
            Ok(Some(Step {
                drafts: change(keys)?,
                ops: Vec::new(),
            }))
        })?;
        Ok(info.unwrap_or_default())
    }

    fn events(&self, q: &EventQuery) -> Result<EventPage> {
        if q.limit == 0 || q.limit > audit::MAX_EVENT_LIMIT {
            return Err(Error::InvalidInput(format!(
                "limit must be between 1 and {}, got {}",
                audit::MAX_EVENT_LIMIT,
                q.limit
            )));
        }
        let layout = self.inner.layout.clone();
        let kv = self.inner.client.kv_client();
        let q2 = q.clone();
        let (events, end) = self.inner.bridge.run_for(
            "read audit events",
            self.inner.bridge.timeout() * 12,
            async move {
                let mut kv = kv;
                let dir = layout.log_dir();
                let end_key = prefix_end(&dir);
                let mut rev = 0;
                let mut upper = end_key.clone();
                let mut found: Vec<AuditEvent> = Vec::new();
                let mut end_seq = 0u64;
                loop {
                    let mut o = GetOptions::new()
                        .with_range(upper.clone())
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(PAGE);
                    if rev > 0 {
                        o = o.with_revision(rev);
                    }
                    let r = kv.get(dir.clone(), Some(o)).await?;
                    if rev == 0 {
                        rev = r.header().map_or(0, |h| h.revision());
                        end_seq = r
                            .kvs()
                            .first()
                            .and_then(|kv| layout.log_seq(kv.key()))
                            .unwrap_or(0);
                    }
                    let mut older = false;
                    for kv in r.kvs() {
                        let Ok(obj) = serde_json::from_slice::<AuditEvent>(kv.value()) else {
                            continue;
                        };
                        // The log is chronological (as the file store reads it): nothing
                        // older than `since` can match.
                        if let (Some(since), Some(ts)) =
                            (q2.since, obj.get("timestamp").and_then(Value::as_f64))
                            && ts < since
                        {
                            older = true;
                            break;
                        }
                        if audit::matches(&obj, &q2) {
                            found.push(obj);
                            if found.len() >= q2.limit {
                                break;
                            }
                        }
                    }
                    let done = older || found.len() >= q2.limit || !r.more();
                    match r.kvs().last() {
                        Some(last) if !done => upper = last.key().to_vec(),
                        _ => break,
                    }
                }
                found.reverse();
                Ok((found, end_seq))
            },
        )?;
        Ok(EventPage {
            events,
            end_offset: end + 1,
            file_id: None,
        })
    }

    fn verify(&self, actor: &Actor, now: f64, opts: VerifyOptions) -> Result<VerifyReport> {
        let mut checks = Vec::new();
        let mut push = |name: &str, status: &'static str, detail: String| {
            checks.push(Check {
                name: name.into(),
                status,
                detail,
            })
        };
        // The cluster
        let mut c = self.inner.client.clone();
        match self
            .inner
            .bridge
            .run("read the cluster's status", async move {
                let members = c.member_list().await?;
                let st = c.status().await?;
                Ok((
                    members.members().len(),
                    st.leader(),
                    st.version().to_string(),
                ))
            }) {
            Ok((n, leader, version)) => push(
                "etcd cluster",
                "ok",
                format!("{n} member(s), leader {leader:x}, etcd {version}"),
            ),
            Err(e) => push("etcd cluster", "fail", e.to_string()),
        }
        let mut notes = Vec::new();
        if opts.adopt {
            let ticket = xai_keys_core::window::current(self, now)
                .ok()
                .flatten()
                .map(|w| w.ticket);
            match self.transact(actor, now, false, &mut |st, keys| {
                let mut d = AuditDraft::new("adopt", None)
                    .with(
                        "detail",
                        "records under the etcd prefix accepted as the audited state by verify --adopt",
                    )
                    .with("keys", keys.len());
                if let Some(t) = &ticket {
                    d = d.with("change_window", t.clone());
                }
                if matches!(st.integrity, Integrity::Unverifiable(_)) && st.head.is_none() {
                    // Interrupted migration: nothing to adopt until it is finished.
                    return Err(self.unanchored(st));
                }
                Ok(Some(Step {
                    drafts: vec![d],
                    ops: Vec::new(),
                }))
            }) {
                Ok(info) => notes.extend(info.map(|i| i.warnings).unwrap_or_default()),
                Err(e) => push("adopt", "fail", e.to_string()),
            }
        }
        for n in notes {
            push("recovery", "warn", n);
        }
        let mut keys_n = 0;
        let mut log_lines = 0;
        match self.read_state(now) {
            Err(e) => push("store", "fail", e.to_string()),
            Ok(st) => {
                keys_n = st.keys.len();
                if st.warnings.is_empty() {
                    push("store", "ok", format!("{keys_n} valid records"));
                } else {
                    push(
                        "store",
                        "warn",
                        format!("{keys_n} valid records; {}", st.warnings.join("; ")),
                    );
                }
                match self.dump_log(st.raw.rev) {
                    Err(e) => push("audit chain", "fail", e.to_string()),
                    Ok((bytes, n)) => {
                        log_lines = n;
                        match audit::verify_chain_bytes(&bytes, &self.path_of("log")) {
                            Err(e) => push("audit chain", "fail", e.to_string()),
                            Ok(rep) => match &rep.first_error {
                                Some((line, p)) => {
                                    push("audit chain", "fail", format!("line {line}: {p}"))
                                }
                                None => push(
                                    "audit chain",
                                    "ok",
                                    format!(
                                        "{} lines ({} chained, {} legacy), every link verified",
                                        rep.lines, rep.chained_lines, rep.legacy_lines
                                    ),
                                ),
                            },
                        }
                    }
                }
                match &st.integrity {
                    Integrity::Recorded => push(
                        "store matches log",
                        "ok",
                        format!(
                            "records hash to {}, as the head and line {} record",
                            xai_keys_core::token::short(&st.digest),
                            st.head.as_ref().map_or(0, |h| h.seq)
                        ),
                    ),
                    Integrity::NoChainYet => {
                        push("store matches log", "ok", "nothing written yet".into())
                    }
                    _ => push(
                        "store matches log",
                        "fail",
                        self.unanchored(&st).to_string(),
                    ),
                }
                if let Some(v) = &st.raw.window
                    && let Err(e) = self.parse_window(v)
                {
                    push("change window", "fail", e.to_string());
                }
                if let Some(v) = &st.raw.lockdown
                    && let Err(e) = self.parse_lockdown(v)
                {
                    push("lockdown", "fail", e.to_string());
                }
            }
        }
        let ok = checks.iter().all(|c| c.status != "fail");
        Ok(VerifyReport {
            store: self.inner.location.clone(),
            log: format!("{}/log/", self.inner.location),
            ok,
            keys: keys_n,
            log_lines,
            checks,
        })
    }

    fn backup(&self, out: &Path, now: f64) -> Result<BackupManifest> {
        let st = self.read_state(now)?;
        if !st.integrity.is_consistent() {
            return Err(self.unanchored(&st));
        }
        let (log, _) = self.dump_log(st.raw.rev)?;
        let store_bytes = record::render_store(&st.keys);
        xai_keys_core::backup::write_backup_dir(
            out,
            &self.inner.location,
            &store_bytes,
            st.keys.len(),
            &log,
            now,
        )
    }

    fn restore(&self, from: &Path, actor: &Actor, now: f64) -> Result<RestoreReport> {
        let (manifest, backup_keys, backup_log) = xai_keys_core::backup::read_backup(from, now)?;
        // Into an empty prefix: the backup's log becomes the start of this one.
        let st = self.read_state_with(now, true)?;
        if st.head.is_none() && st.raw.tail.is_none() && !backup_log.is_empty() {
            crate::migrate::seed_log(self, &backup_log)?;
        }
        let window = xai_keys_core::window::current(self, now).ok().flatten();
        // Records one transaction may change: the cluster's limit less the restore's audit
        // line, the head and a margin.
        let budget = self.inner.opts.max_txn_ops.saturating_sub(4).max(1);
        let mut report: Option<RestoreReport> = None;
        let mut part = 0usize;
        // Changes left after the last part: each part must leave fewer.
        let mut left_before: Option<usize> = None;
        loop {
            part += 1;
            // Each part is planned again on the state it commits to: a key revoked between two
            // parts is left out of the parts after it, as a single restore would leave it out.
            let mut planned_report = None;
            let mut finished = false;
            let mut left_before_next = None;
            self.transact_with(actor, now, false, true, &mut |st, keys| {
                let (live_log, _) = self.dump_log(st.raw.rev)?;
                let (planned, mut draft, rep) = xai_keys_core::backup::plan_restore(
                    from,
                    &manifest,
                    &backup_keys,
                    &backup_log,
                    &live_log,
                    &st.keys,
                    window.as_ref(),
                );
                let changes = restore_changes(st, &planned);
                if left_before.is_some_and(|before| changes.len() > before) {
                    // Other writers are adding changes faster than the parts apply them.
                    return Err(Error::Unavailable {
                        store: self.inner.location.clone(),
                        problem: format!(
                            "the restore from {} is not converging: {} record changes are left after part {}, more than the {} left before it; other writers keep changing the store. Every part so far is committed and audited (restrictions first); stop the other writers and run the restore again to finish it",
                            from.display(),
                            changes.len(),
                            part - 1,
                            left_before.unwrap_or_default()
                        ),
                    });
                }
                finished = changes.len() <= budget;
                if finished {
                    *keys = planned;
                    if part > 1 {
                        draft = draft
                            .with("part", part)
                            .with("records_changed", changes.len())
                            .with("records_left", 0);
                    }
                } else {
                    // More than one transaction may carry: this part applies the first
                    // `budget` changes, restrictive ones first, so that every state between
                    // two parts holds each key either as it was or as the restore leaves it.
                    let left = changes.len() - budget;
                    let mut partial = st.keys.clone();
                    for (id, rec) in changes.into_iter().take(budget) {
                        match rec {
                            Some(r) => partial.insert(id, r),
                            None => partial.remove(&id),
                        };
                    }
                    *keys = partial;
                    draft = draft
                        .with("part", part)
                        .with("records_changed", budget)
                        .with("records_left", left);
                    left_before_next = Some(left);
                }
                planned_report = Some(rep);
                Ok(Some(Step {
                    drafts: vec![draft],
                    ops: Vec::new(),
                }))
            })?;
            // The report describes the whole restore: the plan made before its first part.
            if report.is_none() {
                report = planned_report;
            }
            if finished {
                break;
            }
            left_before = left_before_next;
        }
        let mut report = report.ok_or_else(|| Error::Backup {
            path: from.to_path_buf(),
            problem: "restore planned nothing".into(),
        })?;
        report.transactions = part;
        Ok(report)
    }

    fn usage(&self) -> Result<UsageMap> {
        let kv = self.inner.client.kv_client();
        let dir = self.inner.layout.usage_dir();
        // Statistics are a courtesy: a gateway (watched copy) does not hold a listing for
        // long when etcd is slow to answer.
        let limit = match &self.mirror {
            Some(_) => self.inner.bridge.timeout().min(Duration::from_secs(1)),
            None => self.inner.bridge.timeout(),
        };
        let (pairs, _) = self.inner.bridge.run_for("read usage", limit, async move {
            range_all(kv, dir.as_bytes().to_vec(), prefix_end(&dir), 0).await
        })?;
        let mut out = UsageMap::new();
        for (k, v) in pairs {
            let shard: UsageShard =
                serde_json::from_slice(&v).map_err(|e| Error::CorruptUsage {
                    path: PathBuf::from(format!(
                        "{}{}",
                        self.inner.location,
                        String::from_utf8_lossy(&k)
                            .strip_prefix(&self.inner.opts.url.prefix)
                            .unwrap_or_default()
                    )),
                    problem: e.to_string(),
                })?;
            out.extend(shard.keys);
        }
        Ok(out)
    }

    fn record_usage(&self, deltas: &UsageMap, live: &dyn Fn(&str) -> bool, now: f64) -> Result<()> {
        // One read of every shard (at most 256 keys): it finds the shards holding keys that are
        // no longer live (the contract drops every such key, not only those in the shards this
        // flush touches), and it is the first compare-and-swap attempt's state for every shard
        // written; a shard is read again only when another gateway wrote it meanwhile.
        let kv = self.inner.client.kv_client();
        let dir = self.inner.layout.usage_dir();
        let read: Vec<(Vec<u8>, Vec<u8>, i64)> =
            self.inner.bridge.run_read("read usage", move || {
                let (mut kv, dir) = (kv.clone(), dir.clone());
                async move {
                    let end = prefix_end(&dir);
                    let r = kv.get(dir, Some(GetOptions::new().with_range(end))).await?;
                    Ok(r.kvs()
                        .iter()
                        .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
                        .collect())
                }
            })?;
        let mut known: BTreeMap<String, Option<(Vec<u8>, i64)>> = BTreeMap::new();
        let mut by_shard: BTreeMap<String, UsageMap> = BTreeMap::new();
        for (k, v, m) in read {
            let Some(shard) = k
                .strip_prefix(self.inner.layout.usage_dir().as_bytes())
                .and_then(|s| std::str::from_utf8(s).ok())
                .map(str::to_string)
            else {
                continue;
            };
            // A shard that does not parse is left to the merge below (which replaces it).
            if let Ok(parsed) = serde_json::from_slice::<UsageShard>(&v)
                && parsed.keys.keys().any(|id| !live(id))
            {
                by_shard.entry(shard.clone()).or_default();
            }
            known.insert(shard, Some((v, m)));
        }
        for (id, u) in deltas {
            by_shard
                .entry(usage_shard(id))
                .or_default()
                .insert(id.clone(), u.clone());
        }
        for (shard, d) in by_shard {
            let key = self.inner.layout.usage(&shard);
            // Absent from the read: the shard did not exist then.
            let mut first = Some(known.remove(&shard).flatten());
            let mut done = false;
            for _ in 0..16 {
                let cur = match first.take() {
                    Some(cur) => cur,
                    None => {
                        let mut kv = self.inner.client.kv_client();
                        let k2 = key.clone();
                        self.inner.bridge.run("read usage", async move {
                            kv.get(k2, None).await.map(|r| {
                                r.kvs()
                                    .first()
                                    .map(|kv| (kv.value().to_vec(), kv.mod_revision()))
                            })
                        })?
                    }
                };
                let (mut map, cmp) = match &cur {
                    Some((v, m)) => (
                        serde_json::from_slice::<UsageShard>(v)
                            .map(|s| s.keys)
                            .unwrap_or_default(),
                        Compare::mod_revision(key.clone(), CompareOp::Equal, *m),
                    ),
                    None => (
                        UsageMap::new(),
                        Compare::version(key.clone(), CompareOp::Equal, 0),
                    ),
                };
                usage::merge(&mut map, &d);
                map.retain(|id, _| live(id));
                let v = serde_json::to_vec(&UsageShard {
                    format: "xai-keys-usage/1".into(),
                    updated: now,
                    keys: map,
                })
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
                let txn =
                    Txn::new()
                        .when(vec![cmp])
                        .and_then(vec![TxnOp::put(key.clone(), v, None)]);
                let mut kv = self.inner.client.kv_client();
                let ok = self
                    .inner
                    .bridge
                    .run("record usage", async move { kv.txn(txn).await })?
                    .succeeded();
                if ok {
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(Error::Busy {
                    store: self.inner.location.clone(),
                    attempts: 16,
                });
            }
        }
        Ok(())
    }

    fn log_follower(&self, from: Option<FollowFrom>) -> Result<LogFollower> {
        let next = match from {
            Some(f) => f.offset.max(1),
            None => {
                let mut kv = self.inner.client.kv_client();
                let layout = self.inner.layout.clone();
                let tail = self
                    .inner
                    .bridge
                    .run("read the audit log's end", async move {
                        log_tail(&mut kv, &layout, 0).await
                    })?;
                tail.map_or(1, |t| t.0 + 1)
            }
        };
        Ok(LogFollower::from_source(Box::new(EtcdFollower {
            inner: self.inner.clone(),
            next,
        })))
    }

    fn check_log_chain(&self) -> Result<Option<(usize, String)>> {
        let (bytes, _) = self.dump_log(0)?;
        Ok(audit::verify_chain_bytes(&bytes, &self.path_of("log"))?.first_error)
    }

    fn change_window(&self) -> Result<Option<ChangeWindow>> {
        let v = match self.mirrored() {
            Some(st) => st.raw.window.clone(),
            None => self.get_value(self.inner.layout.window())?,
        };
        v.map(|v| self.parse_window(&v)).transpose()
    }

    fn set_change_window(
        &self,
        actor: &Actor,
        now: f64,
        window: Option<&ChangeWindow>,
        draft: AuditDraft,
    ) -> Result<Option<CommitInfo>> {
        let key = self.inner.layout.window();
        let value = window
            .map(serde_json::to_vec_pretty)
            .transpose()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        self.transact(actor, now, true, &mut |st, _keys| {
            let recorded = st
                .raw
                .window
                .as_deref()
                .map(|v| self.parse_window(v))
                .transpose()?;
            if !xai_keys_core::window::plan_change(window, recorded, now)? {
                return Ok(None);
            }
            Ok(Some(record_step(&key, value.as_deref(), &draft)))
        })
    }

    fn lockdown(&self) -> Result<Option<Lockdown>> {
        let v = match self.mirrored() {
            Some(st) => st.raw.lockdown.clone(),
            None => self.get_value(self.inner.layout.lockdown())?,
        };
        v.map(|v| self.parse_lockdown(&v)).transpose()
    }

    /// The lockdown record and its audit line are one transaction: there is no window in
    /// which one exists without the other.
    fn set_lockdown(
        &self,
        actor: &Actor,
        now: f64,
        lockdown: Option<&Lockdown>,
        draft: AuditDraft,
    ) -> Result<Option<CommitInfo>> {
        let key = self.inner.layout.lockdown();
        let value = lockdown
            .map(serde_json::to_vec_pretty)
            .transpose()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        self.transact(actor, now, true, &mut |st, _keys| {
            if value.is_none() && st.raw.lockdown.is_none() {
                return Ok(None);
            }
            Ok(Some(record_step(&key, value.as_deref(), &draft)))
        })
    }
}

/// The value to write for record `id` when a commit on `st` leaves it as `rec`, or `None` when
/// the stored value already is that record. A record equal to the one read from a stored value
/// (and with nothing filled in at load) is that value: it is not serialised again.
fn rewritten_value(st: &State, id: &KeyId, rec: &KeyRecord) -> Result<Option<Vec<u8>>> {
    if st.raw.records.contains_key(id.as_str())
        && st
            .keys
            .get(id)
            .is_some_and(|old| old == rec && !old.hydration.any())
    {
        return Ok(None);
    }
    let v = serde_json::to_vec(rec)
        .map_err(|e| Error::InvalidInput(format!("cannot serialise record {id}: {e}")))?;
    Ok((st.raw.records.get(id.as_str()).map(|s| &s[..]) != Some(&v[..])).then_some(v))
}

/// The record changes taking the state `st` to `target`, restrictive ones first: removals,
/// then changed records, then records added back. Any prefix of this list applied to the live
/// keys leaves each key either as it is live or as it is in `target`, never in a third form.
/// Changes are counted as the writer counts them ([`rewritten_value`]); a record that cannot
/// be serialised counts as a change (its part then fails with that error).
fn restore_changes(st: &State, target: &KeyMap) -> Vec<(KeyId, Option<KeyRecord>)> {
    let removed = st
        .keys
        .keys()
        .filter(|id| !target.contains_key(*id))
        .map(|id| (id.clone(), None));
    let rewritten =
        |id: &KeyId, rec: &KeyRecord| rewritten_value(st, id, rec).map_or(true, |v| v.is_some());
    let changed = target
        .iter()
        .filter(|(id, rec)| st.keys.contains_key(*id) && rewritten(id, rec));
    let added = target
        .iter()
        .filter(|(id, rec)| !st.keys.contains_key(*id) && rewritten(id, rec));
    removed
        .chain(
            changed
                .chain(added)
                .map(|(id, rec)| (id.clone(), Some(rec.clone()))),
        )
        .collect()
}

/// A state record written (`Some`) or removed (`None`) with its audit line.
fn record_step(key: &str, value: Option<&[u8]>, draft: &AuditDraft) -> Step {
    let op = match value {
        Some(v) => TxnOp::put(key, v.to_vec(), None),
        None => TxnOp::delete(key, None),
    };
    Step {
        drafts: vec![draft.clone()],
        ops: vec![op],
    }
}

/// One usage shard's value.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct UsageShard {
    format: String,
    updated: f64,
    keys: BTreeMap<String, KeyUsage>,
}

/// Follows `<prefix>/log/` by sequence number: the position is the next line's number.
#[derive(Debug)]
struct EtcdFollower {
    inner: Arc<Inner>,
    next: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("location", &self.location)
            .finish()
    }
}

impl FollowSource for EtcdFollower {
    fn poll(&mut self) -> Result<FollowBatch> {
        let layout = self.inner.layout.clone();
        let mut kv = self.inner.client.kv_client();
        let from = layout.log(self.next);
        let end = prefix_end(&layout.log_dir());
        let pairs = self.inner.bridge.run("follow the audit log", async move {
            let mut out = Vec::new();
            let mut start = from;
            let mut rev = 0;
            // A page may end inside a multi-line commit: read on until its last line.
            loop {
                let mut o = GetOptions::new().with_range(end.clone()).with_limit(512);
                if rev > 0 {
                    o = o.with_revision(rev);
                }
                let mut r = kv.get(start.clone(), Some(o)).await?;
                rev = r.header().map_or(0, |h| h.revision());
                let more = r.more();
                let kvs: Vec<(Vec<u8>, Vec<u8>)> = r
                    .take_kvs()
                    .into_iter()
                    .map(|kv| kv.into_key_value())
                    .collect();
                let open = kvs.last().is_some_and(|(_, v)| {
                    serde_json::from_slice::<AuditEvent>(v).is_ok_and(|o| audit::continues(&o))
                });
                let last = kvs.last().map(|(k, _)| k.clone());
                out.extend(kvs);
                match last {
                    Some(mut k) if more && open => {
                        k.push(0);
                        start = String::from_utf8_lossy(&k).into_owned();
                    }
                    _ => break,
                }
            }
            Ok(out)
        })?;
        let mut batch = FollowBatch::default();
        for (k, v) in pairs {
            let Some(seq) = layout.log_seq(&k) else {
                continue;
            };
            match serde_json::from_slice::<AuditEvent>(&v) {
                Ok(obj) => batch.events.push(obj),
                Err(_) => batch.skipped.push(seq),
            }
            self.next = seq + 1;
        }
        Ok(batch)
    }

    fn offset(&self) -> u64 {
        self.next
    }
}
