//! Peer authentication: the shared peer key ring, signed gossip requests and replay protection.
//!
//! Validators share a secret peer key. Instead of sending it in clear (the reference's
//! `X-API-Key: <peer key>`), a sender proves knowledge of it with HMAC-SHA256 over a canonical
//! form of the request ([`canonical`]): method, path and query, timestamp, nonce, SHA-256 of the
//! body and the sending node's id. The headers name the key by a non-secret fingerprint, so a
//! receiver holding several keys (current, next, previous: [`KeyRing`]) knows which to check,
//! and rotation needs no flag day: every node first accepts the new key, then nodes switch
//! signing to it one by one, then the old key is dropped.
//!
//! Pure and synchronous: time is a parameter, nothing here does I/O except reading a keyring
//! file ([`KeyRing::from_file`]). The gateway verifies inbound requests with
//! [`verify_peer_request`]; a Rust node signs with [`sign_peer_request`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Header naming the key by fingerprint.
pub const H_KEY: &str = "x-xai-peer-key";
/// Header with the sending node's id.
pub const H_NODE: &str = "x-xai-peer-node";
/// Header with the signing time (whole epoch seconds).
pub const H_TIMESTAMP: &str = "x-xai-peer-timestamp";
/// Header with the request's nonce (32 lowercase hex digits).
pub const H_NONCE: &str = "x-xai-peer-nonce";
/// Header with the SHA-256 of the body (64 lowercase hex digits).
pub const H_BODY: &str = "x-xai-peer-content-sha256";
/// Header with the signature (64 lowercase hex digits).
pub const H_SIGNATURE: &str = "x-xai-peer-signature";
/// Every signature header, for stripping before forwarding.
pub const HEADERS: [&str; 6] = [H_KEY, H_NODE, H_TIMESTAMP, H_NONCE, H_BODY, H_SIGNATURE];

/// Shortest peer key accepted (characters). Generated keys are 256 bits.
pub const MIN_KEY_CHARS: usize = 32;
/// Longest node id accepted.
pub const MAX_NODE_ID_CHARS: usize = 128;
/// Version tag of the canonical form.
const SCHEME: &str = "XAI-PEER-HMAC-SHA256";

/// A peer key. The secret never appears in `Debug`; it is zeroed when dropped.
#[derive(Clone)]
pub struct PeerKey {
    secret: Zeroizing<String>,
    fingerprint: String,
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerKey({})", self.fingerprint)
    }
}

impl PeerKey {
    /// A key from its text; `what` names its source (a variable) in errors, which never
    /// contain the value.
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let t = text.trim();
        if t.chars().count() < MIN_KEY_CHARS {
            return Err(Error::InvalidSecret(format!(
                "{what}: a peer key needs at least {MIN_KEY_CHARS} characters (generate one with `xai-keys peer keygen`)"
            )));
        }
        if t.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::InvalidSecret(format!(
                "{what}: a peer key may not contain spaces or control characters"
            )));
        }
        Ok(PeerKey {
            fingerprint: fingerprint_of(t),
            secret: Zeroizing::new(t.to_string()),
        })
    }

    /// A new random key: `xaipeer_` and 43 base64url characters (256 bits).
    pub fn generate() -> Result<Self> {
        let mut b = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *b).map_err(|e| Error::Random(e.to_string()))?;
        let text = Zeroizing::new(format!("xaipeer_{}", base64url(&*b)));
        Self::parse(&text, "generated key")
    }

    /// The non-secret name of the key: 16 hex digits of a domain-separated SHA-256.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The secret, for printing once (`peer keygen`) or the legacy header.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// Constant-time comparison with a presented legacy `X-API-Key` value.
    pub fn matches_legacy(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(self.secret.as_bytes());
        let b = Sha256::digest(presented.trim().as_bytes());
        a.ct_eq(&b).into()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; the error case cannot happen.
        match HmacSha256::new_from_slice(self.secret.as_bytes()) {
            Ok(m) => m,
            Err(_) => HmacSha256::new(&Default::default()),
        }
    }
}

fn fingerprint_of(secret: &str) -> String {
    let d = Sha256::digest(format!("xai-keys peer key fingerprint v1\n{secret}").as_bytes());
    hex(&d[..8])
}

/// The keys a node holds: `current` signs (and is accepted), `next` and `previous` are
/// accepted only.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    pub current: Option<PeerKey>,
    pub next: Option<PeerKey>,
    pub previous: Option<PeerKey>,
}

/// Variables (and keyring-file entries) of the three keys.
pub const VAR_CURRENT: &str = "XAI_PEER_API_KEY";
pub const VAR_NEXT: &str = "XAI_PEER_API_KEY_NEXT";
pub const VAR_PREVIOUS: &str = "XAI_PEER_API_KEY_PREVIOUS";
/// Variable naming a keyring file that holds the same three entries.
pub const VAR_KEYRING_FILE: &str = "XAI_PEER_KEYRING_FILE";

