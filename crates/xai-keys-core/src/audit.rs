//! The audit log: append-only JSON lines with a hash chain, read from the tail.
//!
//! Each line keeps the reference's fields in order (`timestamp`, `action`, `key_id`, extras) and
//! adds `actor`, `store_sha256` (digest of the store after the change the line belongs to),
//! `prev_hash` and `hash` (SHA-256 over the canonical JSON of the line without `hash`).
//! Canonical JSON sorts object keys at every level and uses compact separators, so the hash does
//! not depend on how a reader orders fields. A reference log without chain fields is accepted as
//! a legacy prefix: the first chained line's `prev_hash` is the SHA-256 of every byte before it
//! (64 zeros for an empty log), which makes that prefix tamper-evident from then on.
//!
//! The log is the store's write-ahead record: see `docs/ARCHITECTURE.md` and `store::file`.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::token::hex;

/// `prev_hash` of the first line of an empty log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Upper bound on `limit` for event reads (defect H: reads are bounded).
pub const MAX_EVENT_LIMIT: usize = 10_000;

/// Who performed an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The offline CLI: OS user and host.
    Cli { user: String, host: String },
    /// An HTTP caller: the authenticating key's fingerprint and the remote address.
    Http {
        key_fingerprint: String,
        remote: String,
    },
    /// The tool itself (recovery).
    System,
}

impl Actor {
    /// The CLI actor for the current process: `$USER` (else `uid:N`) at the host name.
    pub fn current_cli_user() -> Self {
        let uid = rustix::process::geteuid().as_raw();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_graphic()))
            .or_else(|| passwd_name(uid))
            .unwrap_or_else(|| format!("uid:{uid}"));
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        Actor::Cli { user, host }
    }
}

/// The user name of `uid` from `/etc/passwd`, if listed there.
fn passwd_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let uid_field = f.nth(1)?;
        (uid_field.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Cli { user, host } => write!(f, "cli:{user}@{host}"),
            Actor::Http {
                key_fingerprint,
                remote,
            } => write!(f, "http:{key_fingerprint}@{remote}"),
            Actor::System => f.write_str("system:xai-keys"),
        }
    }
}

/// An audit line before it is chained: action, key id and ordered extra fields.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDraft {
    pub action: &'static str,
    pub key_id: Option<String>,
    pub fields: Vec<(&'static str, Value)>,
}

impl AuditDraft {
    pub fn new(action: &'static str, key_id: Option<&str>) -> Self {
        AuditDraft {
            action,
            key_id: key_id.map(str::to_string),
            fields: Vec::new(),
        }
    }
    pub fn with(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.fields.push((name, value.into()));
        self
    }
}

/// A parsed audit line.
pub type AuditEvent = Map<String, Value>;

/// Writes `v` as canonical JSON: keys sorted at every level, compact separators.
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    canonical_json(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The chain hash of a line: SHA-256 of its canonical JSON without the `hash` field.
pub fn line_hash(obj: &AuditEvent) -> String {
    let mut without = obj.clone();
    without.shift_remove("hash");
    let mut s = String::new();
    canonical_json(&Value::Object(without), &mut s);
    hex(&Sha256::digest(s.as_bytes()))
}

/// Builds one chained line (without the trailing newline) and returns it with its hash.
pub fn build_line(
    timestamp: f64,
    draft: &AuditDraft,
    actor: &Actor,
    store_sha256: &str,
    prev_hash: &str,
) -> (String, String) {
    let (event, hash) = build_event(timestamp, draft, actor, store_sha256, prev_hash);
    (Value::Object(event).to_string(), hash)
}

/// Builds one chained line as an object (fields in the order they are written) and its hash.
pub fn build_event(
    timestamp: f64,
    draft: &AuditDraft,
    actor: &Actor,
    store_sha256: &str,
    prev_hash: &str,
) -> (AuditEvent, String) {
    let mut m = Map::new();
    m.insert("timestamp".into(), Value::from(timestamp));
    m.insert("action".into(), Value::from(draft.action));
    m.insert(
        "key_id".into(),
        draft.key_id.clone().map_or(Value::Null, Value::from),
    );
    for (k, v) in &draft.fields {
        m.insert((*k).to_string(), v.clone());
    }
    m.insert("actor".into(), Value::from(actor.to_string()));
    m.insert("store_sha256".into(), Value::from(store_sha256));
    m.insert("prev_hash".into(), Value::from(prev_hash));
    let h = line_hash(&m);
    m.insert("hash".into(), Value::from(h.clone()));
    (m, h)
}

/// Whether a parsed line carries chain fields.
pub fn is_chained(obj: &AuditEvent) -> bool {
    obj.contains_key("hash") || obj.contains_key("prev_hash")
}

/// Field set (`true`) on every line of a multi-line commit except its last. A log whose last
/// complete line has it ends inside a commit whose append was cut short (a SIGKILL can shorten a
/// multi-page `write`; a power loss can keep part of an unsynced append): that commit never
/// reached its commit point, so its lines count as torn, like a partial final line, and the
/// next writer removes them. Without the marker, a cut after the first line of `rotate` (issue,
/// revoke, rotate) would look like a complete commit and be rolled forward half-audited.
pub const TX_CONTINUES: &str = "tx_continues";

/// Whether a chained line says its commit continues on the next line.
pub fn continues(obj: &AuditEvent) -> bool {
    is_chained(obj) && obj.get(TX_CONTINUES).and_then(Value::as_bool) == Some(true)
}

/// What the tail of the log says, for the next append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// Bytes in the log up to and including the last line of the last complete commit.
    pub complete_len: u64,
    /// Bytes after that (an interrupted append: a partial final line, and the complete lines
    /// of a commit whose last line is missing; see [`TX_CONTINUES`]).
    pub torn_bytes: u64,
    /// `prev_hash` for the next line, when the log ends in a chained line (or is empty).
    /// `None` when it ends in a legacy (unchained) prefix: the next line then links to the
    /// SHA-256 of those `complete_len` bytes, which only an append needs; see
    /// [`LogHead::next_prev_hash`]. Readers never hash the log.
    pub chain_head: Option<String>,
    /// `store_sha256` recorded by the last complete line, if it is chained.
    pub store_sha256: Option<String>,
    /// Set when the tail fails the checks a tail read can make: the last committed line's
    /// hash or link is wrong, an unchained line follows chained ones, or lines marked
    /// [`TX_CONTINUES`] at the end are not an intact continuation of the log. Such a tail was
    /// edited or forged, not cut short by a crash: its `store_sha256` must not be trusted as
    /// the store's anchor (nor rolled forward to), and its lines must not be removed as torn.
    pub problem: Option<TailProblem>,
}

/// An integrity failure found at the end of the log by [`read_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailProblem {
    /// 1-based number of the offending line.
    pub line: usize,
    pub problem: String,
}

/// Longest audit line read into memory. Longer lines are not valid audit lines: tail reads
/// return them empty (so they are skipped or treated as unparseable), `verify_chain` reports
/// them, and [`LogFollower`] skips them. A restore line listing a million dropped keys is
/// about 70 MB, so legitimate lines stay far below this.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Block size of backward reads.
const TAIL_BLOCK: usize = 1 << 16;

fn parse_line(bytes: &[u8]) -> Option<AuditEvent> {
    serde_json::from_slice(bytes).ok()
}

/// Whether a line's `hash` field matches its content.
fn hash_ok(obj: &AuditEvent) -> bool {
    obj.get("hash").and_then(Value::as_str) == Some(line_hash(obj).as_str())
}

/// A string field of an event (`None` when absent or not a string).
pub fn str_field<'a>(obj: &'a AuditEvent, k: &str) -> Option<&'a str> {
    obj.get(k).and_then(Value::as_str)
}

/// Reads the log's tail to find where the chain stands. Reads only the last lines unless the
/// log is unchained there (then the legacy prefix is hashed once, on the first chained append).
///
/// The last committed line is checked (its hash, and its link to the line before when that one
/// is chained or it is the first line), and so are the lines of an unfinished commit after it:
/// a crash leaves intact lines that link to the head, so anything else is reported in
/// [`LogHead::problem`] instead of being taken for a torn append.
pub fn read_head(path: &Path) -> Result<LogHead> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LogHead {
                complete_len: 0,
                torn_bytes: 0,
                chain_head: Some(GENESIS.into()),
                store_sha256: None,
                problem: None,
            });
        }
        Err(e) => return Err(Error::io("open audit log", path, e)),
    };
    let len = f
        .metadata()
        .map_err(|e| Error::io("stat audit log", path, e))?
        .len();
    let rd = |e| Error::io("read audit log", path, e);
    let mut lines = TailLines::new(&mut f, len).map_err(rd)?;
    let mut complete_len = lines.complete_len();
    // Lines of a commit whose last line never arrived are torn too (newest first).
    let mut open_tail: Vec<(u64, AuditEvent)> = Vec::new();
    let mut last = lines.next_line().map_err(rd)?;
    while let Some((offset, bytes)) = &last {
        match parse_line(bytes) {
            Some(obj) if continues(&obj) => {
                complete_len = *offset;
                open_tail.push((*offset, obj));
                last = lines.next_line().map_err(rd)?;
            }
            _ => break,
        }
    }
    let torn_bytes = len - complete_len;
    // Problem found, with the byte offset of the line it concerns.
    let mut problem: Option<(u64, String)> = None;
    let (chain_head, store_sha256) = match last {
        None => ((complete_len == 0).then(|| GENESIS.to_string()), None),
        Some((offset, bytes)) => match parse_line(&bytes) {
            Some(obj) if is_chained(&obj) => {
                let Some(hash) = str_field(&obj, "hash").map(str::to_string) else {
                    return Err(Error::CorruptLog {
                        path: path.to_path_buf(),
                        line: line_number(path, offset)?,
                        problem: "the last line has prev_hash but no hash".into(),
                    });
                };
                if !hash_ok(&obj) {
                    problem = Some((
                        offset,
                        "hash does not match the line's content (the line was edited)".into(),
                    ));
                } else {
                    let want_prev = match lines.next_line().map_err(rd)? {
                        None => Some(GENESIS.to_string()),
                        Some((prev_off, prev)) => match parse_line(&prev) {
                            Some(p) if is_chained(&p) => str_field(&p, "hash").map(str::to_string),
                            // A legacy predecessor: linked through the prefix hash, which
                            // only `verify` computes.
                            Some(_) => None,
                            None if prev.iter().all(u8::is_ascii_whitespace) => None,
                            None => {
                                problem = Some((prev_off, "line is not valid JSON".into()));
                                None
                            }
                        },
                    };
                    if let Some(want) = want_prev
                        && str_field(&obj, "prev_hash") != Some(want.as_str())
                    {
                        problem = Some((
                            offset,
                            "prev_hash does not link to the previous line (a line was deleted, inserted or reordered)".into(),
                        ));
                    }
                }
                let anchor = str_field(&obj, "store_sha256").map(str::to_string);
                (Some(hash), anchor)
            }
            // Legacy (or blank/unparseable) last line: the chain starts after everything so
            // far, unless it had started already (then this line was inserted or edited).
            _ => {
                if chain_started_before(&mut lines).map_err(rd)? {
                    problem = Some((
                        offset,
                        "line without chain fields after the chain started (inserted or edited)"
                            .into(),
                    ));
                }
                (None, None)
            }
        },
    };
    // The unfinished commit's lines must continue the chain from the head, intact.
    let mut expected_prev = match (&chain_head, open_tail.is_empty()) {
        (Some(h), _) => h.clone(),
        (None, true) => String::new(), // no lines to check
        (None, false) => hash_prefix(path, complete_len)?,
    };
    for (offset, obj) in open_tail.iter().rev() {
        if problem.is_some() {
            break;
        }
        if str_field(obj, "prev_hash") != Some(expected_prev.as_str()) || !hash_ok(obj) {
            problem = Some((
                *offset,
                format!(
                    "a line marked {TX_CONTINUES} at the end of the log is not an intact continuation of the chain (edited or forged), so it is not removed as an interrupted append"
                ),
            ));
            break;
        }
        expected_prev = str_field(obj, "hash").unwrap_or_default().to_string();
    }
    let problem = match problem {
        Some((offset, problem)) => Some(TailProblem {
            line: line_number(path, offset)?,
            problem,
        }),
        None => None,
    };
    Ok(LogHead {
        complete_len,
        torn_bytes,
        chain_head,
        store_sha256,
        problem,
    })
}