impl KeyRing {
    /// The ring from a lookup of [`VAR_CURRENT`], [`VAR_NEXT`], [`VAR_PREVIOUS`] (empty values
    /// are absent).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        Self::from_values(&|var| lookup(var), &|var| var.to_string())
    }

    /// The ring from the three values (`value(var)`; empty is absent), each named in errors by
    /// `source(var)`.
    fn from_values(
        value: &dyn Fn(&str) -> Option<String>,
        source: &dyn Fn(&str) -> String,
    ) -> Result<Self> {
        let get = |var: &str| -> Result<Option<PeerKey>> {
            match value(var).filter(|v| !v.trim().is_empty()) {
                Some(v) => PeerKey::parse(&v, &source(var)).map(Some),
                None => Ok(None),
            }
        };
        let ring = KeyRing {
            current: get(VAR_CURRENT)?,
            next: get(VAR_NEXT)?,
            previous: get(VAR_PREVIOUS)?,
        };
        ring.check()?;
        Ok(ring)
    }

    /// The configured ring: from the file named by [`VAR_KEYRING_FILE`], or from the three
    /// variables; both at once is an error naming them (the ring lives in one place). Returns
    /// the file when one is used. The gateway and the CLI resolve it the same way.
    pub fn resolve(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Option<std::path::PathBuf>)> {
        let set = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let vars: Vec<&str> = [VAR_CURRENT, VAR_NEXT, VAR_PREVIOUS]
            .into_iter()
            .filter(|v| set(v).is_some())
            .collect();
        match set(VAR_KEYRING_FILE) {
            Some(_) if !vars.is_empty() => Err(Error::InvalidInput(format!(
                "both {VAR_KEYRING_FILE} and {} are set: configure the peer key ring in one place only",
                vars.join(", ")
            ))),
            Some(f) => {
                let path = std::path::PathBuf::from(f.trim());
                Ok((Self::from_file(&path)?, Some(path)))
            }
            None => Ok((Self::from_lookup(lookup)?, None)),
        }
    }

    /// Parses a keyring file: `NAME=value` lines with the three variable names (as a Vault
    /// agent template or an environment file writes them), `#` comments and blank lines.
    /// Unknown names and repeated names are errors, naming the line (never the value).
    pub fn parse_file_text(text: &str, path: &Path) -> Result<Self> {
        let mut vals: HashMap<&str, String> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| {
                Error::InvalidInput(format!(
                    "keyring file {} line {}: {why}",
                    path.display(),
                    i + 1
                ))
            };
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((name, value)) = line.split_once('=') else {
                return Err(bad("expected NAME=value"));
            };
            let name = name.trim();
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            let name = [VAR_CURRENT, VAR_NEXT, VAR_PREVIOUS]
                .into_iter()
                .find(|v| *v == name)
                .ok_or_else(|| {
                    // A name is echoed only when it looks like one: a line holding just a key
                    // (base64 ends in '=') would otherwise be printed, secret and all.
                    if !name.is_empty()
                        && name.len() <= 64
                        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    {
                        bad(&format!(
                            "unknown name {name:?}: use {VAR_CURRENT}, {VAR_NEXT} or {VAR_PREVIOUS}"
                        ))
                    } else {
                        bad(&format!(
                            "not NAME=value with NAME one of {VAR_CURRENT}, {VAR_NEXT}, {VAR_PREVIOUS}"
                        ))
                    }
                })?;
            if vals.insert(name, value.to_string()).is_some() {
                return Err(bad(&format!("{name} is given twice")));
            }
        }
        Self::from_values(&|var| vals.get(var).cloned(), &|var| {
            format!("{var} in {}", path.display())
        })
    }

    /// Reads a keyring file: a regular file (a symbolic link to one is followed, as in a
    /// Kubernetes secret volume) of at most 64 KiB, opened without blocking (a FIFO cannot
    /// hang the reader), readable by its owner and possibly a group but not by others, and
    /// writable by its owner only (checked on the opened file). It must name a current key: an
    /// empty or half-rendered file is refused, never taken as "no peer key".
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let missing = || {
            Error::InvalidInput(format!(
                "keyring file {} does not exist ({VAR_KEYRING_FILE})",
                path.display()
            ))
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => missing(),
                _ => Error::io("open keyring file", path, e),
            })?;
        let meta = f.metadata().map_err(|e| Error::io("stat", path, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::InvalidInput(format!(
                "keyring file {} is not a regular file",
                path.display()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o026 != 0 {
            return Err(Error::InvalidInput(format!(
                "keyring file {} has permissions {mode:04o}: others can read it or group/others can write it; refusing to use it. Fix with `chmod 600 {}` (or 640 for a reader group)",
                path.display(),
                path.display()
            )));
        }
        const MAX: u64 = 64 * 1024;
        if meta.len() > MAX {
            return Err(Error::InvalidInput(format!(
                "keyring file {} is larger than {MAX} bytes",
                path.display()
            )));
        }
        let mut bytes = Vec::new();
        f.take(MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read keyring file", path, e))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::InvalidInput(format!("keyring file {} is not UTF-8 text", path.display()))
        })?;
        let ring = Self::parse_file_text(&text, path)?;
        if ring.current.is_none() {
            return Err(Error::InvalidInput(format!(
                "keyring file {} holds no {VAR_CURRENT} line (empty, or still being written?); a keyring file must name the key this node signs with",
                path.display()
            )));
        }
        Ok(ring)
    }

    fn check(&self) -> Result<()> {
        let fps: Vec<&str> = self.keys().map(|(_, k)| k.fingerprint()).collect();
        for (i, f) in fps.iter().enumerate() {
            if fps[i + 1..].contains(f) {
                return Err(Error::InvalidInput(
                    "the peer key ring holds the same key twice (current, next and previous must differ)".into(),
                ));
            }
        }
        if self.current.is_none() && (self.next.is_some() || self.previous.is_some()) {
            return Err(Error::InvalidInput(format!(
                "{VAR_NEXT} or {VAR_PREVIOUS} is set without {VAR_CURRENT}: the ring needs the key this node signs with"
            )));
        }
        Ok(())
    }

    /// Whether any peer key is configured.
    pub fn is_configured(&self) -> bool {
        self.current.is_some()
    }

    /// Every key with its role (`current`, `next`, `previous`).
    pub fn keys(&self) -> impl Iterator<Item = (&'static str, &PeerKey)> {
        [
            ("current", self.current.as_ref()),
            ("next", self.next.as_ref()),
            ("previous", self.previous.as_ref()),
        ]
        .into_iter()
        .filter_map(|(r, k)| k.map(|k| (r, k)))
    }

    /// The key with this fingerprint.
    pub fn by_fingerprint(&self, fp: &str) -> Option<&PeerKey> {
        self.keys().map(|(_, k)| k).find(|k| k.fingerprint() == fp)
    }

    /// The key a legacy `X-API-Key` value is (constant time per key).
    pub fn legacy_match(&self, presented: &str) -> Option<&PeerKey> {
        let mut found = None;
        for (_, k) in self.keys() {
            if k.matches_legacy(presented) && found.is_none() {
                found = Some(k);
            }
        }
        found
    }
}

/// The request parts a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// Path and query exactly as sent (`/block/receive?x=1`).
    pub path_and_query: &'a str,
    pub body: &'a [u8],
}