impl LogHead {
    /// `prev_hash` for the next appended line: the last chained line's hash, 64 zeros for an
    /// empty log, or the SHA-256 of the legacy prefix (read from `path`, the log this head was
    /// read from).
    pub fn next_prev_hash(&self, path: &Path) -> Result<String> {
        match &self.chain_head {
            Some(h) => Ok(h.clone()),
            None => hash_prefix(path, self.complete_len),
        }
    }
}

/// Whether any line before the tail reader's position is chained (reads backwards; only lines
/// that mention a hash are parsed).
fn chain_started_before(lines: &mut TailLines<'_>) -> std::io::Result<bool> {
    while let Some((_, bytes)) = lines.next_line()? {
        let mentions_hash = bytes.windows(6).any(|w| w == b"\"hash\"")
            || bytes.windows(11).any(|w| w == b"\"prev_hash\"");
        if mentions_hash && parse_line(&bytes).is_some_and(|o| is_chained(&o)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// 1-based number of the line starting at byte `offset` (counts newlines before it; used on
/// error paths only).
fn line_number(path: &Path, offset: u64) -> Result<usize> {
    let f = File::open(path).map_err(|e| Error::io("open audit log", path, e))?;
    let mut r = BufReader::with_capacity(1 << 16, f.take(offset));
    let mut n = 1usize;
    loop {
        let buf = r
            .fill_buf()
            .map_err(|e| Error::io("read audit log", path, e))?;
        if buf.is_empty() {
            return Ok(n);
        }
        n += buf.iter().filter(|&&b| b == b'\n').count();
        let k = buf.len();
        r.consume(k);
    }
}

fn hash_prefix(path: &Path, len: u64) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io("open audit log", path, e))?;
    let mut h = Sha256::new();
    let mut r = BufReader::with_capacity(1 << 16, f.take(len));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| Error::io("read audit log", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Reads complete lines backwards from the end of a file, in blocks.
///
/// Memory is bounded by [`MAX_LINE_BYTES`] (a longer line is returned empty) and time is
/// linear in the bytes read, however long the lines or the torn fragment at the end are.
pub struct TailLines<'a> {
    f: &'a mut File,
    /// File bytes `[0, pos)` are not yet read.
    pos: u64,
    /// Bytes read but not yet returned, ending at `pos + buf.len()`.
    buf: Vec<u8>,
    complete_len: u64,
    max_line: usize,
}

impl<'a> TailLines<'a> {
    /// Starts at `len`; anything after the last newline (a torn append) is skipped.
    pub fn new(f: &'a mut File, len: u64) -> std::io::Result<Self> {
        Self::with_max_line(f, len, MAX_LINE_BYTES)
    }

    fn with_max_line(f: &'a mut File, len: u64, max_line: usize) -> std::io::Result<Self> {
        let mut t = TailLines {
            f,
            pos: len,
            buf: Vec::new(),
            complete_len: 0,
            max_line,
        };
        // Find the last newline; bytes after it are a torn, uncommitted fragment (scanned,
        // not kept: it may be arbitrarily long).
        t.complete_len = t.skip_back_to_newline()?;
        Ok(t)
    }

    /// Reads backwards from `pos` to the nearest newline, discarding what it passes. Leaves
    /// `buf` holding the bytes from `pos` through that newline and returns the offset just
    /// after it (0 when there is none).
    fn skip_back_to_newline(&mut self) -> std::io::Result<u64> {
        self.buf.clear();
        while self.pos > 0 {
            let start = self.pos.saturating_sub(TAIL_BLOCK as u64);
            let mut block = self.read_block(start)?;
            self.pos = start;
            if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
                block.truncate(i + 1);
                self.buf = block;
                return Ok(start + i as u64 + 1);
            }
        }
        Ok(0)
    }

    /// Reads `[start, pos)`.
    fn read_block(&mut self, start: u64) -> std::io::Result<Vec<u8>> {
        let n = usize::try_from(self.pos - start).unwrap_or(0);
        let mut chunk = vec![0u8; n];
        self.f.seek(SeekFrom::Start(start))?;
        self.f.read_exact(&mut chunk)?;
        Ok(chunk)
    }

    pub fn complete_len(&self) -> u64 {
        self.complete_len
    }

    /// Prepends the previous block. Blocks grow with the buffer, so reading a long line costs
    /// linear, not quadratic, time.
    fn fill(&mut self) -> std::io::Result<()> {
        let step = TAIL_BLOCK.max(self.buf.len()) as u64;
        let start = self.pos.saturating_sub(step);
        let mut chunk = self.read_block(start)?;
        chunk.extend_from_slice(&self.buf);
        self.buf = chunk;
        self.pos = start;
        Ok(())
    }

    /// The previous complete line (without its newline) and its byte offset, or `None` at the
    /// start of the file. A line longer than the maximum is returned empty.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        // buf always ends with '\n' (or is empty).
        loop {
            if self.buf.is_empty() {
                if self.pos == 0 {
                    return Ok(None);
                }
                self.fill()?;
                continue;
            }
            let end = self.buf.len() - 1; // index of the trailing '\n'
            match self.buf[..end].iter().rposition(|&b| b == b'\n') {
                Some(i) => {
                    let line = self.buf[i + 1..end].to_vec();
                    let off = self.pos + i as u64 + 1;
                    self.buf.truncate(i + 1);
                    return Ok(Some((off, line)));
                }
                None if self.pos == 0 => {
                    let line = self.buf[..end].to_vec();
                    self.buf.clear();
                    return Ok(Some((0, line)));
                }
                None if end > self.max_line => {
                    // Too long to keep: find where it starts without holding it.
                    let off = self.skip_back_to_newline()?;
                    return Ok(Some((off, Vec::new())));
                }
                None => self.fill()?,
            }
        }
    }
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// How many (most recent) matching events; 1..=[`MAX_EVENT_LIMIT`].
    pub limit: usize,
    pub action: Option<String>,
    /// Full key id or a prefix of one.
    pub key_id: Option<String>,
    /// Only events at or after this epoch time.
    pub since: Option<f64>,
}

/// Parses a `since` bound for [`EventQuery`]: an RFC 3339 time, epoch seconds, or a duration
/// ago (`2h`, relative to `now`). One parser for the CLI's `--since` and the HTTP `since=`.
pub fn parse_since(input: &str, now: f64) -> Result<f64> {
    let t = input.trim();
    if let Ok(v) = t.parse::<f64>()
        && v.is_finite()
    {
        return Ok(v);
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond() as f64 / 1000.0);
    }
    if let Ok(d) = humantime::parse_duration(t) {
        return Ok(now - d.as_secs_f64());
    }
    Err(Error::InvalidInput(format!(
        "since {input:?}: use an RFC 3339 time (2026-01-31T12:00:00Z), epoch seconds, or a duration ago (2h)"
    )))
}

/// The result of a tail read: events oldest first, and the log length they were read from.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<AuditEvent>,
    /// Length of the complete part of the log when it was read: follow from here.
    pub end_offset: u64,
    /// Identity of the file read (device, inode), to detect replacement when following.
    pub file_id: Option<(u64, u64)>,
}

/// Reads the most recent matching events without reading the whole log.
pub fn read_events(path: &Path, q: &EventQuery) -> Result<EventPage> {
    if q.limit == 0 || q.limit > MAX_EVENT_LIMIT {
        return Err(Error::InvalidInput(format!(
            "limit must be between 1 and {MAX_EVENT_LIMIT}, got {}",
            q.limit
        )));
    }
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(EventPage::default()),
        Err(e) => return Err(Error::io("open audit log", path, e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| Error::io("stat audit log", path, e))?;
    let file_id = {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    };
    let mut tail =
        TailLines::new(&mut f, meta.len()).map_err(|e| Error::io("read audit log", path, e))?;
    let end_offset = tail.complete_len();
    let mut out = Vec::new();
    while out.len() < q.limit {
        let Some((_, bytes)) = tail
            .next_line()
            .map_err(|e| Error::io("read audit log", path, e))?
        else {
            break;
        };
        // Blank and unparseable lines are skipped, as the reference does; `verify` reports them.
        let Ok(obj) = serde_json::from_slice::<AuditEvent>(&bytes) else {
            continue;
        };
        let ts = obj.get("timestamp").and_then(Value::as_f64);
        if let (Some(since), Some(ts)) = (q.since, ts)
            && ts < since
        {
            break; // the log is chronological: nothing older can match
        }
        if matches(&obj, q) {
            out.push(obj);
        }
    }
    out.reverse();
    Ok(EventPage {
        events: out,
        end_offset,
        file_id,
    })
}

/// Whether an event matches a query's filters (not its limit).
pub fn matches(obj: &AuditEvent, q: &EventQuery) -> bool {
    if let Some(a) = &q.action
        && obj.get("action").and_then(Value::as_str) != Some(a.as_str())
    {
        return false;
    }
    if let Some(k) = &q.key_id {
        let hit = ["key_id", "replaced"].iter().any(|f| {
            obj.get(*f)
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with(k.as_str()))
        });
        if !hit {
            return false;
        }
    }
    if let Some(since) = q.since
        && obj
            .get("timestamp")
            .and_then(Value::as_f64)
            .is_some_and(|t| t < since)
    {
        return false;
    }
    true
}

/// A saved follow position: where a follower stopped, the identity of the file it read, and
/// the `hash` of the last chained line before `offset` (when that line was chained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowFrom {
    pub offset: u64,
    pub file_id: Option<(u64, u64)>,
    pub last_hash: Option<String>,
}