/// The canonical text a signature covers.
pub fn canonical(
    parts: &RequestParts<'_>,
    timestamp: i64,
    nonce: &str,
    body_sha256: &str,
    node_id: &str,
    fingerprint: &str,
) -> String {
    format!(
        "{SCHEME}\n{}\n{}\n{timestamp}\n{nonce}\n{body_sha256}\n{node_id}\n{fingerprint}",
        parts.method.to_ascii_uppercase(),
        parts.path_and_query
    )
}

/// Signs a request with `key` as `node_id` at `now` (epoch seconds); returns the headers to
/// add (name, value).
pub fn sign_peer_request(
    key: &PeerKey,
    node_id: &str,
    parts: &RequestParts<'_>,
    now: f64,
) -> Result<Vec<(&'static str, String)>> {
    check_node_id(node_id)?;
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).map_err(|e| Error::Random(e.to_string()))?;
    let nonce = hex(&n);
    let ts = now.floor() as i64;
    let body = hex(&Sha256::digest(parts.body));
    let mut mac = key.mac();
    mac.update(canonical(parts, ts, &nonce, &body, node_id, key.fingerprint()).as_bytes());
    let sig = hex(&mac.finalize().into_bytes());
    Ok(vec![
        (H_KEY, key.fingerprint().to_string()),
        (H_NODE, node_id.to_string()),
        (H_TIMESTAMP, ts.to_string()),
        (H_NONCE, nonce),
        (H_BODY, body),
        (H_SIGNATURE, sig),
    ])
}

/// Whether a character may appear in a node id.
pub fn is_node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.:".contains(c)
}