/// The identity to resume `from` with on the log at `path`: the saved one, or the current
/// file's when the identity changed but the line ending at `from.offset` is the same line
/// (its `hash` equals `from.last_hash`). A follower given an identity that differs from the
/// file's reads the file from its start.
pub fn resume_identity(path: &Path, from: &FollowFrom) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(mut f) = File::open(path) else {
        return from.file_id;
    };
    let Ok(meta) = f.metadata() else {
        return from.file_id;
    };
    let current = (meta.dev(), meta.ino());
    if from.file_id.is_none_or(|id| id == current) {
        return from.file_id;
    }
    let Some(want) = from.last_hash.as_deref() else {
        return from.file_id;
    };
    if from.offset == 0 || from.offset > meta.len() {
        return from.file_id;
    }
    // The last line before the offset: at most MAX_LINE_BYTES back.
    let start = from.offset.saturating_sub(MAX_LINE_BYTES as u64 + 1);
    let mut buf = vec![0u8; (from.offset - start) as usize];
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_exact(&mut buf).is_err() {
        return from.file_id;
    }
    if buf.last() != Some(&b'\n') {
        return from.file_id;
    }
    let body = &buf[..buf.len() - 1];
    let line = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None if start == 0 => body,
        None => return from.file_id,
    };
    match serde_json::from_slice::<AuditEvent>(line) {
        Ok(obj) if str_field(&obj, "hash") == Some(want) => Some(current),
        _ => from.file_id,
    }
}

/// Follows the log from a byte offset: new complete lines, surviving truncation and replacement.
///
/// Start it from [`EventPage::end_offset`] and [`EventPage::file_id`] of a tail read and no line
/// appended between the read and the first poll is lost.
///
/// A backend whose log is not a file (a distributed store) plugs in its own [`FollowSource`]
/// with [`LogFollower::from_source`].
#[derive(Debug)]
pub struct LogFollower {
    inner: Follow,
}

/// What a [`LogFollower`] reads.
#[derive(Debug)]
enum Follow {
    /// An audit log file, from a byte offset, with the identity of the file last read.
    File(FileFollower),
    /// Another backend's log.
    Source(Box<dyn FollowSource>),
}

/// A source of committed audit lines other than a file (a distributed backend's log).
pub trait FollowSource: Send + fmt::Debug {
    /// Complete commits appended since the last poll (same contract as [`LogFollower::poll`]).
    fn poll(&mut self) -> Result<FollowBatch>;
    /// Position up to which lines have been returned (for a [`FollowFrom::offset`]).
    fn offset(&self) -> u64;
}

/// Follows an audit log file from a byte offset.
#[derive(Debug)]
struct FileFollower {
    path: std::path::PathBuf,
    offset: u64,
    file_id: Option<(u64, u64)>,
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct FollowBatch {
    pub events: Vec<AuditEvent>,
    /// Lines that were not valid JSON (skipped), with their byte offsets.
    pub skipped: Vec<u64>,
    /// Set when the log was truncated or replaced and reading restarted from its beginning.
    pub reset: Option<String>,
}

impl LogFollower {
    /// Follows the audit log file at `path` from byte `offset`; `file_id` is the identity
    /// (device, inode) of the file that offset belongs to (`None`: whatever file is there).
    pub fn new(path: &Path, offset: u64, file_id: Option<(u64, u64)>) -> Self {
        LogFollower {
            inner: Follow::File(FileFollower {
                path: path.to_path_buf(),
                offset,
                file_id,
            }),
        }
    }

    /// Follows another backend's log through `src`.
    pub fn from_source(src: Box<dyn FollowSource>) -> Self {
        LogFollower {
            inner: Follow::Source(src),
        }
    }

    /// The position up to which lines have been returned (a byte offset for a file).
    pub fn offset(&self) -> u64 {
        match &self.inner {
            Follow::File(f) => f.offset,
            Follow::Source(s) => s.offset(),
        }
    }

    /// The identity (device, inode) of the file last read, to persist with [`Self::offset`];
    /// always `None` for a [`FollowSource`].
    pub fn file_id(&self) -> Option<(u64, u64)> {
        match &self.inner {
            Follow::File(f) => f.file_id,
            Follow::Source(_) => None,
        }
    }

    /// Returns complete lines appended since the last poll. Lines of a commit are returned
    /// together, once its last line is there; a batch is bounded (a follower far behind
    /// catches up over several polls).
    pub fn poll(&mut self) -> Result<FollowBatch> {
        match &mut self.inner {
            Follow::File(f) => f.poll(),
            Follow::Source(s) => s.poll(),
        }
    }
}

impl FileFollower {
    /// Returns complete lines appended since the last poll.
    fn poll(&mut self) -> Result<FollowBatch> {
        use std::os::unix::fs::MetadataExt;
        let mut batch = FollowBatch::default();
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(batch),
            Err(e) => return Err(Error::io("open audit log", &self.path, e)),
        };
        let meta = f
            .metadata()
            .map_err(|e| Error::io("stat audit log", &self.path, e))?;
        let id = (meta.dev(), meta.ino());
        if self.file_id.is_some_and(|old| old != id) {
            batch.reset = Some(format!(
                "{} was replaced; reading the new file from its start",
                self.path.display()
            ));
            self.offset = 0;
        } else if meta.len() < self.offset {
            batch.reset = Some(format!(
                "{} was truncated; reading from its start",
                self.path.display()
            ));
            self.offset = 0;
        }
        self.file_id = Some(id);
        if meta.len() == self.offset {
            return Ok(batch);
        }
        f.seek(SeekFrom::Start(self.offset))
            .map_err(|e| Error::io("seek audit log", &self.path, e))?;
        let mut r = BufReader::with_capacity(1 << 16, f.take(meta.len() - self.offset));
        let mut consumed = 0u64;
        // Lines of a commit whose last line has not arrived yet (`tx_continues`): returned
        // with that last line, or re-read at the next poll. A commit cut short is removed by
        // the store's recovery, so its lines must never be reported (and the offset never
        // passes them, so that removal cannot look like a truncation).
        let mut open_tx: Vec<AuditEvent> = Vec::new();
        let mut committed = 0u64;
        let mut line = Vec::new();
        while consumed < POLL_BUDGET || !open_tx.is_empty() {
            let bl = read_line_bounded(&mut r, &mut line, MAX_LINE_BYTES)
                .map_err(|e| Error::io("read audit log", &self.path, e))?;
            if !bl.complete {
                break; // nothing more, or a line still being written
            }
            let pos = self.offset + consumed;
            consumed += bl.consumed;
            if bl.oversized {
                batch.skipped.push(pos);
                batch.events.append(&mut open_tx);
                committed = consumed;
                continue;
            }
            let body = &line[..line.len() - 1];
            if !body.iter().all(u8::is_ascii_whitespace) {
                match serde_json::from_slice::<AuditEvent>(body) {
                    Ok(obj) if continues(&obj) => {
                        open_tx.push(obj);
                        continue;
                    }
                    Ok(obj) => {
                        batch.events.append(&mut open_tx);
                        batch.events.push(obj);
                    }
                    Err(_) => {
                        batch.skipped.push(pos);
                        batch.events.append(&mut open_tx);
                    }
                }
            }
            if open_tx.is_empty() {
                committed = consumed;
            }
        }
        self.offset += committed;
        Ok(batch)
    }
}

/// Bytes of lines one [`LogFollower::poll`] reads at most (plus one line): a follower that
/// starts at the beginning of a huge log catches up over several polls.
const POLL_BUDGET: u64 = 16 << 20;

/// What [`read_line_bounded`] read.
struct BoundedLine {
    /// Bytes consumed from the reader (0 at the end).
    consumed: u64,
    /// The line ended with a newline (else the reader ended first: a partial line).
    complete: bool,
    /// The line was longer than the limit: it was consumed but not kept.
    oversized: bool,
}

/// Reads one line into `line` (with its newline), keeping at most `max` bytes: a longer line
/// is consumed up to its newline without being stored, and `line` is left empty.
fn read_line_bounded(
    r: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<BoundedLine> {
    line.clear();
    let n = r.by_ref().take(max as u64 + 1).read_until(b'\n', line)? as u64;
    if line.last() == Some(&b'\n') || n <= max as u64 {
        return Ok(BoundedLine {
            consumed: n,
            complete: line.last() == Some(&b'\n'),
            oversized: false,
        });
    }
    line.clear();
    let mut consumed = n;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(BoundedLine {
                consumed,
                complete: false,
                oversized: true,
            });
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            r.consume(i + 1);
            return Ok(BoundedLine {
                consumed: consumed + i as u64 + 1,
                complete: true,
                oversized: true,
            });
        }
        let k = buf.len();
        consumed += k as u64;
        r.consume(k);
    }
}

/// Result of checking the whole chain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChainReport {
    pub lines: usize,
    pub legacy_lines: usize,
    pub chained_lines: usize,
    /// First integrity failure: 1-based line number and problem.
    pub first_error: Option<(usize, String)>,
    /// Bytes of an interrupted append at the end (removed by the next change): a partial last
    /// line, and the lines of a final commit whose last line is missing ([`TX_CONTINUES`]).
    pub torn_bytes: u64,
    /// `store_sha256` of the last complete commit.
    pub last_store_sha256: Option<String>,
    pub last_hash: Option<String>,
}

/// Streams the whole log and checks every line and link of the chain.
pub fn verify_chain(path: &Path) -> Result<ChainReport> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ChainReport::default()),
        Err(e) => return Err(Error::io("open audit log", path, e)),
    };
    verify_chain_from(BufReader::with_capacity(1 << 16, f), path)
}

/// [`verify_chain`] over log bytes already in memory (`path` names them in errors).
pub fn verify_chain_bytes(log: &[u8], path: &Path) -> Result<ChainReport> {
    verify_chain_from(log, path)
}