/// This host's name as a node id (other characters become `-`), for a node that sets no
/// `XAI_PEER_NODE_ID`: the egress proxy and `peer sign` default to the same id. `None` when
/// the host name is unknown.
pub fn host_node_id() -> Option<String> {
    let uname = rustix::system::uname();
    let from_uname = uname.nodename().to_string_lossy().trim().to_string();
    let host = if from_uname.is_empty() {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_default()
    } else {
        from_uname
    };
    let id: String = host
        .chars()
        .map(|c| if is_node_id_char(c) { c } else { '-' })
        .take(MAX_NODE_ID_CHARS)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Checks a node id: 1 to [`MAX_NODE_ID_CHARS`] letters, digits, `-`, `_`, `.`, `:`.
pub fn check_node_id(node_id: &str) -> Result<()> {
    if node_id.is_empty()
        || node_id.chars().count() > MAX_NODE_ID_CHARS
        || !node_id.chars().all(is_node_id_char)
    {
        return Err(Error::InvalidInput(format!(
            "node id {:?} must be 1 to {MAX_NODE_ID_CHARS} characters of letters, digits, '-', '_', '.', ':'",
            node_id.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// Why a peer request was refused. [`PeerRefusal::code`] is the stable reason code of the
/// response, the security event and `xai_peer_auth_total{result}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRefusal {
    /// A peer route was called without a peer signature (a user key, or nothing) while a
    /// peer key is configured.
    Missing,
    /// A signature header is missing, repeated or malformed (which one is said).
    Malformed(String),
    /// The key fingerprint is not in this node's ring.
    UnknownKey,
    /// The timestamp is further than the allowed skew from this node's clock.
    Skew {
        skew_secs: i64,
    },
    /// The body's SHA-256 is not the one signed.
    BodyMismatch,
    BadSignature,
    /// The nonce was seen within the window, or the request was signed no later than a
    /// nonce the memory already dropped (possible only after the clock was stepped back).
    Replay,
    /// The nonce memory is full of unexpired nonces: refused rather than forgetting one. The
    /// oldest nonce of the full part of the cache expires in `retry_after_secs`.
    NonceCapacity {
        retry_after_secs: u64,
    },
    /// A legacy `X-API-Key` peer key while legacy mode is off.
    LegacyDisabled,
}

impl PeerRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            PeerRefusal::Missing => "peer_signature_required",
            PeerRefusal::Malformed(_) => "peer_malformed",
            PeerRefusal::UnknownKey => "peer_unknown_key",
            PeerRefusal::Skew { .. } => "peer_skew",
            PeerRefusal::BodyMismatch => "peer_body_mismatch",
            PeerRefusal::BadSignature => "peer_bad_signature",
            PeerRefusal::Replay => "peer_replay",
            PeerRefusal::NonceCapacity { .. } => "peer_nonce_capacity",
            PeerRefusal::LegacyDisabled => "peer_legacy_disabled",
        }
    }

    /// What the sender should do, for the response body.
    pub fn message(&self) -> String {
        match self {
            PeerRefusal::Missing => "this is a peer route: sign the request with the peer key (X-XAI-Peer-* headers; `xai-keys peer sign` shows them); user keys are not accepted here".into(),
            PeerRefusal::Malformed(m) => format!("peer signature headers: {m}"),
            PeerRefusal::UnknownKey => "the peer key named by X-XAI-Peer-Key is not in this node's key ring: check that both nodes have the same keys (`xai-keys peer status`)".into(),
            PeerRefusal::Skew { skew_secs } => format!("the request's timestamp is {skew_secs} s from this node's clock, beyond XAI_PEER_MAX_SKEW_SECONDS: check NTP on both nodes"),
            PeerRefusal::BodyMismatch => "the body is not the one that was signed".into(),
            PeerRefusal::BadSignature => "the peer signature does not verify".into(),
            PeerRefusal::Replay => "this nonce was already used, or the request is older than the nonces this node still remembers (its clock was stepped back): a replayed request; re-sign it, and check NTP if this persists".into(),
            PeerRefusal::NonceCapacity { retry_after_secs } => format!("too many peer requests within the replay window (XAI_PEER_NONCE_CAPACITY); retry in {retry_after_secs} s"),
            PeerRefusal::LegacyDisabled => "peer keys in X-API-Key are not accepted here (XAI_PEER_ACCEPT_LEGACY=0): sign requests (X-XAI-Peer-* headers)".into(),
        }
    }
}

/// Bounded memory of nonces seen within the replay window, with an atomic check-and-record.
/// When full of unexpired nonces it refuses new requests instead of evicting one (evicting
/// would re-open a replay of the evicted nonce).
///
/// Built for a steady stream: entries are 16-byte digests of (node, nonce) spread over
/// [`NONCE_SHARDS`] independently locked shards, and expired entries leave by whole
/// one-second buckets, so a request never scans the cache or waits behind another shard's
/// growth.
pub struct NonceCache {
    shards: Vec<Mutex<NonceShard>>,
    per_shard: usize,
}

/// Independently locked parts of a [`NonceCache`].
pub const NONCE_SHARDS: usize = 16;

#[derive(Default)]
struct NonceShard {
    /// digest of (node, nonce) → expiry (whole epoch seconds, exclusive).
    map: HashMap<[u8; 16], u64>,
    /// expiry second → digests expiring then.
    by_expiry: std::collections::BTreeMap<u64, Bucket>,
    /// The latest signing time of a nonce this shard has dropped. Dropping is safe only while
    /// that timestamp fails the skew check; a clock stepped back makes it pass again, so a
    /// request signed no later than this is refused rather than taken for a first use.
    forgotten_through: Option<i64>,
}

/// The nonces expiring in one second, and the latest signing time among them.
#[derive(Default)]
struct Bucket {
    keys: Vec<[u8; 16]>,
    latest_signed: Option<i64>,
}

impl NonceShard {
    /// Drops every entry whose expiry second has come.
    fn prune(&mut self, now_sec: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() > now_sec {
                break;
            }
            let (sec, bucket) = entry.remove_entry();
            for k in bucket.keys {
                if self.map.get(&k) == Some(&sec) {
                    self.map.remove(&k);
                }
            }
            if let Some(t) = bucket.latest_signed {
                self.forgotten_through = Some(self.forgotten_through.map_or(t, |f| f.max(t)));
            }
        }
    }
}

impl NonceCache {
    /// A cache holding at most about `capacity` nonces (rounded up to a multiple of the shard
    /// count).
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.max(1).div_ceil(NONCE_SHARDS);
        NonceCache {
            shards: (0..NONCE_SHARDS)
                .map(|_| {
                    Mutex::new(NonceShard {
                        // Room for the usual load up front: growing a large map under the
                        // lock would stall the shard's requests.
                        map: HashMap::with_capacity(per_shard.min(1 << 16)),
                        by_expiry: Default::default(),
                        forgotten_through: None,
                    })
                })
                .collect(),
            per_shard,
        }
    }

    fn key(node: &str, nonce: &str) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(node.as_bytes());
        h.update([0u8]);
        h.update(nonce.as_bytes());
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        k
    }

    /// Records `(node, nonce)` until `expires`; refuses a nonce already recorded and unexpired.
    pub fn check_and_record(
        &self,
        node: &str,
        nonce: &str,
        now: f64,
        expires: f64,
    ) -> std::result::Result<(), PeerRefusal> {
        self.check(node, nonce, None, now, expires)
    }

    /// [`NonceCache::check_and_record`] for a request signed at `signed_at` (epoch seconds).
    /// Also refuses (as a replay) a request signed no later than a nonce this cache has
    /// already dropped: after the clock was stepped back, such a request may be the replay
    /// of one whose nonce was forgotten when its timestamp stopped passing the skew check.
    /// While the clock only moves forward this never refuses a request that passes the skew.
    pub fn check_and_record_signed(
        &self,
        node: &str,
        nonce: &str,
        signed_at: i64,
        now: f64,
        expires: f64,
    ) -> std::result::Result<(), PeerRefusal> {
        self.check(node, nonce, Some(signed_at), now, expires)
    }

    fn check(
        &self,
        node: &str,
        nonce: &str,
        signed_at: Option<i64>,
        now: f64,
        expires: f64,
    ) -> std::result::Result<(), PeerRefusal> {
        let k = Self::key(node, nonce);
        let shard = &self.shards[usize::from(k[0]) % NONCE_SHARDS];
        let mut s = match shard.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now_sec = now.max(0.0).floor() as u64;
        s.prune(now_sec);
        if s.map.get(&k).is_some_and(|e| *e > now_sec) {
            return Err(PeerRefusal::Replay);
        }
        if let (Some(t), Some(f)) = (signed_at, s.forgotten_through)
            && t <= f
        {
            return Err(PeerRefusal::Replay);
        }
        if s.map.len() >= self.per_shard {
            let oldest = s.by_expiry.keys().next().copied().unwrap_or(now_sec + 1);
            return Err(PeerRefusal::NonceCapacity {
                retry_after_secs: oldest.saturating_sub(now_sec).max(1),
            });
        }
        // Whole seconds, rounded up: never forgotten before `expires`.
        let exp = expires.max(0.0).ceil() as u64;
        s.map.insert(k, exp);
        let b = s.by_expiry.entry(exp).or_default();
        b.keys.push(k);
        if let Some(t) = signed_at {
            b.latest_signed = Some(b.latest_signed.map_or(t, |l| l.max(t)));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| match m.lock() {
                Ok(g) => g.map.len(),
                Err(p) => p.into_inner().map.len(),
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Verification settings.
#[derive(Debug, Clone, Copy)]
pub struct VerifyPolicy {
    /// `XAI_PEER_MAX_SKEW_SECONDS` (60): allowed distance of the timestamp, both directions.
    pub max_skew_secs: i64,
    /// `XAI_PEER_NONCE_TTL_SECONDS` (300): how long a nonce is remembered. Never shorter than
    /// twice the skew (a timestamp accepted at the edge must still find its nonce).
    pub nonce_ttl_secs: i64,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        VerifyPolicy {
            max_skew_secs: 60,
            nonce_ttl_secs: 300,
        }
    }
}

/// A verified peer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    pub fingerprint: String,
    pub node_id: String,
}

/// Whether a request carries the signed-mode headers (any of them).
pub fn has_signature_headers(get: &dyn Fn(&str) -> Vec<String>) -> bool {
    HEADERS.iter().any(|h| !get(h).is_empty())
}

/// The signature headers of a request, parsed and checked against the ring and the clock.
struct Presented {
    fp: String,
    node: String,
    ts: i64,
    nonce: String,
    body_hash: String,
    sig: String,
}

fn presented(
    ring: &KeyRing,
    policy: VerifyPolicy,
    get: &dyn Fn(&str) -> Vec<String>,
    now: f64,
) -> std::result::Result<Presented, PeerRefusal> {
    let one = |h: &str| -> std::result::Result<String, PeerRefusal> {
        let v = get(h);
        match v.as_slice() {
            [x] => Ok(x.trim().to_string()),
            [] => Err(PeerRefusal::Malformed(format!("{h} is missing"))),
            _ => Err(PeerRefusal::Malformed(format!(
                "{h} is given more than once"
            ))),
        }
    };
    let fp = one(H_KEY)?;
    let node = one(H_NODE)?;
    let ts = one(H_TIMESTAMP)?;
    let nonce = one(H_NONCE)?;
    let body_hash = one(H_BODY)?;
    let sig = one(H_SIGNATURE)?;
    let is_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !is_hex(&fp, 16) {
        return Err(PeerRefusal::Malformed(format!(
            "{H_KEY} must be 16 lowercase hex digits"
        )));
    }
    if check_node_id(&node).is_err() {
        return Err(PeerRefusal::Malformed(format!(
            "{H_NODE} must be 1 to {MAX_NODE_ID_CHARS} characters of letters, digits, '-', '_', '.', ':'"
        )));
    }
    let ts: i64 = ts
        .parse()
        .ok()
        .filter(|t: &i64| (0..=i64::from(u32::MAX) * 4).contains(t))
        .ok_or_else(|| {
            PeerRefusal::Malformed(format!("{H_TIMESTAMP} must be whole epoch seconds"))
        })?;
    if !is_hex(&nonce, 32) {
        return Err(PeerRefusal::Malformed(format!(
            "{H_NONCE} must be 32 lowercase hex digits"
        )));
    }
    if !is_hex(&body_hash, 64) || !is_hex(&sig, 64) {
        return Err(PeerRefusal::Malformed(format!(
            "{H_BODY} and {H_SIGNATURE} must be 64 lowercase hex digits"
        )));
    }
    if ring.by_fingerprint(&fp).is_none() {
        return Err(PeerRefusal::UnknownKey);
    }
    let skew = ts - now.floor() as i64;
    if skew.abs() > policy.max_skew_secs {
        return Err(PeerRefusal::Skew { skew_secs: skew });
    }
    Ok(Presented {
        fp,
        node,
        ts,
        nonce,
        body_hash,
        sig,
    })
}

/// The checks that need no body: headers present once and well-formed, the key in the ring,
/// the time within the skew. A receiver runs them before reading a body, so that a request
/// that cannot verify never makes it buffer one.
pub fn precheck_peer_request(
    ring: &KeyRing,
    policy: VerifyPolicy,
    get: &dyn Fn(&str) -> Vec<String>,
    now: f64,
) -> std::result::Result<(), PeerRefusal> {
    presented(ring, policy, get, now).map(|_| ())
}

/// Verifies a signed request. `get(header)` returns every value of a header (lower-case name).
/// Checks, in order: headers present once and well-formed, the key in the ring, the time
/// within the skew ([`precheck_peer_request`]), the body digest against the bytes received,
/// the HMAC (constant time), then the nonce (recorded only for a request whose signature
/// verified, so that forged requests cannot use up nonces).
pub fn verify_peer_request(
    ring: &KeyRing,
    nonces: &NonceCache,
    policy: VerifyPolicy,
    get: &dyn Fn(&str) -> Vec<String>,
    parts: &RequestParts<'_>,
    now: f64,
) -> std::result::Result<VerifiedPeer, PeerRefusal> {
    let p = presented(ring, policy, get, now)?;
    let key = ring.by_fingerprint(&p.fp).ok_or(PeerRefusal::UnknownKey)?;
    let actual = hex(&Sha256::digest(parts.body));
    {
        use subtle::ConstantTimeEq;
        if !bool::from(actual.as_bytes().ct_eq(p.body_hash.as_bytes())) {
            return Err(PeerRefusal::BodyMismatch);
        }
    }
    let mut mac = key.mac();
    mac.update(canonical(parts, p.ts, &p.nonce, &p.body_hash, &p.node, &p.fp).as_bytes());
    let sig_bytes = unhex(&p.sig).ok_or(PeerRefusal::BadSignature)?;
    mac.verify_slice(&sig_bytes)
        .map_err(|_| PeerRefusal::BadSignature)?;
    let ttl = policy.nonce_ttl_secs.max(2 * policy.max_skew_secs) as f64;
    // Remembered until the timestamp itself can no longer pass the skew check, at least.
    let expires = (p.ts as f64 + policy.max_skew_secs as f64 + 1.0).max(now + ttl);
    nonces.check_and_record_signed(&p.node, &p.nonce, p.ts, now, expires)?;
    Ok(VerifiedPeer {
        fingerprint: p.fp,
        node_id: p.node,
    })
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn base64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=n {
            out.push(A[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_800_000_000.0;

    fn ring(cur: &PeerKey) -> KeyRing {
        KeyRing {
            current: Some(cur.clone()),
            ..Default::default()
        }
    }

    fn headers_fn<'a>(h: &'a [(&'static str, String)]) -> impl Fn(&str) -> Vec<String> + 'a {
        move |name: &str| {
            h.iter()
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .collect()
        }
    }

    fn parts(body: &[u8]) -> RequestParts<'_> {
        RequestParts {
            method: "POST",
            path_and_query: "/block/receive",
            body,
        }
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let k = PeerKey::generate().unwrap();
        assert!(k.expose().starts_with("xaipeer_") && k.expose().len() == 8 + 43);
        let r = ring(&k);
        let n = NonceCache::new(100);
        let h = sign_peer_request(&k, "node-a", &parts(b"{}"), NOW).unwrap();
        let v = verify_peer_request(
            &r,
            &n,
            VerifyPolicy::default(),
            &headers_fn(&h),
            &parts(b"{}"),
            NOW + 3.0,
        )
        .unwrap();
        assert_eq!(v.fingerprint, k.fingerprint());
        assert_eq!(v.node_id, "node-a");
        let again = verify_peer_request(
            &r,
            &n,
            VerifyPolicy::default(),
            &headers_fn(&h),
            &parts(b"{}"),
            NOW + 4.0,
        );
        assert_eq!(again.unwrap_err(), PeerRefusal::Replay);
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let k = PeerKey::generate().unwrap();
        let other = PeerKey::generate().unwrap();
        let r = ring(&k);
        let p = VerifyPolicy::default();
        let h = sign_peer_request(&k, "node-a", &parts(b"{}"), NOW).unwrap();
        let check = |h: &[(&'static str, String)], body: &[u8], now: f64| {
            verify_peer_request(
                &r,
                &NonceCache::new(10),
                p,
                &headers_fn(h),
                &parts(body),
                now,
            )
            .unwrap_err()
            .code()
        };
        assert_eq!(check(&h, b"{\"x\":1}", NOW), "peer_body_mismatch");
        assert_eq!(check(&h, b"{}", NOW + 61.0), "peer_skew");
        assert_eq!(
            check(&h, b"{}", NOW - 61.0),
            "peer_skew",
            "future timestamps too"
        );
        let foreign = sign_peer_request(&other, "node-a", &parts(b"{}"), NOW).unwrap();
        assert_eq!(check(&foreign, b"{}", NOW), "peer_unknown_key");
        let mut tampered = h.clone();
        tampered[1].1 = "node-b".into();
        assert_eq!(check(&tampered, b"{}", NOW), "peer_bad_signature");
        let mut missing = h.clone();
        missing.pop();
        assert_eq!(check(&missing, b"{}", NOW), "peer_malformed");
        let mut twice = h.clone();
        twice.push(h[3].clone());
        assert_eq!(check(&twice, b"{}", NOW), "peer_malformed");
        // The method and the path are covered.
        let n = NonceCache::new(10);
        let put = RequestParts {
            method: "PUT",
            ..parts(b"{}")
        };
        assert_eq!(
            verify_peer_request(&r, &n, p, &headers_fn(&h), &put, NOW).unwrap_err(),
            PeerRefusal::BadSignature
        );
    }

    #[test]
    fn forged_requests_do_not_use_up_nonces_and_a_full_cache_refuses() {
        let k = PeerKey::generate().unwrap();
        let r = ring(&k);
        let p = VerifyPolicy::default();
        // One nonce per shard at most.
        let n = NonceCache::new(NONCE_SHARDS);
        let h = sign_peer_request(&k, "a", &parts(b""), NOW).unwrap();
        let mut forged = h.clone();
        forged[5].1 = "0".repeat(64);
        assert!(verify_peer_request(&r, &n, p, &headers_fn(&forged), &parts(b""), NOW).is_err());
        assert!(n.is_empty());
        verify_peer_request(&r, &n, p, &headers_fn(&h), &parts(b""), NOW).unwrap();
        // Filling up: by the pigeonhole principle a refusal comes within one more request
        // than there are shards, and it is a refusal, never a forgotten nonce.
        let mut refused = None;
        for i in 0..=NONCE_SHARDS {
            let hi = sign_peer_request(&k, "a", &parts(b""), NOW).unwrap();
            if let Err(e) = verify_peer_request(&r, &n, p, &headers_fn(&hi), &parts(b""), NOW) {
                refused = Some((i, e));
                break;
            }
        }
        let (_, e) = refused.expect("a full cache refuses");
        assert_eq!(e.code(), "peer_nonce_capacity");
        assert!(
            matches!(e, PeerRefusal::NonceCapacity { retry_after_secs } if retry_after_secs >= 299)
        );
        assert_eq!(
            verify_peer_request(&r, &n, p, &headers_fn(&h), &parts(b""), NOW).unwrap_err(),
            PeerRefusal::Replay,
            "the first nonce is still remembered"
        );
        // Once the first nonces expire there is room again, and a replay of them would fail
        // the skew check instead.
        let later = NOW + 400.0;
        let h4 = sign_peer_request(&k, "a", &parts(b""), later).unwrap();
        verify_peer_request(&r, &n, p, &headers_fn(&h4), &parts(b""), later).unwrap();
        assert_eq!(
            verify_peer_request(&r, &n, p, &headers_fn(&h), &parts(b""), later)
                .unwrap_err()
                .code(),
            "peer_skew"
        );
    }

    #[test]
    fn a_steady_stream_keeps_the_cache_at_rate_times_ttl() {
        let n = NonceCache::new(100_000);
        let mut t = NOW;
        for i in 0..60_000u64 {
            // 1,000 requests a second for a minute, each remembered for 10 s.
            t = NOW + i as f64 / 1000.0;
            n.check_and_record("a", &format!("{i:032x}"), t, t + 10.0)
                .unwrap();
        }
        let len = n.len();
        assert!((10_000..=12_000).contains(&len), "{len}");
        // Expired nonces are gone, unexpired ones still refused.
        assert!(
            n.check_and_record("a", &format!("{:032x}", 0), t, t + 10.0)
                .is_ok()
        );
        assert_eq!(
            n.check_and_record("a", &format!("{:032x}", 59_999), t, t + 10.0),
            Err(PeerRefusal::Replay)
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_reopen_dropped_nonces() {
        let n = NonceCache::new(100_000);
        let first = format!("{:032x}", 1);
        let t = NOW.floor() as i64;
        n.check_and_record_signed("a", &first, t, NOW, NOW + 300.0)
            .unwrap();
        // Past its memory, nonces recorded later make every shard drop what expired.
        for i in 2..258u32 {
            n.check_and_record_signed("b", &format!("{i:032x}"), t + 400, NOW + 400.0, NOW + 700.0)
                .unwrap();
        }
        // Stepped back: the first request's timestamp would pass the skew again.
        assert_eq!(
            n.check_and_record_signed("a", &first, t, NOW + 10.0, NOW + 310.0),
            Err(PeerRefusal::Replay)
        );
        // A request signed after anything dropped is a first use, and is then remembered.
        let fresh = format!("{:032x}", 9999);
        n.check_and_record_signed("a", &fresh, t + 10, NOW + 10.0, NOW + 310.0)
            .unwrap();
        assert_eq!(
            n.check_and_record_signed("a", &fresh, t + 10, NOW + 11.0, NOW + 311.0),
            Err(PeerRefusal::Replay)
        );
        // Without a signing time (the plain check), nothing changes.
        n.check_and_record("a", &first, NOW + 10.0, NOW + 310.0)
            .unwrap();
    }

    #[test]
    fn concurrent_duplicates_exactly_one_wins() {
        let k = PeerKey::generate().unwrap();
        let r = ring(&k);
        let n = NonceCache::new(1000);
        let h = sign_peer_request(&k, "a", &parts(b"x"), NOW).unwrap();
        let wins = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    if verify_peer_request(
                        &r,
                        &n,
                        VerifyPolicy::default(),
                        &headers_fn(&h),
                        &parts(b"x"),
                        NOW,
                    )
                    .is_ok()
                    {
                        wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(wins.into_inner(), 1);
    }

    #[test]
    fn rings_accept_next_and_previous_and_parse_files() {
        let (a, b, c) = (
            PeerKey::generate().unwrap(),
            PeerKey::generate().unwrap(),
            PeerKey::generate().unwrap(),
        );
        let text = format!(
            "# written by vault agent\nXAI_PEER_API_KEY={}\nexport XAI_PEER_API_KEY_NEXT=\"{}\"\nXAI_PEER_API_KEY_PREVIOUS='{}'\n",
            a.expose(),
            b.expose(),
            c.expose()
        );
        let r = KeyRing::parse_file_text(&text, Path::new("/run/ring")).unwrap();
        assert_eq!(r.keys().count(), 3);
        assert!(r.by_fingerprint(b.fingerprint()).is_some());
        assert_eq!(
            r.legacy_match(c.expose()).map(PeerKey::fingerprint),
            Some(c.fingerprint())
        );
        assert!(r.legacy_match("not-a-key").is_none());
        for (bad, why) in [
            ("XAI_PEER_API_KEY=short\n", "at least 32"),
            ("NOPE=x\n", "unknown name"),
            ("garbage\n", "NAME=value"),
            (
                &*format!(
                    "XAI_PEER_API_KEY={0}\nXAI_PEER_API_KEY_NEXT={0}\n",
                    a.expose()
                ),
                "same key twice",
            ),
            (
                &*format!("XAI_PEER_API_KEY_NEXT={}\n", a.expose()),
                "without",
            ),
        ] {
            let e = KeyRing::parse_file_text(bad, Path::new("/run/ring"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains(a.expose()), "{e}");
        }
        assert_eq!(format!("{a:?}"), format!("PeerKey({})", a.fingerprint()));
        // A file holding just a base64 key (ending in '=') is not echoed back.
        let raw = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LWlzLWxvbmc=";
        let e = KeyRing::parse_file_text(&format!("{raw}\n"), Path::new("/run/ring"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&raw[..20]), "{e}");
        assert!(e.contains("NAME=value"), "{e}");
    }
}