fn verify_chain_from(mut r: impl BufRead, path: &Path) -> Result<ChainReport> {
    let mut rep = ChainReport::default();
    let mut prefix = Sha256::new();
    let mut prefix_len = 0u64;
    let mut prev: Option<String> = None; // Some once the chain has started
    // Bytes of the trailing lines of a commit that has not ended yet (TX_CONTINUES).
    let mut open_commit_bytes = 0u64;
    let mut line = Vec::new();
    loop {
        let bl = read_line_bounded(&mut r, &mut line, MAX_LINE_BYTES)
            .map_err(|e| Error::io("read audit log", path, e))?;
        if bl.consumed == 0 {
            break;
        }
        if !bl.complete {
            rep.torn_bytes = bl.consumed;
            break;
        }
        rep.lines += 1;
        let no = rep.lines;
        if bl.oversized {
            if rep.first_error.is_none() {
                rep.first_error = Some((
                    no,
                    format!("line is longer than {MAX_LINE_BYTES} bytes (not an audit line)"),
                ));
            }
            continue;
        }
        let body = &line[..line.len() - 1];
        let parsed: Option<AuditEvent> = serde_json::from_slice(body).ok();
        let fail = |rep: &mut ChainReport, why: String| {
            if rep.first_error.is_none() {
                rep.first_error = Some((no, why));
            }
        };
        match (parsed, &prev) {
            (Some(obj), _) if is_chained(&obj) => {
                rep.chained_lines += 1;
                let expected_prev = match &prev {
                    Some(p) => p.clone(),
                    None if prefix_len == 0 => GENESIS.to_string(),
                    None => hex(&prefix.clone().finalize()),
                };
                let got_prev = obj.get("prev_hash").and_then(Value::as_str).unwrap_or("");
                let got_hash = obj
                    .get("hash")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if got_prev != expected_prev {
                    fail(&mut rep, "prev_hash does not link to the previous line (a line was deleted, inserted or reordered)".into());
                }
                if line_hash(&obj) != got_hash {
                    fail(
                        &mut rep,
                        "hash does not match the line's content (the line was edited)".into(),
                    );
                }
                if continues(&obj) {
                    open_commit_bytes += line.len() as u64;
                } else {
                    open_commit_bytes = 0;
                    rep.last_store_sha256 = obj
                        .get("store_sha256")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                }
                rep.last_hash = Some(got_hash.clone());
                prev = Some(got_hash);
            }
            (parsed, None) => {
                // Legacy prefix: accepted as is, hashed into the first chained prev_hash.
                rep.legacy_lines += 1;
                if parsed.is_none() && !body.iter().all(u8::is_ascii_whitespace) {
                    fail(&mut rep, "line is not valid JSON".into());
                }
                prefix.update(&line);
                prefix_len += line.len() as u64;
            }
            (_, Some(_)) => {
                fail(
                    &mut rep,
                    "line without chain fields after the chain started (inserted or edited)".into(),
                );
            }
        }
    }
    rep.torn_bytes += open_commit_bytes;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, s: &str) {
        std::fs::write(path, s).unwrap();
    }

    fn chained(n: usize, legacy: &str) -> String {
        let mut s = legacy.to_string();
        let mut prev = if legacy.is_empty() {
            GENESIS.to_string()
        } else {
            hex(&Sha256::digest(legacy.as_bytes()))
        };
        for i in 0..n {
            let d = AuditDraft::new("issue", Some(&format!("{i:064x}"))).with("label", "x");
            let (line, h) = build_line(i as f64 + 0.5, &d, &Actor::System, "s", &prev);
            s.push_str(&line);
            s.push('\n');
            prev = h;
        }
        s
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":null}}"#).unwrap();
        let mut s = String::new();
        canonical_json(&v, &mut s);
        assert_eq!(s, r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn intact_chain_with_legacy_prefix_verifies_and_head_links() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let legacy = "{\"timestamp\": 1.0, \"action\": \"issue\", \"key_id\": \"k\"}\n";
        write(&p, &chained(5, legacy));
        let rep = verify_chain(&p).unwrap();
        assert_eq!(
            (rep.legacy_lines, rep.chained_lines, rep.first_error.clone()),
            (1, 5, None)
        );
        assert_eq!(
            read_head(&p).unwrap().next_prev_hash(&p).unwrap(),
            rep.last_hash.unwrap()
        );
        // Legacy-only log: head is the prefix hash, computed only when an append asks for it.
        write(&p, legacy);
        assert_eq!(read_head(&p).unwrap().chain_head, None);
        assert_eq!(
            read_head(&p).unwrap().next_prev_hash(&p).unwrap(),
            hex(&Sha256::digest(legacy.as_bytes()))
        );
    }

    #[test]
    fn edits_deletions_reorders_and_legacy_edits_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let legacy = "{\"timestamp\": 1.0, \"action\": \"issue\", \"key_id\": \"k\"}\n";
        let good = chained(4, legacy);
        let lines: Vec<&str> = good.lines().collect();
        // edit
        write(&p, &good.replacen("\"label\":\"x\"", "\"label\":\"y\"", 1));
        assert_eq!(verify_chain(&p).unwrap().first_error.unwrap().0, 2);
        // delete line 3
        let mut del = lines.clone();
        del.remove(2);
        write(&p, &(del.join("\n") + "\n"));
        assert_eq!(verify_chain(&p).unwrap().first_error.unwrap().0, 3);
        // reorder
        let mut re = lines.clone();
        re.swap(2, 3);
        write(&p, &(re.join("\n") + "\n"));
        assert!(verify_chain(&p).unwrap().first_error.is_some());
        // edit the legacy prefix
        write(&p, &good.replacen("\"k\"", "\"j\"", 1));
        assert_eq!(verify_chain(&p).unwrap().first_error.unwrap().0, 2);
        // legacy line appended after the chain
        write(&p, &(good.clone() + legacy));
        assert_eq!(verify_chain(&p).unwrap().first_error.unwrap().0, 6);
    }

    #[test]
    fn torn_tail_is_reported_not_fatal_and_tail_reads_skip_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut s = chained(3, "");
        s.push_str("{\"timest");
        write(&p, &s);
        let rep = verify_chain(&p).unwrap();
        assert_eq!((rep.first_error, rep.torn_bytes), (None, 8));
        let head = read_head(&p).unwrap();
        assert_eq!(head.torn_bytes, 8);
        let page = read_events(
            &p,
            &EventQuery {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.events[1]["timestamp"], 2.5);
        assert_eq!(page.end_offset, (s.len() - 8) as u64);
    }

    #[test]
    fn follower_sees_appends_once_and_survives_truncation_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        write(&p, "{\"a\":1}\n");
        let page = read_events(
            &p,
            &EventQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let mut f = LogFollower::new(&p, page.end_offset, page.file_id);
        assert!(f.poll().unwrap().events.is_empty());
        let mut h = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        h.write_all(b"{\"a\":2}\n{\"a\":").unwrap();
        assert_eq!(f.poll().unwrap().events.len(), 1);
        h.write_all(b"3}\n").unwrap();
        let b = f.poll().unwrap();
        assert_eq!(b.events[0]["a"], 3);
        write(&p, "{\"a\":9}\n"); // truncated (shorter) in place
        let b = f.poll().unwrap();
        assert!(b.reset.is_some());
        assert_eq!(b.events[0]["a"], 9);
        let q = dir.path().join("new");
        write(&q, "{\"a\":10}\n{\"a\":11}\n");
        std::fs::rename(&q, &p).unwrap();
        let b = f.poll().unwrap();
        assert!(b.reset.is_some());
        assert_eq!(b.events.len(), 2);
    }

    /// An in-memory log: each poll returns the lines appended since the last one.
    #[derive(Debug, Default)]
    struct MemSource {
        lines: std::sync::Arc<std::sync::Mutex<Vec<AuditEvent>>>,
        next: usize,
    }

    impl FollowSource for MemSource {
        fn poll(&mut self) -> Result<FollowBatch> {
            let lines = self.lines.lock().unwrap();
            let events = lines[self.next..].to_vec();
            self.next = lines.len();
            Ok(FollowBatch {
                events,
                ..Default::default()
            })
        }

        fn offset(&self) -> u64 {
            self.next as u64
        }
    }

    #[test]
    fn follower_delegates_to_a_pluggable_source() {
        fn assert_send<T: Send + fmt::Debug>(_: &T) {}
        let src = MemSource::default();
        let lines = src.lines.clone();
        let event = |n: u64| {
            let mut e = AuditEvent::new();
            e.insert("n".into(), n.into());
            e
        };
        let mut f = LogFollower::from_source(Box::new(src));
        assert_send(&f);
        assert!(format!("{f:?}").contains("MemSource"));
        assert_eq!(f.offset(), 0);
        assert_eq!(f.file_id(), None);
        assert!(f.poll().unwrap().events.is_empty());
        lines.lock().unwrap().extend([event(1), event(2)]);
        let b = f.poll().unwrap();
        assert_eq!(b.events.len(), 2);
        assert_eq!(b.events[1]["n"], 2);
        assert!(b.reset.is_none());
        assert_eq!(f.offset(), 2);
        assert!(f.poll().unwrap().events.is_empty());
        lines.lock().unwrap().push(event(3));
        assert_eq!(f.poll().unwrap().events[0]["n"], 3);
        assert_eq!(f.offset(), 3);
        assert_eq!(f.file_id(), None);
    }

    /// Lines longer than the limit come back empty, at their own offsets, wherever they are;
    /// the others come back intact.
    #[test]
    fn tail_lines_skip_oversized_lines_at_the_right_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let long = |c: u8, n: usize| vec![c; n];
        let lines: Vec<Vec<u8>> = vec![
            long(b'a', 300_000),
            b"short".to_vec(),
            long(b'b', 70_000),
            long(b'c', 10),
            b"".to_vec(),
            long(b'd', 200_001),
        ];
        let mut text = Vec::new();
        let mut offsets = Vec::new();
        for l in &lines {
            offsets.push(text.len() as u64);
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        text.extend_from_slice(&long(b'e', 150_000)); // torn
        std::fs::write(&p, &text).unwrap();
        let mut f = File::open(&p).unwrap();
        let len = text.len() as u64;
        let mut t = TailLines::with_max_line(&mut f, len, 100_000).unwrap();
        assert_eq!(t.complete_len(), len - 150_000);
        let mut got = Vec::new();
        while let Some(x) = t.next_line().unwrap() {
            got.push(x);
        }
        got.reverse();
        let want: Vec<(u64, Vec<u8>)> = lines
            .iter()
            .zip(&offsets)
            .map(|(l, o)| {
                (
                    *o,
                    if l.len() > 100_000 {
                        Vec::new()
                    } else {
                        l.clone()
                    },
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn tail_reads_cross_block_boundaries_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut f = File::create(&p).unwrap();
        for i in 0..5000 {
            let action = if i % 2 == 0 { "issue" } else { "revoke" };
            writeln!(
                f,
                "{{\"timestamp\": {i}, \"action\": \"{action}\", \"key_id\": \"{i:064x}\"}}"
            )
            .unwrap();
        }
        let q = EventQuery {
            limit: 3,
            action: Some("revoke".into()),
            ..Default::default()
        };
        let got: Vec<f64> = read_events(&p, &q)
            .unwrap()
            .events
            .iter()
            .map(|e| e["timestamp"].as_f64().unwrap())
            .collect();
        assert_eq!(got, vec![4995.0, 4997.0, 4999.0]);
        let q = EventQuery {
            limit: 100,
            since: Some(4990.0),
            ..Default::default()
        };
        assert_eq!(read_events(&p, &q).unwrap().events.len(), 10);
        let q = EventQuery {
            limit: 10,
            key_id: Some(format!("{:064x}", 7)[..60].to_string()),
            ..Default::default()
        };
        assert!(!read_events(&p, &q).unwrap().events.is_empty());
        assert!(
            read_events(
                &p,
                &EventQuery {
                    limit: 0,
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
