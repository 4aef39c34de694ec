//! The durable, optionally encrypted queue of security events waiting for webhook delivery.
//!
//! The gateway turns audit-log lines into security events and appends them here in batches, each
//! batch in one record together with the audit-log position it reached (the *cursor*). A restart
//! therefore resumes the log exactly where the last durable batch ended: a crash neither loses an
//! event nor queues one twice. One delivery worker per sink (a configured webhook) asks for its
//! next pending event, delivers it and acks it. An event leaves the queue once every sink it was
//! queued for has acked it or had it dead-lettered. Events that cannot be delivered (too old, sink
//! removed from the configuration, queue over capacity) are written to a dead-letter file: nothing
//! is ever dropped silently.
//!
//! The module is synchronous (std only); the caller wraps a [`Queue`] in a mutex and calls it from
//! a blocking thread. It owns three files side by side: the journal `<path>`, the dead-letter file
//! `<path>.dead` and the lock file `<path>.lock` (an exclusive `flock` held while the queue is
//! open, so that two processes never append to one journal). All three are created 0600, missing
//! parent directories 0700; an existing journal or dead-letter file that group or others may read
//! is set back to 0600. A path that is a symbolic link or not a regular file is refused.
//!
//! # On-disk format
//!
//! Both the journal and the dead-letter file are sequences of `\n`-terminated lines.
//!
//! **Header.** The first line is plain JSON:
//! `{"format":"xai-keys-webhook-queue/1","encrypted":false,"file_id":"<32 hex digits>"}`
//! (the dead-letter file says `"format":"xai-keys-webhook-dead-letter/1"`). `file_id` is random
//! and new for every file written, including every compaction. An encrypted file's header also
//! has `"key_check":"<base64>"`: the XChaCha20-Poly1305 seal (same layout as a record, below) of
//! the ASCII text `xai-keys-webhook-queue key check` with associated data
//! `<format>\n<file_id>\nkey-check`. A key that cannot open it is refused at open (even when the
//! file holds no event) instead of being mistaken for damage. A new file is written with its
//! header in one atomic step (temporary file, fsync, rename, directory fsync), so a file never has
//! a partial header.
//!
//! **Records.** Every following line is one record, a compact JSON object, framed as
//!
//! * plaintext: `<crc> <json>`, where `<crc>` is the CRC-32 (IEEE) of the JSON bytes as 8
//!   lowercase hex digits;
//! * encrypted (a key is set): standard, padded base64 of `nonce (24 bytes) || ciphertext+tag` of
//!   the JSON under XChaCha20-Poly1305 with associated data `<format>\n<file_id>`, so a record
//!   cannot be moved from one file into another. Nonces are random.
//!
//! **Journal records** (`"k"` names the kind):
//!
//! * `{"k":"batch","events":[{"seq":7,"at":1700000000.25,"to":["a1b2c3d4e5f6"],"ev":{…}}],
//!   "cursor":…,"next_seq":8,"evicted":[3,4]}`: one [`Queue::append`]. Each event has its
//!   sequence number, its acceptance time (epoch seconds), the sinks it is pending for and the
//!   event object itself. `cursor` (any JSON value) is absent when the append did not change it.
//!   `next_seq` is the next sequence number to assign. `evicted` (absent when empty) lists older
//!   events removed for every sink because the queue was over capacity; they were written to the
//!   dead-letter file (reason `queue_full`) before this record.
//! * `{"k":"ack","sink":"a1b2c3d4e5f6","seqs":[7,9]}`: those events are no longer pending for
//!   that sink (delivered, or dead-lettered before this record was written).
//! * `{"k":"snapshot","events":[…as in a batch, "to" = the sinks still pending…],"cursor":…,
//!   "next_seq":N}`: the whole state, written only as the first record of a compacted or
//!   rewritten journal.
//!
//! The queue's state is the replay of the records in order. Sequence numbers start at 1 and
//! strictly increase across appends, restarts and compactions (`next_seq` is carried over); the
//! numbers of an append that failed (and so never returned them) are given again.
//!
//! **Recovery at open.** A final record without its newline, or whose CRC or authentication fails,
//! is a torn append (a crash during the write, which therefore never returned): the journal is cut
//! back to the end of the last good record and fsynced, and [`Recovered::torn_bytes`] says how
//! much was cut. Any bad record that is *not* the final one, and any record that passes its check
//! but makes no sense (a non-increasing `seq`, a snapshot after the first record, unknown kind), is
//! damage: [`QueueError::Corrupt`], and nothing is changed. An encrypted file without a key is
//! [`QueueError::KeyRequired`]; a key that fails the key check is [`QueueError::WrongKey`]. A key
//! with a plaintext journal is [`QueueError::NotEncrypted`] while the journal has pending events
//! (they are never rewritten silently); a plaintext journal with no pending event is rewritten
//! encrypted at once (keeping its cursor and `next_seq`, [`Recovered::converted_to_encrypted`]).
//! A plaintext dead-letter file with a key set, or an encrypted one without a key or with another
//! key, is refused the same way, because it cannot be appended to. An empty (0-byte) file is
//! treated as missing. Events pending for a sink that is no longer configured are written to the
//! dead-letter file (reason `sink_removed`, one line per event and removed sink) and acked for
//! that sink; they stay pending for the configured sinks they were queued for. A sink added to the
//! configuration receives only events appended after it was added.
//!
//! **Compaction.** When the journal is at least [`COMPACT_MIN_BYTES`] long and its pending events
//! take less than half of it, it is rewritten with atomic-write-file (temporary file, fsync,
//! rename, directory fsync; mode 0600): a new header and one snapshot record. A crash at any
//! point leaves either the old or the new journal whole.
//!
//! **Dead-letter file.** Append-only, same header and line framing (its own `file_id`), one record
//! per event and sink: `{"seq":7,"sink":"a1b2c3d4e5f6","reason":"max_age","accepted_at":…,
//! "dead_lettered_at":…,"event":{…}}`. Reasons: `queue_full`, `sink_removed`, and whatever the
//! caller passes to [`Queue::dead_letter`]. Lines are fsynced before the journal record that takes
//! the events out of the queue; a crash between the two can leave a line that is written again
//! later (same `seq` and `sink`), never a missing one. A torn final line is cut at open.
//! [`read_dead_letters`] reads the file back.
//!
//! **Durability.** With [`QueueOptions::sync`] every append, ack and dead-letter write is
//! fsynced before the call returns. A write that fails is cut off again (the file is truncated
//! to its previous length) so the call changed nothing; if even that fails the queue refuses
//! further writes ([`QueueError::Unusable`]) until it is reopened, which recovers from the file.
//!
//! **Key.** [`KEY_ENV`]: 64 hex digits, or standard or url-safe base64 (padding optional) of
//! exactly 32 bytes; a Python Fernet key (url-safe base64 of 32 bytes) is accepted and its 32
//! bytes are used as the XChaCha20-Poly1305 key. The Python reference's own queue file (a JSON
//! array, or one Fernet token) is not read: it is refused with [`QueueError::NotAQueue`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use atomic_write_file::AtomicWriteFile;
use atomic_write_file::unix::OpenOptionsExt as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The journal's format name (header `format`, part of every record's associated data).
pub const FORMAT: &str = "xai-keys-webhook-queue/1";
/// The dead-letter file's format name.
pub const DEAD_LETTER_FORMAT: &str = "xai-keys-webhook-dead-letter/1";
/// The environment variable that holds the queue key (named in error messages).
pub const KEY_ENV: &str = "XAI_SECURITY_WEBHOOK_QUEUE_KEY";
/// A sensible [`QueueOptions::max_events`].
pub const DEFAULT_MAX_EVENTS: usize = 10_000;
/// The journal is compacted only from this size on (and only when mostly garbage).
pub const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;
/// Deepest nesting of arrays and objects accepted in an event or a cursor (the JSON reader
/// refuses more than 128 levels, and a record wraps an event in three).
pub const MAX_JSON_DEPTH: usize = 64;
/// Events of this type are evicted last when the queue is full.
pub const PRIORITY_EVENT_TYPE: &str = "api_key_audit";
/// Dead-letter reason: the queue held more than [`QueueOptions::max_events`] pending events.
pub const REASON_QUEUE_FULL: &str = "queue_full";
/// Dead-letter reason: the sink refused the event as invalid (HTTP 4xx) several times.
pub const REASON_REJECTED: &str = "rejected";
/// Dead-letter reason: the sink is no longer configured.
pub const REASON_SINK_REMOVED: &str = "sink_removed";

const KEY_CHECK_TEXT: &[u8] = b"xai-keys-webhook-queue key check";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// How much of a file's start is read to find its header line.
const HEADER_READ_MAX: usize = 64 * 1024;
/// Chunk size for scanning a dead-letter file backwards.
const SCAN_CHUNK: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Which of the queue's files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The journal `<path>`.
    Queue,
    /// The dead-letter file `<path>.dead`.
    DeadLetter,
}

impl FileKind {
    fn noun(self) -> &'static str {
        match self {
            FileKind::Queue => "webhook queue",
            FileKind::DeadLetter => "webhook dead-letter file",
        }
    }

    /// What moving the file aside costs.
    fn consequence(self) -> &'static str {
        match self {
            FileKind::Queue => {
                "its events are then not delivered, and audit lines older than a minute at the next start are passed over: list them with `xai-keys events --since`"
            }
            FileKind::DeadLetter => "keep the moved file: it is the only record of those events",
        }
    }

    fn format(self) -> &'static str {
        match self {
            FileKind::Queue => FORMAT,
            FileKind::DeadLetter => DEAD_LETTER_FORMAT,
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Everything the queue can refuse or fail at. Every message names the file concerned and what
/// the operator can do; none carries a key or an event.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The key string is not one of the accepted forms (the message never echoes it).
    #[error("{0}")]
    InvalidKey(String),

    #[error(
        "{kind} {path} cannot be opened with the key in {KEY_ENV} (it was written with another key): set {KEY_ENV} to the key it was written with, or move {path} aside to start an empty one ({consequence})",
        path = path.display(),
        consequence = kind.consequence()
    )]
    WrongKey { path: PathBuf, kind: FileKind },

    #[error("{}", not_encrypted_message(path, *kind))]
    NotEncrypted { path: PathBuf, kind: FileKind },

    #[error(
        "{kind} {path} is encrypted but {KEY_ENV} is not set: set it to the key the file was written with, or move {path} aside to start an empty one ({consequence})",
        path = path.display(),
        consequence = kind.consequence()
    )]
    KeyRequired { path: PathBuf, kind: FileKind },

    #[error(
        "{kind} {path} is damaged: {detail}. It was left unchanged: keep a copy for inspection and move {path} aside to start an empty one ({consequence})",
        path = path.display(),
        consequence = kind.consequence()
    )]
    Corrupt {
        path: PathBuf,
        kind: FileKind,
        detail: String,
    },

    /// Not a file of this format at all (another program's file, the Python reference's queue, a
    /// symbolic link, a directory); `detail` says what it is and what to do.
    #[error("{path} is not a {kind} of this gateway: {detail}", path = path.display())]
    NotAQueue {
        path: PathBuf,
        kind: FileKind,
        detail: String,
    },

    #[error(
        "webhook queue {path} is in use by another process (it holds the lock {path}.lock): stop the other gateway, or give each gateway its own queue path (XAI_SECURITY_WEBHOOK_QUEUE)",
        path = path.display()
    )]
    Locked { path: PathBuf },

    /// An event or cursor the queue refuses to store (a caller bug, not an operator problem).
    #[error("refused to write to webhook queue {path}: {detail}", path = path.display())]
    InvalidEvent { path: PathBuf, detail: String },

    /// An earlier write failed and could not be undone; the in-memory state may no longer match
    /// the file.
    #[error(
        "webhook queue {path} takes no more writes: {detail}; restart the gateway so the queue is reopened and recovered from what is on disk",
        path = path.display()
    )]
    Unusable { path: PathBuf, detail: String },

    /// The cause is part of the message (not a `source`), so chains print it once.
    #[error(
        "cannot {op} {path}: {err}; check that the gateway's user owns the directory and that the disk is neither full nor read-only",
        path = path.display()
    )]
    Io {
        op: &'static str,
        path: PathBuf,
        err: io::Error,
    },
}

fn not_encrypted_message(path: &Path, kind: FileKind) -> String {
    let p = path.display();
    match kind {
        FileKind::Queue => format!(
            "webhook queue {p} holds undelivered events in plaintext but {KEY_ENV} is set, and it is \
             not re-encrypted silently: unset {KEY_ENV} until the queue has drained (a plaintext \
             queue without pending events is rewritten encrypted automatically), or move {p} aside \
             to start an empty encrypted queue (its events are then not delivered)"
        ),
        FileKind::DeadLetter => format!(
            "webhook dead-letter file {p} is plaintext but {KEY_ENV} is set, and nothing is appended \
             in plaintext once a key is set: move {p} aside (archive it: it is the only record of \
             those events) so that an encrypted one is started"
        ),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> QueueError + 'a {
    move |err| QueueError::Io {
        op,
        path: path.to_path_buf(),
        err,
    }
}

// ---------------------------------------------------------------------------------------------
// Key
// ---------------------------------------------------------------------------------------------

/// The 32-byte queue key. Its `Debug` never shows it; it is overwritten with zeros when dropped.
#[derive(Clone)]
pub struct QueueKey([u8; 32]);

impl QueueKey {
    /// Parses [`KEY_ENV`]'s value: 64 hex digits, or standard or url-safe base64 (with or without
    /// padding) of exactly 32 bytes, such as a Python Fernet key. Surrounding whitespace is
    /// ignored. The error never contains the value.
    pub fn parse(s: &str) -> Result<Self, QueueError> {
        let t = s.trim();
        let mut bytes = [0u8; 32];
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            for (i, pair) in t.as_bytes().chunks_exact(2).enumerate() {
                bytes[i] = (hex_val(pair[0]) << 4) | hex_val(pair[1]);
            }
            return Ok(QueueKey(bytes));
        }
        let mut decoded_len = None;
        for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            if let Ok(mut v) = engine.decode(t) {
                if v.len() == 32 {
                    bytes.copy_from_slice(&v);
                    v.fill(0);
                    return Ok(QueueKey(bytes));
                }
                decoded_len = Some(v.len());
                v.fill(0);
            }
        }
        let what = match decoded_len {
            Some(n) => format!("it is base64 of {n} bytes, not 32"),
            None if t.is_empty() => "it is empty".to_string(),
            None => format!(
                "it is neither 64 hex digits nor base64 ({} characters)",
                t.chars().count()
            ),
        };
        Err(QueueError::InvalidKey(format!(
            "{KEY_ENV} is not a valid webhook queue key ({what}): give 64 hex digits, or standard \
             or url-safe base64 of exactly 32 bytes (a Fernet key works); generate one with \
             `openssl rand -hex 32`"
        )))
    }

    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        QueueKey(bytes)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

impl fmt::Debug for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueKey(redacted)")
    }
}

impl Drop for QueueKey {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the zeroing from being optimised away as a dead store.
        std::hint::black_box(&self.0);
    }
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn random_bytes<const N: usize>(path: &Path) -> Result<[u8; N], QueueError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| QueueError::Io {
        op: "get random bytes from the operating system to write",
        path: path.to_path_buf(),
        err: io::Error::other(e.to_string()),
    })?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// Line framing
// ---------------------------------------------------------------------------------------------

/// How a file's record lines are framed: CRC-32 or sealed with the key.
#[derive(Clone)]
enum Codec {
    Plain,
    Sealed { key: QueueKey, ad: Vec<u8> },
}

fn record_ad(format: &str, file_id: &str) -> Vec<u8> {
    format!("{format}\n{file_id}").into_bytes()
}

fn key_check_ad(format: &str, file_id: &str) -> Vec<u8> {
    format!("{format}\n{file_id}\nkey-check").into_bytes()
}

fn seal(key: &QueueKey, ad: &[u8], msg: &[u8], path: &Path) -> Result<String, QueueError> {
    let nonce = random_bytes::<NONCE_LEN>(path)?;
    let ct = key
        .cipher()
        .encrypt(&nonce.into(), Payload { msg, aad: ad })
        .map_err(|_| QueueError::InvalidEvent {
            path: path.to_path_buf(),
            detail: "a record is too large to encrypt".to_string(),
        })?;
    let mut buf = Vec::with_capacity(NONCE_LEN + ct.len());
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(&ct);
    Ok(STANDARD.encode(buf))
}

fn unseal(key: &QueueKey, ad: &[u8], b64: &[u8]) -> Result<Vec<u8>, &'static str> {
    let raw = STANDARD.decode(b64).map_err(|_| "is not valid base64")?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err("is too short to be a sealed record");
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| "has a bad nonce")?;
    key.cipher()
        .decrypt(&nonce.into(), Payload { msg: ct, aad: ad })
        .map_err(|_| "fails its authentication check")
}

impl Codec {
    fn for_file(format: &str, file_id: &str, key: Option<&QueueKey>) -> Codec {
        match key {
            Some(k) => Codec::Sealed {
                key: k.clone(),
                ad: record_ad(format, file_id),
            },
            None => Codec::Plain,
        }
    }

    /// Appends the framed line (with its newline) for `json` to `out`.
    fn encode_into(&self, json: &[u8], out: &mut Vec<u8>, path: &Path) -> Result<(), QueueError> {
        match self {
            Codec::Plain => {
                out.extend_from_slice(format!("{:08x} ", crc32fast::hash(json)).as_bytes());
                out.extend_from_slice(json);
            }
            Codec::Sealed { key, ad } => {
                out.extend_from_slice(seal(key, ad, json, path)?.as_bytes())
            }
        }
        out.push(b'\n');
        Ok(())
    }

    /// The JSON of one line (without its newline), or why it fails its check.
    fn decode<'a>(&self, line: &'a [u8]) -> Result<Cow<'a, [u8]>, &'static str> {
        match self {
            Codec::Plain => {
                if line.len() < 10
                    || line[8] != b' '
                    || !line[..8].iter().all(u8::is_ascii_hexdigit)
                {
                    return Err("has no CRC prefix");
                }
                let crc = line[..8]
                    .iter()
                    .fold(0u32, |acc, &b| (acc << 4) | u32::from(hex_val(b)));
                let json = &line[9..];
                if crc32fast::hash(json) != crc {
                    return Err("fails its CRC check");
                }
                Ok(Cow::Borrowed(json))
            }
            Codec::Sealed { key, ad } => unseal(key, ad, line).map(Cow::Owned),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    encrypted: bool,
    file_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_check: Option<String>,
}

/// A new header line (with its newline) and the codec for the records after it.
fn new_header(
    kind: FileKind,
    key: Option<&QueueKey>,
    path: &Path,
) -> Result<(Vec<u8>, Codec), QueueError> {
    let format = kind.format();
    let file_id = to_hex(&random_bytes::<16>(path)?);
    let key_check = match key {
        Some(k) => Some(seal(
            k,
            &key_check_ad(format, &file_id),
            KEY_CHECK_TEXT,
            path,
        )?),
        None => None,
    };
    let header = Header {
        format: format.to_string(),
        encrypted: key.is_some(),
        file_id,
        key_check,
    };
    let mut line = to_json(&header, path)?;
    line.push(b'\n');
    Ok((line, Codec::for_file(format, &header.file_id, key)))
}

fn key_opens(key: &QueueKey, format: &str, header: &Header) -> bool {
    header.key_check.as_deref().is_some_and(|kc| {
        unseal(key, &key_check_ad(format, &header.file_id), kc.as_bytes())
            .is_ok_and(|p| p == KEY_CHECK_TEXT)
    })
}

/// Parses the header at the start of `bytes`; returns it and the offset just past its newline.
fn parse_header(bytes: &[u8], kind: FileKind, path: &Path) -> Result<(Header, usize), QueueError> {
    let not_a_queue = |detail: String| QueueError::NotAQueue {
        path: path.to_path_buf(),
        kind,
        detail,
    };
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"[") {
        return Err(not_a_queue(format!(
            "it starts with '[', which is the Python reference's JSON-array queue; this gateway \
             does not read that format: move {} aside (its events are then not delivered, read \
             them with any JSON tool) and start again",
            path.display()
        )));
    }
    if trimmed.starts_with(b"gAAAAA") {
        return Err(not_a_queue(format!(
            "it looks like the Python reference's Fernet-encrypted queue; this gateway does not \
             read that format: move {} aside (its events are then not delivered) and start again",
            path.display()
        )));
    }
    let nl = bytes.iter().position(|&b| b == b'\n');
    let first = &bytes[..nl.unwrap_or(bytes.len())];
    let generic = || {
        not_a_queue(format!(
            "its first line is not a {} header; check the configured path, or move {} aside to \
             start an empty one",
            kind.format(),
            path.display()
        ))
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(first) else {
        return Err(generic());
    };
    let format = map.get("format").and_then(Value::as_str).unwrap_or("");
    if format != kind.format() {
        let other = match kind {
            FileKind::Queue => FileKind::DeadLetter,
            FileKind::DeadLetter => FileKind::Queue,
        };
        if format == other.format() {
            return Err(not_a_queue(format!(
                "it is a {other}; check the configured path"
            )));
        }
        if format.starts_with("xai-keys-webhook-") {
            return Err(not_a_queue(format!(
                "it has format {format:?}, written by another version of the gateway (this one \
                 reads {}): run that version until the queue drains, or move {} aside to start \
                 an empty one",
                kind.format(),
                path.display()
            )));
        }
        return Err(generic());
    }
    let corrupt = |detail: String| QueueError::Corrupt {
        path: path.to_path_buf(),
        kind,
        detail,
    };
    let Some(nl) = nl else {
        return Err(corrupt("its header line has no newline".to_string()));
    };
    let header: Header = serde_json::from_value(Value::Object(map))
        .map_err(|e| corrupt(format!("its header is invalid: {e}")))?;
    if header.file_id.len() != 32 || !header.file_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(corrupt("its header has an invalid file_id".to_string()));
    }
    if header.encrypted && header.key_check.is_none() {
        return Err(corrupt(
            "its header says encrypted but has no key_check".to_string(),
        ));
    }
    Ok((header, nl + 1))
}

/// Checks the header against the configured key; returns the codec for the records.
fn codec_for(
    header: &Header,
    kind: FileKind,
    key: Option<&QueueKey>,
    path: &Path,
) -> Result<Codec, QueueError> {
    match (header.encrypted, key) {
        (true, None) => Err(QueueError::KeyRequired {
            path: path.to_path_buf(),
            kind,
        }),
        (true, Some(k)) if !key_opens(k, kind.format(), header) => Err(QueueError::WrongKey {
            path: path.to_path_buf(),
            kind,
        }),
        (true, Some(k)) => Ok(Codec::for_file(kind.format(), &header.file_id, Some(k))),
        (false, _) => Ok(Codec::Plain),
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct StoredEvent {
    seq: u64,
    at: f64,
    to: Vec<String>,
    ev: Value,
}

/// A field that, when present, is `Some` even if it is JSON `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum RecordIn {
    Batch {
        events: Vec<StoredEvent>,
        #[serde(default, deserialize_with = "present")]
        cursor: Option<Value>,
        next_seq: u64,
        #[serde(default)]
        evicted: Vec<u64>,
    },
    Ack {
        sink: String,
        seqs: Vec<u64>,
    },
    Snapshot {
        events: Vec<StoredEvent>,
        #[serde(default, deserialize_with = "present")]
        cursor: Option<Value>,
        next_seq: u64,
    },
}

#[derive(Serialize)]
struct EventOut<'a> {
    seq: u64,
    at: f64,
    to: &'a [String],
    ev: &'a Value,
}

#[derive(Serialize)]
struct BatchOut<'a> {
    k: &'static str,
    events: &'a [EventOut<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a Value>,
    next_seq: u64,
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    evicted: &'a [u64],
}

#[derive(Serialize)]
struct AckOut<'a> {
    k: &'static str,
    sink: &'a str,
    seqs: &'a [u64],
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    k: &'static str,
    events: Vec<EventOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a Value>,
    next_seq: u64,
}

#[derive(Serialize)]
struct DeadOut<'a> {
    seq: u64,
    sink: &'a str,
    reason: &'a str,
    accepted_at: f64,
    dead_lettered_at: f64,
    event: &'a Value,
}

/// One line of the dead-letter file, as [`read_dead_letters`] returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub seq: u64,
    pub sink: String,
    pub reason: String,
    pub accepted_at: f64,
    pub dead_lettered_at: f64,
    pub event: Value,
}

fn to_json<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, QueueError> {
    serde_json::to_vec(value).map_err(|e| QueueError::InvalidEvent {
        path: path.to_path_buf(),
        detail: format!("it cannot be written as JSON: {e}"),
    })
}

/// Whether `v` nests arrays and objects more than `limit` levels deep.
fn too_deep(v: &Value, limit: usize) -> bool {
    match v {
        Value::Array(items) => limit == 0 || items.iter().any(|x| too_deep(x, limit - 1)),
        Value::Object(map) => limit == 0 || map.values().any(|x| too_deep(x, limit - 1)),
        _ => false,
    }
}

/// Epoch seconds as stored: a non-finite time (which JSON cannot hold) becomes 0.
fn finite(t: f64) -> f64 {
    if t.is_finite() { t } else { 0.0 }
}

// ---------------------------------------------------------------------------------------------
// In-memory state
// ---------------------------------------------------------------------------------------------

struct Entry {
    at: f64,
    ev: Value,
    /// Sinks the event is still pending for, in configuration order.
    to: Vec<String>,
    /// This event's share of the journal bytes that hold it (for the compaction decision).
    size: u64,
}

#[derive(Default)]
struct State {
    events: BTreeMap<u64, Entry>,
    by_sink: HashMap<String, BTreeSet<u64>>,
    next_seq: u64,
    cursor: Option<Value>,
    live_bytes: u64,
}

impl State {
    fn new() -> Self {
        State {
            next_seq: 1,
            ..State::default()
        }
    }

    fn insert(&mut self, seq: u64, entry: Entry) {
        for sink in &entry.to {
            self.by_sink.entry(sink.clone()).or_default().insert(seq);
        }
        self.live_bytes = self.live_bytes.saturating_add(entry.size);
        self.events.insert(seq, entry);
    }

    /// Takes `seq` out for `sink`; drops the event once no sink is left. Unknown pairs: no-op.
    fn remove_for(&mut self, sink: &str, seq: u64) {
        let Some(entry) = self.events.get_mut(&seq) else {
            return;
        };
        let Some(i) = entry.to.iter().position(|s| s == sink) else {
            return;
        };
        entry.to.remove(i);
        if entry.to.is_empty() {
            self.live_bytes = self.live_bytes.saturating_sub(entry.size);
            self.events.remove(&seq);
        }
        if let Some(set) = self.by_sink.get_mut(sink) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_sink.remove(sink);
            }
        }
    }

    /// Takes `seq` out for every sink.
    fn remove_all(&mut self, seq: u64) {
        let sinks = self
            .events
            .get(&seq)
            .map(|e| e.to.clone())
            .unwrap_or_default();
        for sink in sinks {
            self.remove_for(&sink, seq);
        }
    }

    /// Those of `seqs` pending for `sink`, sorted, without duplicates.
    fn pending_among(&self, sink: &str, seqs: &[u64]) -> Vec<u64> {
        let Some(set) = self.by_sink.get(sink) else {
            return Vec::new();
        };
        let mut v: Vec<u64> = seqs.iter().copied().filter(|s| set.contains(s)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn insert_stored(&mut self, events: Vec<StoredEvent>, line_len: u64) -> Result<(), String> {
        let share = line_len / (events.len().max(1) as u64);
        for e in events {
            if e.seq < self.next_seq {
                return Err(format!(
                    "event seq {} is not above the previous one ({})",
                    e.seq,
                    self.next_seq.saturating_sub(1)
                ));
            }
            if e.to.is_empty() {
                return Err(format!("event seq {} is pending for no sink", e.seq));
            }
            let distinct: BTreeSet<&String> = e.to.iter().collect();
            if distinct.len() != e.to.len() {
                return Err(format!("event seq {} names a sink twice", e.seq));
            }
            self.next_seq = e.seq.saturating_add(1);
            self.insert(
                e.seq,
                Entry {
                    at: e.at,
                    ev: e.ev,
                    to: e.to,
                    size: share,
                },
            );
        }
        Ok(())
    }

    fn set_next_seq(&mut self, next_seq: u64) -> Result<(), String> {
        if next_seq < self.next_seq {
            return Err(format!(
                "next_seq {next_seq} is below the sequence numbers already used"
            ));
        }
        self.next_seq = next_seq;
        Ok(())
    }

    /// Applies record number `index` (0 = first after the header), `line_len` bytes long.
    fn apply(&mut self, rec: RecordIn, index: usize, line_len: u64) -> Result<(), String> {
        match rec {
            RecordIn::Batch {
                events,
                cursor,
                next_seq,
                evicted,
            } => {
                for seq in evicted {
                    self.remove_all(seq);
                }
                self.insert_stored(events, line_len)?;
                self.set_next_seq(next_seq)?;
                if cursor.is_some() {
                    self.cursor = cursor;
                }
            }
            RecordIn::Ack { sink, seqs } => {
                for seq in seqs {
                    self.remove_for(&sink, seq);
                }
            }
            RecordIn::Snapshot {
                events,
                cursor,
                next_seq,
            } => {
                if index != 0 {
                    return Err("a snapshot that is not the first record".to_string());
                }
                self.insert_stored(events, line_len)?;
                self.set_next_seq(next_seq)?;
                self.cursor = cursor;
            }
        }
        Ok(())
    }

    /// The snapshot record of the whole state, or `None` when a bare header says it all.
    fn snapshot_json(&self, path: &Path) -> Result<Option<Vec<u8>>, QueueError> {
        if self.events.is_empty() && self.cursor.is_none() && self.next_seq <= 1 {
            return Ok(None);
        }
        let events = self
            .events
            .iter()
            .map(|(seq, e)| EventOut {
                seq: *seq,
                at: e.at,
                to: &e.to,
                ev: &e.ev,
            })
            .collect();
        let rec = SnapshotOut {
            k: "snapshot",
            events,
            cursor: self.cursor.as_ref(),
            next_seq: self.next_seq,
        };
        to_json(&rec, path).map(Some)
    }

    /// After a rewrite: every event's share of the `line_len`-byte snapshot.
    fn reattribute(&mut self, line_len: u64) {
        let share = line_len / (self.events.len().max(1) as u64);
        for e in self.events.values_mut() {
            e.size = share;
        }
        self.live_bytes = share.saturating_mul(self.events.len() as u64);
    }
}

/// Replays the records of `bytes` after the header. Returns the offset just past the last good
/// record (less than `bytes.len()` when a torn final record follows it), or what is damaged.
fn replay(bytes: &[u8], start: usize, codec: &Codec, state: &mut State) -> Result<usize, String> {
    let mut pos = start;
    let mut index = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // No newline: an append that did not finish.
            return Ok(pos);
        };
        let next = pos + nl + 1;
        let json = match codec.decode(&rest[..nl]) {
            Ok(j) => j,
            Err(_) if next == bytes.len() => return Ok(pos),
            Err(why) => {
                return Err(format!(
                    "record {} (at byte {pos}) {why}, and more records follow it",
                    index + 1
                ));
            }
        };
        let rec: RecordIn = serde_json::from_slice(&json).map_err(|e| {
            format!(
                "record {} (at byte {pos}) passes its check but is not a valid record: {e}",
                index + 1
            )
        })?;
        state
            .apply(rec, index, (nl + 1) as u64)
            .map_err(|e| format!("record {} (at byte {pos}): {e}", index + 1))?;
        index += 1;
        pos = next;
    }
    Ok(pos)
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Creates `dir` and its missing parents with mode 0700, durably.
fn ensure_dir(dir: &Path) -> Result<(), QueueError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(QueueError::Io {
                op: "use the queue directory",
                path: dir.to_path_buf(),
                err: io::Error::new(io::ErrorKind::NotADirectory, "it is not a directory"),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect directory", dir)(e)),
    }
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || fs::symlink_metadata(d).is_ok() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    for d in missing {
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => sync_dir(p)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

/// Opens an existing regular file (never through a symbolic link), `None` if it is missing.
/// Sets a file that group or others can access back to 0600.
fn open_existing(path: &Path, kind: FileKind, write: bool) -> Result<Option<File>, QueueError> {
    let not_a_queue = |detail: &str| QueueError::NotAQueue {
        path: path.to_path_buf(),
        kind,
        detail: detail.to_string(),
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(not_a_queue(
            "it is a symbolic link, which is refused (a link could redirect writes elsewhere): \
             configure the real file's path instead",
        ));
    }
    if !meta.is_file() {
        return Err(not_a_queue(
            "it is not a regular file: configure the path of a file (it is created if missing)",
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .append(write)
        .open(path)
        .map_err(io_err("open", path))?;
    let fm = file.metadata().map_err(io_err("inspect", path))?;
    if fm.dev() != meta.dev() || fm.ino() != meta.ino() || !fm.is_file() {
        return Err(not_a_queue(
            "it was replaced while being opened; make sure nothing else writes to it and retry",
        ));
    }
    if write && fm.mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err("set mode 0600 on", path))?;
    }
    Ok(Some(file))
}

/// Takes the queue's exclusive lock `<path>.lock` (held as long as the returned file is open).
fn lock_queue(path: &Path) -> Result<File, QueueError> {
    let lock_path = with_suffix(path, ".lock");
    if let Ok(m) = fs::symlink_metadata(&lock_path)
        && !m.file_type().is_file()
    {
        return Err(QueueError::NotAQueue {
            path: lock_path,
            kind: FileKind::Queue,
            detail: "the queue's lock file must be a regular file (not a symbolic link): remove it"
                .to_string(),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err("open lock file", &lock_path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(QueueError::Locked {
            path: path.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_err("lock", &lock_path)(e)),
    }
}

/// An append-only file of framed lines, opened for appending.
struct Log {
    file: File,
    /// Length of the file up to the end of the last record known to be written.
    len: u64,
    path: PathBuf,
    codec: Codec,
}

/// A failed append: the I/O error, and whether the file was cut back to its previous length.
struct AppendFailure {
    err: io::Error,
    undone: bool,
}

impl Log {
    fn encode(&self, jsons: &[Vec<u8>]) -> Result<Vec<u8>, QueueError> {
        let mut buf = Vec::with_capacity(jsons.iter().map(|j| j.len() + 16).sum());
        for j in jsons {
            self.codec.encode_into(j, &mut buf, &self.path)?;
        }
        Ok(buf)
    }

    /// Writes `bytes` at the end (fsynced when `sync`); on failure cuts the file back.
    fn append(&mut self, bytes: &[u8], sync: bool) -> Result<(), AppendFailure> {
        let res = self
            .file
            .write_all(bytes)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match res {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                let undone = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_all())
                    .is_ok();
                Err(AppendFailure { err, undone })
            }
        }
    }
}

/// Writes a complete new file (header and `records`) atomically: temporary file, fsync, rename,
/// directory fsync, mode 0600. Returns the codec of the new file. On error the old file (if
/// any) is untouched.
fn write_whole_file(
    path: &Path,
    kind: FileKind,
    key: Option<&QueueKey>,
    records: &[Vec<u8>],
) -> Result<(Codec, u64), QueueError> {
    let (mut buf, codec) = new_header(kind, key, path)?;
    for r in records {
        codec.encode_into(r, &mut buf, path)?;
    }
    let mut opts = AtomicWriteFile::options();
    opts.preserve_mode(false);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io_err("create", path))?;
    f.write_all(&buf).map_err(io_err("write", path))?;
    f.commit().map_err(io_err("replace", path))?;
    Ok((codec, buf.len() as u64))
}

/// Opens the file just written by [`write_whole_file`] for appending.
fn open_written(path: &Path, kind: FileKind, codec: Codec, len: u64) -> Result<Log, QueueError> {
    let file = open_existing(path, kind, true)?.ok_or_else(|| QueueError::Io {
        op: "reopen",
        path: path.to_path_buf(),
        err: io::Error::new(
            io::ErrorKind::NotFound,
            "the file vanished after being written",
        ),
    })?;
    let actual = file.metadata().map_err(io_err("inspect", path))?.len();
    if actual != len {
        return Err(QueueError::Io {
            op: "reopen",
            path: path.to_path_buf(),
            err: io::Error::other("it changed size right after being written"),
        });
    }
    Ok(Log {
        file,
        len,
        path: path.to_path_buf(),
        codec,
    })
}

/// Offset of the last `\n` in `[min, end)`, reading `file` backwards.
fn rfind_newline(file: &File, min: u64, end: u64) -> io::Result<Option<u64>> {
    let mut hi = end;
    let mut buf = vec![0u8; SCAN_CHUNK as usize];
    while hi > min {
        let lo = hi.saturating_sub(SCAN_CHUNK).max(min);
        let chunk = &mut buf[..(hi - lo) as usize];
        file.read_exact_at(chunk, lo)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// Opens the dead-letter file for appending, if it exists: checks its header against the key and
/// cuts a torn final line. Refusals happen before anything is changed.
fn open_dead_letter(
    path: &Path,
    key: Option<&QueueKey>,
    sync: bool,
) -> Result<Option<Log>, QueueError> {
    let kind = FileKind::DeadLetter;
    let Some(mut file) = open_existing(path, kind, true)? else {
        return Ok(None);
    };
    let len = file.metadata().map_err(io_err("inspect", path))?.len();
    if len == 0 {
        drop(file);
        let (codec, len) = write_whole_file(path, kind, key, &[])?;
        return open_written(path, kind, codec, len).map(Some);
    }
    let mut head = Vec::new();
    (&mut file)
        .take(HEADER_READ_MAX as u64)
        .read_to_end(&mut head)
        .map_err(io_err("read", path))?;
    let (header, header_end) = parse_header(&head, kind, path)?;
    let codec = match (header.encrypted, key) {
        (false, Some(_)) => {
            return Err(QueueError::NotEncrypted {
                path: path.to_path_buf(),
                kind,
            });
        }
        _ => codec_for(&header, kind, key, path)?,
    };
    let header_end = header_end as u64;
    let read_err = io_err("read", path);
    let mut end = len;
    // An incomplete final line: cut it (its events are still in the journal).
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1).map_err(read_err)?;
    if last[0] != b'\n' {
        end = rfind_newline(&file, header_end - 1, len)
            .map_err(io_err("read", path))?
            .map_or(header_end, |i| i + 1);
    }
    // A complete final line that fails its check: also torn.
    if end > header_end {
        let start = rfind_newline(&file, header_end - 1, end - 1)
            .map_err(io_err("read", path))?
            .map_or(header_end, |i| i + 1);
        let mut line = vec![0u8; (end - 1 - start) as usize];
        file.read_exact_at(&mut line, start)
            .map_err(io_err("read", path))?;
        if codec.decode(&line).is_err() {
            end = start;
        }
    }
    if end != len {
        file.set_len(end)
            .map_err(io_err("cut the torn final line of", path))?;
        if sync {
            file.sync_all().map_err(io_err("fsync", path))?;
        }
    }
    Ok(Some(Log {
        file,
        len: end,
        path: path.to_path_buf(),
        codec,
    }))
}

/// Reads every record of a dead-letter file (a torn final line is skipped).
pub fn read_dead_letters(
    path: &Path,
    key: Option<&QueueKey>,
) -> Result<Vec<DeadLetter>, QueueError> {
    let kind = FileKind::DeadLetter;
    let Some(mut file) = open_existing(path, kind, false)? else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err("read", path))?;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let (header, mut pos) = parse_header(&bytes, kind, path)?;
    let codec = codec_for(&header, kind, key, path)?;
    let corrupt = |detail: String| QueueError::Corrupt {
        path: path.to_path_buf(),
        kind,
        detail,
    };
    let mut out = Vec::new();
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        let next = pos + nl + 1;
        let json = match codec.decode(&rest[..nl]) {
            Ok(j) => j,
            Err(_) if next == bytes.len() => break,
            Err(why) => {
                return Err(corrupt(format!(
                    "line {} (at byte {pos}) {why}, and more lines follow it",
                    out.len() + 2
                )));
            }
        };
        let rec: DeadLetter = serde_json::from_slice(&json).map_err(|e| {
            corrupt(format!(
                "line {} (at byte {pos}) is not a dead-letter record: {e}",
                out.len() + 2
            ))
        })?;
        out.push(rec);
        pos = next;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The queue
// ---------------------------------------------------------------------------------------------

/// How to open a [`Queue`].
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Encrypts the journal and dead-letter file ([`KEY_ENV`]).
    pub key: Option<QueueKey>,
    /// Sink ids currently configured (opaque short strings chosen by the caller). Duplicates are
    /// ignored. Pending events of sinks not listed are dead-lettered at open (`sink_removed`).
    pub sinks: Vec<String>,
    /// Pending events beyond this count: the oldest are dead-lettered with reason `queue_full`
    /// when appending.
    pub max_events: usize,
    /// fsync every write (production). Off only for benchmarks: a crash may then lose recent
    /// writes, or damage more than the final record.
    pub sync: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            key: None,
            sinks: Vec::new(),
            max_events: DEFAULT_MAX_EVENTS,
            sync: true,
        }
    }
}

/// What [`Queue::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// The cursor of the last complete append (`None` on a new queue or if none was given).
    pub cursor: Option<Value>,
    /// Events still pending for at least one sink.
    pub pending: usize,
    /// Bytes of a torn final record (a crash mid-append) that were cut off.
    pub torn_bytes: u64,
    /// Dead-letter lines written with reason `sink_removed` (one per event and removed sink).
    pub dead_lettered_sink_removed: usize,
    /// A plaintext journal without pending events was rewritten encrypted because a key is set.
    pub converted_to_encrypted: bool,
}

/// What [`Queue::append`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The sequence numbers given to the batch's events, in order (empty when no sink is
    /// configured).
    pub seqs: Vec<u64>,
    /// Events dead-lettered with reason `queue_full` to stay within `max_events` (the oldest
    /// first; when the batch alone exceeds it, its own first events too).
    pub dead_lettered: usize,
    /// Events not kept because no sink is configured.
    pub unrouted: usize,
}

/// A pending event, as handed to a delivery worker.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    pub seq: u64,
    /// When it was appended (epoch seconds).
    pub accepted_at: f64,
    pub event: Value,
}

/// The open queue. See the module documentation for the format and guarantees.
pub struct Queue {
    path: PathBuf,
    dead_path: PathBuf,
    key: Option<QueueKey>,
    sinks: Vec<String>,
    max_events: usize,
    sync: bool,
    journal: Log,
    dead: Option<Log>,
    state: State,
    compact_min_bytes: u64,
    /// After a failed compaction, none is tried again before the journal reaches this length.
    compact_retry_at: u64,
    compaction_error: Option<QueueError>,
    /// Set when a write failed and could not be undone: writes are refused from then on.
    broken: Option<String>,
    _lock: File,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("path", &self.path)
            .field("encrypted", &self.key.is_some())
            .field("sinks", &self.sinks)
            .field("pending", &self.state.events.len())
            .field("next_seq", &self.state.next_seq)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens or creates the queue at `path`, recovering from an interrupted write, and
    /// dead-letters the pending events of sinks no longer configured. `now`: epoch seconds.
    pub fn open(
        path: &Path,
        opts: QueueOptions,
        now: f64,
    ) -> Result<(Queue, Recovered), QueueError> {
        let now = finite(now);
        let path = path.to_path_buf();
        let dead_path = with_suffix(&path, ".dead");
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            ensure_dir(parent)?;
        }
        let lock = lock_queue(&path)?;
        let key = opts.key;
        let mut sinks: Vec<String> = Vec::with_capacity(opts.sinks.len());
        for s in opts.sinks {
            if !sinks.contains(&s) {
                sinks.push(s);
            }
        }
        let kind = FileKind::Queue;
        let mut recovered = Recovered::default();
        let mut state = State::new();

        // 1. Read and check the journal; nothing is changed yet.
        let mut existing = None;
        if let Some(mut file) = open_existing(&path, kind, true)? {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(io_err("read", &path))?;
            if !bytes.is_empty() {
                let (header, body) = parse_header(&bytes, kind, &path)?;
                let codec = codec_for(&header, kind, key.as_ref(), &path)?;
                let good_end = replay(&bytes, body, &codec, &mut state).map_err(|detail| {
                    QueueError::Corrupt {
                        path: path.clone(),
                        kind,
                        detail,
                    }
                })?;
                if !header.encrypted && key.is_some() {
                    if !state.events.is_empty() {
                        return Err(QueueError::NotEncrypted { path, kind });
                    }
                    recovered.converted_to_encrypted = true;
                }
                recovered.torn_bytes = (bytes.len() - good_end) as u64;
                existing = Some((file, codec, good_end as u64));
            }
        }

        // 2. Check the dead-letter file before changing anything else.
        let dead = open_dead_letter(&dead_path, key.as_ref(), opts.sync)?;

        // 3. Bring the journal to a clean end: cut a torn record, or write a new file.
        let journal = match existing {
            Some((file, codec, good_end)) if !recovered.converted_to_encrypted => {
                if recovered.torn_bytes > 0 {
                    file.set_len(good_end)
                        .map_err(io_err("cut the torn final record of", &path))?;
                    file.sync_all().map_err(io_err("fsync", &path))?;
                }
                Log {
                    file,
                    len: good_end,
                    path: path.clone(),
                    codec,
                }
            }
            _ => {
                let snapshot: Vec<Vec<u8>> = state.snapshot_json(&path)?.into_iter().collect();
                let (codec, len) = write_whole_file(&path, kind, key.as_ref(), &snapshot)?;
                state.reattribute(len);
                open_written(&path, kind, codec, len)?
            }
        };

        let mut queue = Queue {
            path,
            dead_path,
            key,
            sinks,
            max_events: opts.max_events,
            sync: opts.sync,
            journal,
            dead,
            state,
            compact_min_bytes: COMPACT_MIN_BYTES,
            compact_retry_at: 0,
            compaction_error: None,
            broken: None,
            _lock: lock,
        };

        // 4. Events of sinks that are gone.
        recovered.dead_lettered_sink_removed = queue.dead_letter_removed_sinks(now)?;
        queue.maybe_compact();
        recovered.cursor = queue.state.cursor.clone();
        recovered.pending = queue.state.events.len();
        Ok((queue, recovered))
    }

    /// Appends a batch and the new cursor as one record, fsynced before returning. Every event
    /// becomes pending for every configured sink; with no sink configured the events are not kept
    /// (only the cursor is recorded). `cursor: None` leaves the stored cursor as it is. When the
    /// queue would hold more than `max_events` pending events, the oldest are first written to
    /// the dead-letter file (`queue_full`). Nothing is written for an empty batch without cursor.
    pub fn append(
        &mut self,
        events: Vec<Value>,
        cursor: Option<Value>,
        now: f64,
    ) -> Result<AppendOutcome, QueueError> {
        self.usable()?;
        if let Some(i) = events.iter().position(|e| too_deep(e, MAX_JSON_DEPTH)) {
            return Err(self.invalid(format!(
                "event {i} of the batch nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
            )));
        }
        if cursor.as_ref().is_some_and(|c| too_deep(c, MAX_JSON_DEPTH)) {
            return Err(self.invalid(format!(
                "the cursor nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
            )));
        }
        let now = finite(now);
        let mut outcome = AppendOutcome::default();
        let events = if self.sinks.is_empty() {
            outcome.unrouted = events.len();
            Vec::new()
        } else {
            events
        };
        if events.is_empty() && cursor.is_none() {
            return Ok(outcome);
        }

        let first = self.state.next_seq;
        let next_seq = first
            .checked_add(events.len() as u64)
            .ok_or_else(|| self.invalid("sequence numbers are exhausted".to_string()))?;
        let overflow = (self.state.events.len() + events.len()).saturating_sub(self.max_events);
        // Lifecycle events (`api_key_audit`, the audit log's record of key changes) are
        // evicted last: a flood of gateway-side events (authentication failures from many
        // addresses) must not push a revocation out of the SOC's queue.
        let lifecycle =
            |e: &Entry| e.ev.get("event_type").and_then(Value::as_str) == Some(PRIORITY_EVENT_TYPE);
        let mut evict_old: Vec<u64> = self
            .state
            .events
            .iter()
            .filter(|(_, e)| !lifecycle(e))
            .map(|(seq, _)| *seq)
            .take(overflow)
            .collect();
        if evict_old.len() < overflow {
            let more: Vec<u64> = self
                .state
                .events
                .iter()
                .filter(|(_, e)| lifecycle(e))
                .map(|(seq, _)| *seq)
                .take(overflow - evict_old.len())
                .collect();
            evict_old.extend(more);
            evict_old.sort_unstable();
        }
        let evict_new = overflow - evict_old.len();

        // Dead-letter lines for what does not fit, then the batch record.
        let mut dead = Vec::new();
        for seq in &evict_old {
            if let Some(e) = self.state.events.get(seq) {
                for sink in &e.to {
                    dead.push(self.dead_json(*seq, sink, REASON_QUEUE_FULL, e.at, &e.ev, now)?);
                }
            }
        }
        for (i, ev) in events.iter().take(evict_new).enumerate() {
            for sink in &self.sinks {
                dead.push(self.dead_json(
                    first + i as u64,
                    sink,
                    REASON_QUEUE_FULL,
                    now,
                    ev,
                    now,
                )?);
            }
        }
        let kept: Vec<(u64, Value)> = events
            .into_iter()
            .enumerate()
            .skip(evict_new)
            .map(|(i, ev)| (first + i as u64, ev))
            .collect();
        let record = {
            let outs: Vec<EventOut<'_>> = kept
                .iter()
                .map(|(seq, ev)| EventOut {
                    seq: *seq,
                    at: now,
                    to: &self.sinks,
                    ev,
                })
                .collect();
            to_json(
                &BatchOut {
                    k: "batch",
                    events: &outs,
                    cursor: cursor.as_ref(),
                    next_seq,
                    evicted: &evict_old,
                },
                &self.path,
            )?
        };
        if !dead.is_empty() {
            self.write_dead(&dead)?;
        }
        let written = self.write_journal(&[record])?;

        for seq in &evict_old {
            self.state.remove_all(*seq);
        }
        let share = written / (kept.len().max(1) as u64);
        for (seq, ev) in kept {
            self.state.insert(
                seq,
                Entry {
                    at: now,
                    ev,
                    to: self.sinks.clone(),
                    size: share,
                },
            );
        }
        self.state.next_seq = next_seq;
        if cursor.is_some() {
            self.state.cursor = cursor;
        }
        outcome.seqs = (first..next_seq).collect();
        outcome.dead_lettered = evict_old.len() + evict_new;
        self.maybe_compact();
        Ok(outcome)
    }

    /// The oldest event pending for `sink` with a sequence number above `after` (`None`: from the
    /// start).
    pub fn next_for(&self, sink: &str, after: Option<u64>) -> Option<QueuedEvent> {
        let set = self.by_sink(sink)?;
        let seq = match after {
            None => set.first().copied(),
            Some(a) => set
                .range((Bound::Excluded(a), Bound::Unbounded))
                .next()
                .copied(),
        }?;
        let e = self.state.events.get(&seq)?;
        Some(QueuedEvent {
            seq,
            accepted_at: e.at,
            event: e.ev.clone(),
        })
    }

    /// Marks events delivered to `sink`, durably (one fsynced record). Sequence numbers not
    /// pending for `sink` (unknown, or already acked) are ignored; if none is, nothing is written.
    pub fn ack(&mut self, sink: &str, seqs: &[u64]) -> Result<(), QueueError> {
        self.usable()?;
        let effective = self.state.pending_among(sink, seqs);
        if effective.is_empty() {
            return Ok(());
        }
        self.write_acks(&[(sink, &effective)])?;
        self.maybe_compact();
        Ok(())
    }

    /// Writes these events (those pending for `sink`; others are ignored) to the dead-letter file
    /// with `reason`, fsynced, then acks them for `sink`.
    pub fn dead_letter(
        &mut self,
        sink: &str,
        seqs: &[u64],
        reason: &str,
        now: f64,
    ) -> Result<(), QueueError> {
        self.usable()?;
        let effective = self.state.pending_among(sink, seqs);
        if effective.is_empty() {
            return Ok(());
        }
        let now = finite(now);
        let mut lines = Vec::with_capacity(effective.len());
        for seq in &effective {
            if let Some(e) = self.state.events.get(seq) {
                lines.push(self.dead_json(*seq, sink, reason, e.at, &e.ev, now)?);
            }
        }
        self.write_dead(&lines)?;
        self.write_acks(&[(sink, &effective)])?;
        self.maybe_compact();
        Ok(())
    }

    /// Events pending for `sink`.
    pub fn depth(&self, sink: &str) -> usize {
        self.by_sink(sink).map_or(0, BTreeSet::len)
    }

    /// When the oldest event pending for `sink` was appended.
    pub fn oldest_accepted_at(&self, sink: &str) -> Option<f64> {
        let seq = self.by_sink(sink)?.first()?;
        self.state.events.get(seq).map(|e| e.at)
    }

    /// Events pending for at least one sink.
    pub fn pending(&self) -> usize {
        self.state.events.len()
    }

    /// The cursor of the last append that gave one.
    pub fn cursor(&self) -> Option<&Value> {
        self.state.cursor.as_ref()
    }

    /// The configured sinks (duplicates removed).
    pub fn sinks(&self) -> &[String] {
        &self.sinks
    }

    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The journal's current length in bytes.
    pub fn file_len(&self) -> u64 {
        self.journal.len
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<path>.dead`.
    pub fn dead_letter_path(&self) -> PathBuf {
        self.dead_path.clone()
    }

    /// The error of the last automatic compaction that failed, if any, taken once (for the log).
    /// A failed compaction changes nothing: the journal just stays longer.
    pub fn take_compaction_error(&mut self) -> Option<QueueError> {
        self.compaction_error.take()
    }

    /// Rewrites the journal as a header and one snapshot of the pending events, cursor and next
    /// sequence number, atomically. Automatic when the journal is large and mostly garbage.
    pub fn compact(&mut self) -> Result<(), QueueError> {
        self.usable()?;
        let snapshot: Vec<Vec<u8>> = self.state.snapshot_json(&self.path)?.into_iter().collect();
        let (codec, len) =
            write_whole_file(&self.path, FileKind::Queue, self.key.as_ref(), &snapshot)?;
        // The new file is in place: the old handle now points at a deleted file.
        match open_written(&self.path, FileKind::Queue, codec, len) {
            Ok(log) => {
                self.journal = log;
                self.state.reattribute(len);
                self.compact_retry_at = 0;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(format!("reopening it after compaction failed: {e}"));
                Err(e)
            }
        }
    }

    // -- internals ------------------------------------------------------------------------------

    fn by_sink(&self, sink: &str) -> Option<&BTreeSet<u64>> {
        self.state.by_sink.get(sink)
    }

    fn usable(&self) -> Result<(), QueueError> {
        match &self.broken {
            Some(detail) => Err(QueueError::Unusable {
                path: self.path.clone(),
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    fn invalid(&self, detail: String) -> QueueError {
        QueueError::InvalidEvent {
            path: self.path.clone(),
            detail,
        }
    }

    fn dead_json(
        &self,
        seq: u64,
        sink: &str,
        reason: &str,
        accepted_at: f64,
        event: &Value,
        now: f64,
    ) -> Result<Vec<u8>, QueueError> {
        to_json(
            &DeadOut {
                seq,
                sink,
                reason,
                accepted_at,
                dead_lettered_at: now,
                event,
            },
            &self.dead_path,
        )
    }

    /// Appends records to the journal; returns the bytes written.
    fn write_journal(&mut self, jsons: &[Vec<u8>]) -> Result<u64, QueueError> {
        self.usable()?;
        let bytes = self.journal.encode(jsons)?;
        match self.journal.append(&bytes, self.sync) {
            Ok(()) => Ok(bytes.len() as u64),
            Err(f) => {
                if !f.undone {
                    self.broken = Some(format!(
                        "a failed write ({}) could not be cut off again",
                        f.err
                    ));
                }
                Err(io_err("append a record to", &self.path)(f.err))
            }
        }
    }

    /// Appends lines to the dead-letter file (creating it with its header first), fsynced.
    fn write_dead(&mut self, jsons: &[Vec<u8>]) -> Result<(), QueueError> {
        self.usable()?;
        let log = match &mut self.dead {
            Some(log) => log,
            None => {
                let kind = FileKind::DeadLetter;
                let (codec, len) = write_whole_file(&self.dead_path, kind, self.key.as_ref(), &[])?;
                self.dead
                    .insert(open_written(&self.dead_path, kind, codec, len)?)
            }
        };
        let bytes = log.encode(jsons)?;
        // Fsynced (with `sync`) before the journal record that relies on these lines.
        match log.append(&bytes, self.sync) {
            Ok(()) => Ok(()),
            Err(f) => {
                if !f.undone {
                    self.broken = Some(format!(
                        "a failed write to {} ({}) could not be cut off again",
                        self.dead_path.display(),
                        f.err
                    ));
                }
                Err(io_err("append to", &self.dead_path)(f.err))
            }
        }
    }

    /// Writes ack records and applies them.
    fn write_acks(&mut self, acks: &[(&str, &[u64])]) -> Result<(), QueueError> {
        let mut jsons = Vec::with_capacity(acks.len());
        for (sink, seqs) in acks {
            jsons.push(to_json(
                &AckOut {
                    k: "ack",
                    sink,
                    seqs,
                },
                &self.path,
            )?);
        }
        self.write_journal(&jsons)?;
        for (sink, seqs) in acks {
            for seq in *seqs {
                self.state.remove_for(sink, *seq);
            }
        }
        Ok(())
    }

    /// Dead-letters (reason `sink_removed`) and acks every event pending for a sink that is not
    /// configured. Returns the number of dead-letter lines written.
    fn dead_letter_removed_sinks(&mut self, now: f64) -> Result<usize, QueueError> {
        let mut removed: Vec<(String, Vec<u64>)> = self
            .state
            .by_sink
            .iter()
            .filter(|(sink, set)| !set.is_empty() && !self.sinks.contains(sink))
            .map(|(sink, set)| (sink.clone(), set.iter().copied().collect()))
            .collect();
        if removed.is_empty() {
            return Ok(0);
        }
        removed.sort();
        let mut lines = Vec::new();
        for (sink, seqs) in &removed {
            for seq in seqs {
                if let Some(e) = self.state.events.get(seq) {
                    lines.push(self.dead_json(
                        *seq,
                        sink,
                        REASON_SINK_REMOVED,
                        e.at,
                        &e.ev,
                        now,
                    )?);
                }
            }
        }
        self.write_dead(&lines)?;
        let acks: Vec<(&str, &[u64])> = removed
            .iter()
            .map(|(s, q)| (s.as_str(), q.as_slice()))
            .collect();
        self.write_acks(&acks)?;
        Ok(lines.len())
    }

    /// Compacts when the journal is large and its pending events take less than half of it.
    fn maybe_compact(&mut self) {
        let len = self.journal.len;
        if len < self.compact_min_bytes
            || len < self.compact_retry_at
            || self.state.live_bytes.saturating_mul(2) >= len
            || self.broken.is_some()
        {
            return;
        }
        if let Err(e) = self.compact() {
            self.compact_retry_at = len.saturating_add(self.compact_min_bytes);
            self.compaction_error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;
    use tempfile::TempDir;

    const NOW: f64 = 1_700_000_000.5;

    fn opts(sinks: &[&str]) -> QueueOptions {
        QueueOptions {
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            ..QueueOptions::default()
        }
    }

    fn keyed(sinks: &[&str], key: &QueueKey) -> QueueOptions {
        QueueOptions {
            key: Some(key.clone()),
            ..opts(sinks)
        }
    }

    fn key1() -> QueueKey {
        QueueKey::from_bytes([7u8; 32])
    }

    fn key2() -> QueueKey {
        QueueKey::from_bytes([9u8; 32])
    }

    fn ev(id: &str) -> Value {
        json!({"event_id": id, "event_type": "api_key_revoked", "severity": "WARNING", "n": 1.5})
    }

    fn setup() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook-queue");
        (dir, path)
    }

    fn ids(q: &Queue, sink: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut after = None;
        while let Some(e) = q.next_for(sink, after) {
            out.push(e.event["event_id"].as_str().unwrap().to_string());
            after = Some(e.seq);
        }
        out
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Byte offsets where each line of `p` starts.
    fn line_starts(bytes: &[u8]) -> Vec<usize> {
        let mut v = vec![0];
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' && i + 1 < bytes.len() {
                v.push(i + 1);
            }
        }
        v
    }

    #[test]
    fn round_trip_across_reopen() {
        let (_d, path) = setup();
        let (mut q, rec) = Queue::open(&path, opts(&["a", "b"]), NOW).unwrap();
        assert_eq!(rec, Recovered::default());
        let out = q
            .append(vec![ev("e1"), ev("e2"), ev("e3")], Some(json!(10)), NOW)
            .unwrap();
        assert_eq!(out.seqs, vec![1, 2, 3]);
        let first = q.next_for("a", None).unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(first.accepted_at, NOW);
        assert_eq!(first.event, ev("e1"));
        assert_eq!(q.next_for("a", Some(1)).unwrap().seq, 2);
        assert_eq!(q.next_for("a", Some(3)), None);
        q.ack("a", &[1, 2]).unwrap();
        let len = q.file_len();
        q.ack("a", &[1, 2, 99]).unwrap();
        assert_eq!(q.file_len(), len, "nothing to ack: nothing written");
        drop(q);

        let (mut q, rec) = Queue::open(&path, opts(&["a", "b"]), NOW + 1.0).unwrap();
        assert_eq!(rec.pending, 3);
        assert_eq!(rec.cursor, Some(json!(10)));
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(ids(&q, "a"), vec!["e3"]);
        assert_eq!(ids(&q, "b"), vec!["e1", "e2", "e3"]);
        // Events round-trip exactly (key order and floats).
        assert_eq!(
            serde_json::to_string(&q.next_for("b", None).unwrap().event).unwrap(),
            serde_json::to_string(&ev("e1")).unwrap()
        );
        let out = q.append(vec![ev("e4")], None, NOW + 2.0).unwrap();
        assert_eq!(out.seqs, vec![4]);
        q.ack("b", &[1, 2, 3, 4]).unwrap();
        q.ack("a", &[3, 4]).unwrap();
        assert_eq!(q.pending(), 0);
        drop(q);

        // Seqs keep increasing even though nothing is pending.
        let (mut q, rec) = Queue::open(&path, opts(&["a", "b"]), NOW).unwrap();
        assert_eq!(rec.pending, 0);
        assert_eq!(rec.cursor, Some(json!(10)));
        assert_eq!(q.append(vec![ev("e5")], None, NOW).unwrap().seqs, vec![5]);
    }

    #[test]
    fn cursor_is_stored_with_each_batch() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(q.cursor(), None);
        q.append(vec![ev("e1")], Some(json!({"offset": 100})), NOW)
            .unwrap();
        q.append(vec![ev("e2")], Some(json!({"offset": 200})), NOW)
            .unwrap();
        // None keeps it; a cursor-only append moves it; nothing at all writes nothing.
        q.append(vec![ev("e3")], None, NOW).unwrap();
        assert_eq!(q.cursor(), Some(&json!({"offset": 200})));
        q.append(vec![], Some(json!({"offset": 300})), NOW).unwrap();
        let len = q.file_len();
        assert_eq!(
            q.append(vec![], None, NOW).unwrap(),
            AppendOutcome::default()
        );
        assert_eq!(q.file_len(), len);
        drop(q);
        let (q, rec) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(rec.cursor, Some(json!({"offset": 300})));
        assert_eq!(q.cursor(), Some(&json!({"offset": 300})));
        assert_eq!(rec.pending, 3);
        drop(q);

        // A null cursor is a cursor.
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.append(vec![], Some(Value::Null), NOW).unwrap();
        drop(q);
        let (_q, rec) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(rec.cursor, Some(Value::Null));
    }

    fn three_batches(path: &Path, o: QueueOptions) {
        let (mut q, _) = Queue::open(path, o, NOW).unwrap();
        for i in 1..=3 {
            q.append(vec![ev(&format!("e{i}"))], Some(json!(i)), NOW)
                .unwrap();
        }
    }

    #[test]
    fn torn_final_record_is_cut_off() {
        for key in [None, Some(key1())] {
            let o = QueueOptions {
                key: key.clone(),
                ..opts(&["a"])
            };
            // Cut in the middle of the last record.
            let (_d, path) = setup();
            three_batches(&path, o.clone());
            let bytes = fs::read(&path).unwrap();
            let last = *line_starts(&bytes).last().unwrap();
            fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
            let (mut q, rec) = Queue::open(&path, o.clone(), NOW).unwrap();
            assert_eq!(rec.cursor, Some(json!(2)));
            assert_eq!(rec.pending, 2);
            assert_eq!(rec.torn_bytes, (bytes.len() - 7 - last) as u64);
            assert_eq!(fs::read(&path).unwrap(), &bytes[..last]);
            // The seq of the lost append is given again: it was never acknowledged.
            assert_eq!(q.append(vec![ev("e3b")], None, NOW).unwrap().seqs, vec![3]);
            drop(q);
            let (q, rec) = Queue::open(&path, o.clone(), NOW).unwrap();
            assert_eq!(rec.torn_bytes, 0);
            assert_eq!(ids(&q, "a"), vec!["e1", "e2", "e3b"]);
            drop(q);

            // A flipped byte at the end of the last record (newline intact).
            let (_d, path) = setup();
            three_batches(&path, o.clone());
            let mut bytes = fs::read(&path).unwrap();
            let n = bytes.len();
            bytes[n - 2] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            let (_, rec) = Queue::open(&path, o.clone(), NOW).unwrap();
            assert_eq!(rec.cursor, Some(json!(2)));
            assert!(rec.torn_bytes > 0);

            // A partial record written by hand after a good one.
            let (_d, path) = setup();
            three_batches(&path, o.clone());
            let good = fs::read(&path).unwrap();
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(b"0badc0de {\"k\":\"batch\",\"ev").unwrap();
            drop(f);
            let (_, rec) = Queue::open(&path, o.clone(), NOW).unwrap();
            assert_eq!(rec.cursor, Some(json!(3)));
            assert_eq!(rec.torn_bytes, 25);
            assert_eq!(fs::read(&path).unwrap(), good);

            // Zeros left by a crash (a file extended but its data not written).
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&[0u8; 300]).unwrap();
            drop(f);
            let (_, rec) = Queue::open(&path, o, NOW).unwrap();
            assert_eq!(rec.torn_bytes, 300);
            assert_eq!(rec.cursor, Some(json!(3)));
        }
    }

    #[test]
    fn damaged_middle_record_is_corrupt_and_left_alone() {
        for key in [None, Some(key1())] {
            let o = QueueOptions {
                key: key.clone(),
                ..opts(&["a"])
            };
            let (_d, path) = setup();
            three_batches(&path, o.clone());
            let mut bytes = fs::read(&path).unwrap();
            let starts = line_starts(&bytes);
            bytes[starts[2] + 12] ^= 0x20; // inside record 2 of 3
            fs::write(&path, &bytes).unwrap();
            let err = Queue::open(&path, o, NOW).unwrap_err();
            assert!(
                matches!(
                    err,
                    QueueError::Corrupt {
                        kind: FileKind::Queue,
                        ..
                    }
                ),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("move"), "{msg}");
            assert!(msg.contains("record 2"), "{msg}");
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
    }

    #[test]
    fn valid_but_nonsensical_records_are_corrupt() {
        let (_d, path) = setup();
        three_batches(&path, opts(&["a"]));
        // A well-framed record that reuses seq 1.
        let json =
            br#"{"k":"batch","events":[{"seq":1,"at":1.0,"to":["a"],"ev":{}}],"next_seq":2}"#;
        let mut line = format!("{:08x} ", crc32fast::hash(json)).into_bytes();
        line.extend_from_slice(json);
        line.push(b'\n');
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&line)
            .unwrap();
        let err = Queue::open(&path, opts(&["a"]), NOW).unwrap_err();
        assert!(matches!(err, QueueError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn sinks_are_independent() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a", "b"]), NOW).unwrap();
        q.append(vec![ev("e1"), ev("e2")], None, NOW).unwrap();
        q.ack("a", &[1, 2]).unwrap();
        assert_eq!(q.depth("a"), 0);
        assert_eq!(q.depth("b"), 2);
        assert_eq!(q.next_for("a", None), None);
        assert_eq!(q.oldest_accepted_at("b"), Some(NOW));
        assert_eq!(q.oldest_accepted_at("a"), None);
        assert_eq!(q.pending(), 2);
        assert_eq!(q.depth("nope"), 0);
        q.ack("nope", &[1]).unwrap();
        q.append(vec![ev("e3")], None, NOW + 5.0).unwrap();
        assert_eq!(q.oldest_accepted_at("a"), Some(NOW + 5.0));
        drop(q);
        let (q, _) = Queue::open(&path, opts(&["a", "b"]), NOW).unwrap();
        assert_eq!(ids(&q, "a"), vec!["e3"]);
        assert_eq!(ids(&q, "b"), vec!["e1", "e2", "e3"]);
    }

    #[test]
    fn removed_sink_is_dead_lettered_at_open() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a", "b"]), NOW).unwrap();
        q.append(vec![ev("e1"), ev("e2"), ev("e3")], Some(json!(1)), NOW)
            .unwrap();
        q.ack("a", &[2]).unwrap(); // e2 is now pending for b only
        q.ack("b", &[3]).unwrap(); // e3 is pending for a only
        drop(q);

        let (q, rec) = Queue::open(&path, opts(&["a", "c"]), NOW + 10.0).unwrap();
        assert_eq!(rec.dead_lettered_sink_removed, 2);
        assert_eq!(rec.pending, 2);
        assert_eq!(rec.cursor, Some(json!(1)));
        assert_eq!(ids(&q, "a"), vec!["e1", "e3"]);
        assert_eq!(q.depth("b"), 0);
        assert_eq!(q.depth("c"), 0);
        let dead = read_dead_letters(&q.dead_letter_path(), None).unwrap();
        assert_eq!(dead.len(), 2);
        for (d, id) in dead.iter().zip(["e1", "e2"]) {
            assert_eq!(d.sink, "b");
            assert_eq!(d.reason, REASON_SINK_REMOVED);
            assert_eq!(d.event, ev(id));
            assert_eq!(d.accepted_at, NOW);
            assert_eq!(d.dead_lettered_at, NOW + 10.0);
        }
        drop(q);
        // Durable: nothing more at the next open.
        let (q, rec) = Queue::open(&path, opts(&["a", "c"]), NOW).unwrap();
        assert_eq!(rec.dead_lettered_sink_removed, 0);
        assert_eq!(
            read_dead_letters(&q.dead_letter_path(), None)
                .unwrap()
                .len(),
            2
        );
        drop(q);
        // No sink at all: everything goes.
        let (q, rec) = Queue::open(&path, opts(&[]), NOW).unwrap();
        assert_eq!(rec.dead_lettered_sink_removed, 2);
        assert_eq!(rec.pending, 0);
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn a_full_queue_evicts_gateway_events_before_lifecycle_events() {
        let (_d, path) = setup();
        let o = QueueOptions {
            max_events: 4,
            ..opts(&["a"])
        };
        let audit = |id: &str| json!({"event_id": id, "event_type": PRIORITY_EVENT_TYPE});
        let (mut q, _) = Queue::open(&path, o.clone(), NOW).unwrap();
        q.append(
            vec![
                audit("revoke-1"),
                ev("noise-1"),
                audit("revoke-2"),
                ev("noise-2"),
            ],
            None,
            NOW,
        )
        .unwrap();
        // A flood of gateway-side events pushes out the older gateway-side events first.
        let out = q
            .append(vec![ev("noise-3"), ev("noise-4")], None, NOW)
            .unwrap();
        assert_eq!(out.dead_lettered, 2);
        assert_eq!(ids(&q, "a"), ["revoke-1", "revoke-2", "noise-3", "noise-4"]);
        // Only when nothing else is left do lifecycle events go, oldest first.
        q.append(vec![ev("noise-5"), ev("noise-6"), ev("noise-7")], None, NOW)
            .unwrap();
        assert_eq!(ids(&q, "a"), ["revoke-2", "noise-5", "noise-6", "noise-7"]);
        drop(q);
        let (q, _) = Queue::open(&path, o, NOW).unwrap();
        assert_eq!(ids(&q, "a"), ["revoke-2", "noise-5", "noise-6", "noise-7"]);
    }

    #[test]
    fn capacity_overflow_dead_letters_the_oldest() {
        let (_d, path) = setup();
        let o = QueueOptions {
            max_events: 3,
            ..opts(&["a", "b"])
        };
        let (mut q, _) = Queue::open(&path, o.clone(), NOW).unwrap();
        q.append(vec![ev("e1"), ev("e2"), ev("e3")], None, NOW)
            .unwrap();
        q.ack("a", &[1]).unwrap();
        let out = q
            .append(vec![ev("e4"), ev("e5")], Some(json!(5)), NOW + 1.0)
            .unwrap();
        assert_eq!(out.seqs, vec![4, 5]);
        assert_eq!(out.dead_lettered, 2);
        assert_eq!(q.pending(), 3);
        assert_eq!(ids(&q, "a"), vec!["e3", "e4", "e5"]);
        assert_eq!(ids(&q, "b"), vec!["e3", "e4", "e5"]);
        let dead = read_dead_letters(&q.dead_letter_path(), None).unwrap();
        let got: Vec<(u64, &str, &str)> = dead
            .iter()
            .map(|d| (d.seq, d.sink.as_str(), d.reason.as_str()))
            .collect();
        // e1 only for b (a had it), e2 for both.
        assert_eq!(
            got,
            vec![
                (1, "b", "queue_full"),
                (2, "a", "queue_full"),
                (2, "b", "queue_full")
            ]
        );
        // A batch larger than the capacity: its own first events go too.
        let out = q
            .append(
                (6..=10).map(|i| ev(&format!("e{i}"))).collect(),
                None,
                NOW + 2.0,
            )
            .unwrap();
        assert_eq!(out.seqs, vec![6, 7, 8, 9, 10]);
        assert_eq!(out.dead_lettered, 5);
        assert_eq!(ids(&q, "a"), vec!["e8", "e9", "e10"]);
        drop(q);
        let (q, rec) = Queue::open(&path, o, NOW).unwrap();
        assert_eq!(rec.pending, 3);
        assert_eq!(ids(&q, "b"), vec!["e8", "e9", "e10"]);
        assert_eq!(
            read_dead_letters(&q.dead_letter_path(), None)
                .unwrap()
                .len(),
            3 + 10
        );
    }

    #[test]
    fn dead_letter_file_is_readable_and_owner_only() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a", "b"]), NOW).unwrap();
        q.append(vec![ev("e1"), ev("e2")], None, NOW).unwrap();
        q.dead_letter("a", &[1, 7], "max_age", NOW + 60.0).unwrap();
        let dead_len = fs::metadata(with_suffix(&path, ".dead")).unwrap().len();
        q.dead_letter("a", &[1], "max_age", NOW + 60.0).unwrap();
        assert_eq!(
            fs::metadata(with_suffix(&path, ".dead")).unwrap().len(),
            dead_len
        );
        assert_eq!(ids(&q, "a"), vec!["e2"]);
        assert_eq!(ids(&q, "b"), vec!["e1", "e2"]);
        let dp = q.dead_letter_path();
        assert_eq!(dp, with_suffix(&path, ".dead"));
        assert_eq!(mode(&dp), 0o600);
        let dead = read_dead_letters(&dp, None).unwrap();
        assert_eq!(
            dead,
            vec![DeadLetter {
                seq: 1,
                sink: "a".into(),
                reason: "max_age".into(),
                accepted_at: NOW,
                dead_lettered_at: NOW + 60.0,
                event: ev("e1"),
            }]
        );
        // The raw file: a JSON header line, then a CRC-framed JSON line.
        let text = fs::read_to_string(&dp).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let header: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(header["format"], DEAD_LETTER_FORMAT);
        let body: Value = serde_json::from_str(&lines[1][9..]).unwrap();
        assert_eq!(body["event"]["event_id"], "e1");
        drop(q);
        let (q, _) = Queue::open(&path, opts(&["a", "b"]), NOW).unwrap();
        assert_eq!(ids(&q, "a"), vec!["e2"]);
    }

    #[test]
    fn dead_letter_torn_tail_is_cut_and_appending_continues() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.append(vec![ev("e1"), ev("e2"), ev("e3")], None, NOW)
            .unwrap();
        q.dead_letter("a", &[1], "max_age", NOW).unwrap();
        drop(q);
        let dp = with_suffix(&path, ".dead");
        let good = fs::read(&dp).unwrap();
        // A partial line, then a complete line with a bad CRC after it.
        let mut f = OpenOptions::new().append(true).open(&dp).unwrap();
        f.write_all(b"12345678 {\"seq\":2,\"si").unwrap();
        drop(f);
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(fs::read(&dp).unwrap(), good);
        q.dead_letter("a", &[2], "max_age", NOW).unwrap();
        drop(q);
        let mut f = OpenOptions::new().append(true).open(&dp).unwrap();
        f.write_all(b"12345678 {\"seq\":3}\n").unwrap();
        drop(f);
        assert_eq!(read_dead_letters(&dp, None).unwrap().len(), 2);
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.dead_letter("a", &[3], "max_age", NOW).unwrap();
        let seqs: Vec<u64> = read_dead_letters(&dp, None)
            .unwrap()
            .iter()
            .map(|d| d.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[test]
    fn files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("deeper").join("queue");
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.append(vec![ev("e1")], None, NOW).unwrap();
        q.dead_letter("a", &[1], "max_age", NOW).unwrap();
        assert_eq!(mode(&dir.path().join("sub")), 0o700);
        assert_eq!(mode(&dir.path().join("sub/deeper")), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&q.dead_letter_path()), 0o600);
        assert_eq!(mode(&with_suffix(&path, ".lock")), 0o600);
        q.compact().unwrap();
        assert_eq!(mode(&path), 0o600);
        drop(q);
        // A loosened file is set back to 0600.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (_q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn encrypted_round_trip_hides_the_events() {
        let (_d, path) = setup();
        let marker = "MARKER-7f3a9c";
        let event = json!({"event_id": "x1", "detail": marker});
        let (mut q, _) = Queue::open(&path, keyed(&["a", "b"], &key1()), NOW).unwrap();
        assert!(q.is_encrypted());
        q.append(
            vec![event.clone(), ev("x2")],
            Some(json!({"cursor": marker})),
            NOW,
        )
        .unwrap();
        q.ack("a", &[2]).unwrap();
        q.dead_letter("b", &[1], marker, NOW).unwrap();
        drop(q);
        let (q, rec) = Queue::open(&path, keyed(&["a", "b"], &key1()), NOW).unwrap();
        assert_eq!(rec.cursor, Some(json!({"cursor": marker})));
        assert_eq!(q.next_for("a", None).unwrap().event, event);
        assert_eq!(ids(&q, "b"), vec!["x2"]);
        let dead = read_dead_letters(&q.dead_letter_path(), Some(&key1())).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event, event);
        for p in [path.clone(), q.dead_letter_path()] {
            let bytes = fs::read(&p).unwrap();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} holds the plaintext",
                p.display()
            );
            assert!(!bytes.windows(8).any(|w| w == b"event_id"));
        }
        assert!(matches!(
            read_dead_letters(&q.dead_letter_path(), None),
            Err(QueueError::KeyRequired {
                kind: FileKind::DeadLetter,
                ..
            })
        ));
        assert!(matches!(
            read_dead_letters(&q.dead_letter_path(), Some(&key2())),
            Err(QueueError::WrongKey { .. })
        ));
    }

    #[test]
    fn wrong_key_and_missing_key_are_refused() {
        let (_d, path) = setup();
        // Even an empty queue knows its key.
        let (q, _) = Queue::open(&path, keyed(&["a"], &key1()), NOW).unwrap();
        drop(q);
        let before = fs::read(&path).unwrap();
        let err = Queue::open(&path, keyed(&["a"], &key2()), NOW).unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::WrongKey {
                    kind: FileKind::Queue,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(KEY_ENV) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("move"), "{msg}");
        let err = Queue::open(&path, opts(&["a"]), NOW).unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::KeyRequired {
                    kind: FileKind::Queue,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(KEY_ENV));
        assert_eq!(fs::read(&path).unwrap(), before);
        // The right key still works.
        let (mut q, _) = Queue::open(&path, keyed(&["a"], &key1()), NOW).unwrap();
        q.append(vec![ev("e1")], None, NOW).unwrap();
    }

    #[test]
    fn key_on_a_plaintext_queue() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.append(vec![ev("e1")], Some(json!(42)), NOW).unwrap();
        drop(q);
        let before = fs::read(&path).unwrap();
        let err = Queue::open(&path, keyed(&["a"], &key1()), NOW).unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::NotEncrypted {
                    kind: FileKind::Queue,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(KEY_ENV) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        assert_eq!(fs::read(&path).unwrap(), before);

        // Drained: rewritten encrypted, cursor and seqs kept.
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.ack("a", &[1]).unwrap();
        drop(q);
        let (mut q, rec) = Queue::open(&path, keyed(&["a"], &key1()), NOW).unwrap();
        assert!(rec.converted_to_encrypted);
        assert_eq!(rec.cursor, Some(json!(42)));
        assert_eq!(q.append(vec![ev("e2")], None, NOW).unwrap().seqs, vec![2]);
        drop(q);
        assert!(matches!(
            Queue::open(&path, opts(&["a"]), NOW),
            Err(QueueError::KeyRequired { .. })
        ));
        let (q, rec) = Queue::open(&path, keyed(&["a"], &key1()), NOW).unwrap();
        assert!(!rec.converted_to_encrypted);
        assert_eq!(ids(&q, "a"), vec!["e2"]);
    }

    #[test]
    fn plaintext_dead_letter_file_with_a_key_is_refused() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.append(vec![ev("e1")], None, NOW).unwrap();
        q.dead_letter("a", &[1], "max_age", NOW).unwrap();
        drop(q);
        let err = Queue::open(&path, keyed(&["a"], &key1()), NOW).unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::NotEncrypted {
                    kind: FileKind::DeadLetter,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(".dead"));
        // Moved aside as told: a new encrypted one is started.
        fs::rename(with_suffix(&path, ".dead"), with_suffix(&path, ".dead.old")).unwrap();
        let (_q, rec) = Queue::open(&path, keyed(&["a"], &key1()), NOW).unwrap();
        assert!(rec.converted_to_encrypted);
    }

    #[test]
    fn key_parsing() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let k = QueueKey::parse(hex).unwrap();
        assert_eq!(k.0[1], 0x11);
        assert_eq!(k.0[31], 0xff);
        assert!(QueueKey::parse(&format!("  {hex}\n")).is_ok());
        let raw: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(250))
            .collect();
        for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let s = engine.encode(&raw);
            assert_eq!(
                QueueKey::parse(&s).unwrap().0.as_slice(),
                raw.as_slice(),
                "{s}"
            );
        }
        // A Fernet key (url-safe, padded).
        assert!(QueueKey::parse("5Xr0M8y4HnxoV3mJx4m5ZKkJ2r8qs5B1vQJ7Yx1s2k0=").is_ok());

        let bad = [
            hex[..63].to_string(),            // 63 hex digits
            "not*base64*at*all!".to_string(), // bad base64
            STANDARD.encode([5u8; 31]),       // 31 bytes
            "zz".repeat(32),                  // 64 non-hex
            hex.repeat(2),                    // 64 bytes of hex
            String::new(),
        ];
        for s in bad {
            let err = QueueKey::parse(&s).unwrap_err();
            assert!(matches!(err, QueueError::InvalidKey(_)));
            let msg = err.to_string();
            assert!(msg.contains(KEY_ENV), "{msg}");
            assert!(
                msg.contains("64 hex digits") && msg.contains("base64"),
                "{msg}"
            );
            if !s.is_empty() {
                assert!(!msg.contains(&s), "{msg}");
            }
        }
        assert!(
            QueueKey::parse(&STANDARD.encode([5u8; 31]))
                .unwrap_err()
                .to_string()
                .contains("31 bytes")
        );
        assert_eq!(format!("{:?}", key1()), "QueueKey(redacted)");
        assert!(!format!("{:?}", keyed(&["a"], &key1())).contains("7, 7"));
    }

    #[test]
    fn compaction_keeps_state_and_shrinks_the_file() {
        for key in [None, Some(key1())] {
            let o = QueueOptions {
                key: key.clone(),
                ..opts(&["a", "b"])
            };
            let (_d, path) = setup();
            let (mut q, _) = Queue::open(&path, o.clone(), NOW).unwrap();
            q.compact_min_bytes = 8 * 1024;
            let mut max_len = 0;
            let mut compactions = 0;
            for i in 0..200u64 {
                let before = q.file_len();
                let out = q
                    .append(vec![ev(&format!("e{i}"))], Some(json!(i)), NOW)
                    .unwrap();
                assert_eq!(out.seqs, vec![i + 1]);
                // Keep every 10th event pending for b; ack the rest everywhere.
                q.ack("a", &[i + 1]).unwrap();
                if i % 10 != 0 {
                    q.ack("b", &[i + 1]).unwrap();
                }
                if q.file_len() < before {
                    compactions += 1;
                }
                max_len = max_len.max(q.file_len());
            }
            assert!(compactions > 0);
            assert!(q.take_compaction_error().is_none());
            assert!(max_len < 8 * 1024 + 2048, "{max_len}");
            let expect: Vec<String> = (0..200).step_by(10).map(|i| format!("e{i}")).collect();
            assert_eq!(ids(&q, "b"), expect);
            q.compact().unwrap();
            let compacted = q.file_len();
            assert_eq!(fs::metadata(&path).unwrap().len(), compacted);
            drop(q);
            let (mut q, rec) = Queue::open(&path, o.clone(), NOW).unwrap();
            assert_eq!(rec.cursor, Some(json!(199)));
            assert_eq!(rec.pending, 20);
            assert_eq!(ids(&q, "b"), expect);
            assert_eq!(q.depth("a"), 0);
            assert_eq!(
                q.append(vec![ev("next")], None, NOW).unwrap().seqs,
                vec![201]
            );
            // Everything delivered, then compacted: seqs still go on.
            let all: Vec<u64> = (1..=201).collect();
            q.ack("a", &all).unwrap();
            q.ack("b", &all).unwrap();
            q.compact().unwrap();
            drop(q);
            let (mut q, rec) = Queue::open(&path, o, NOW).unwrap();
            assert_eq!(rec.pending, 0);
            assert_eq!(rec.cursor, Some(json!(199)));
            assert_eq!(
                q.append(vec![ev("last")], None, NOW).unwrap().seqs,
                vec![202]
            );
        }
    }

    #[test]
    fn symlink_and_non_files_are_refused() {
        let (d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.append(vec![ev("e1")], None, NOW).unwrap();
        drop(q);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = Queue::open(&link, opts(&["a"]), NOW).unwrap_err();
        assert!(matches!(err, QueueError::NotAQueue { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // A dangling link is refused too, not followed to create a file.
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("elsewhere"), &dangling).unwrap();
        assert!(matches!(
            Queue::open(&dangling, opts(&["a"]), NOW),
            Err(QueueError::NotAQueue { .. })
        ));
        assert!(!d.path().join("elsewhere").exists());
        let sub = d.path().join("adir");
        fs::create_dir(&sub).unwrap();
        assert!(matches!(
            Queue::open(&sub, opts(&["a"]), NOW),
            Err(QueueError::NotAQueue { .. })
        ));
    }

    #[test]
    fn foreign_files_are_not_a_queue() {
        let (_d, path) = setup();
        fs::write(&path, br#"[{"event_type": "x", "details": {}}]"#).unwrap();
        let err = Queue::open(&path, opts(&["a"]), NOW).unwrap_err();
        assert!(matches!(err, QueueError::NotAQueue { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("Python") && msg.contains("move"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        fs::write(&path, b"gAAAAABl0abcdef").unwrap();
        let err = Queue::open(&path, opts(&["a"]), NOW).unwrap_err();
        assert!(err.to_string().contains("Fernet"), "{err}");
        fs::write(&path, b"hello\nworld\n").unwrap();
        assert!(matches!(
            Queue::open(&path, opts(&["a"]), NOW),
            Err(QueueError::NotAQueue { .. })
        ));
        fs::write(
            &path,
            b"{\"format\":\"xai-keys-webhook-queue/2\",\"encrypted\":false}\n",
        )
        .unwrap();
        let err = Queue::open(&path, opts(&["a"]), NOW).unwrap_err();
        assert!(err.to_string().contains("another version"), "{err}");
        fs::write(
            &path,
            b"{\"format\":\"xai-keys-webhook-queue/1\",\"encrypted\":7}\n",
        )
        .unwrap();
        assert!(matches!(
            Queue::open(&path, opts(&["a"]), NOW),
            Err(QueueError::Corrupt { .. })
        ));
        // An empty file is a new queue.
        fs::write(&path, b"").unwrap();
        let (_q, rec) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(rec, Recovered::default());
    }

    #[test]
    fn queue_can_move_between_threads() {
        fn send<T: Send + Sync>() {}
        send::<Queue>();
        send::<QueueError>();
    }

    #[test]
    fn second_open_is_locked_out() {
        let (_d, path) = setup();
        let (_q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        let err = Queue::open(&path, opts(&["a"]), NOW).unwrap_err();
        assert!(matches!(err, QueueError::Locked { .. }), "{err}");
        assert!(err.to_string().contains(".lock"), "{err}");
    }

    #[test]
    fn no_sinks_keeps_only_the_cursor() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&[]), NOW).unwrap();
        let out = q
            .append(vec![ev("e1"), ev("e2")], Some(json!(7)), NOW)
            .unwrap();
        assert_eq!(out.seqs, Vec::<u64>::new());
        assert_eq!(out.unrouted, 2);
        assert_eq!(q.pending(), 0);
        drop(q);
        let (q, rec) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(rec.cursor, Some(json!(7)));
        assert_eq!(q.depth("a"), 0);
    }

    #[test]
    fn too_deep_events_are_refused() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        let mut deep = json!({"event_id": "deep"});
        for _ in 0..MAX_JSON_DEPTH {
            deep = json!({ "x": deep });
        }
        let err = q.append(vec![ev("ok"), deep], None, NOW).unwrap_err();
        assert!(matches!(err, QueueError::InvalidEvent { .. }), "{err}");
        assert_eq!(q.pending(), 0);
        // The deepest accepted event survives a reopen.
        let mut ok = json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            ok = json!([ok]);
        }
        q.append(vec![ok.clone()], Some(ok.clone()), NOW).unwrap();
        drop(q);
        let (q, rec) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(q.next_for("a", None).unwrap().event, ok);
        assert_eq!(rec.cursor, Some(ok));
    }

    #[test]
    fn a_failed_write_that_cannot_be_undone_stops_writes() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        q.append(vec![ev("e1")], Some(json!(1)), NOW).unwrap();
        // Swap in a read-only handle: the write and the undo both fail.
        q.journal.file = File::open(&path).unwrap();
        let err = q.append(vec![ev("e2")], Some(json!(2)), NOW).unwrap_err();
        assert!(matches!(err, QueueError::Io { .. }), "{err}");
        assert_eq!(q.cursor(), Some(&json!(1)));
        let err = q.ack("a", &[1]).unwrap_err();
        assert!(matches!(err, QueueError::Unusable { .. }), "{err}");
        assert!(err.to_string().contains("restart"));
        // Reading still works; reopening recovers.
        assert_eq!(q.depth("a"), 1);
        drop(q);
        let (_q, rec) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(rec.cursor, Some(json!(1)));
        assert_eq!(rec.pending, 1);
    }

    #[test]
    fn non_finite_times_are_stored_as_zero() {
        let (_d, path) = setup();
        let (mut q, _) = Queue::open(&path, opts(&["a"]), f64::NAN).unwrap();
        q.append(vec![ev("e1")], None, f64::INFINITY).unwrap();
        q.dead_letter("a", &[1], "max_age", f64::NAN).unwrap();
        q.append(vec![ev("e2")], None, f64::NAN).unwrap();
        drop(q);
        let (q, _) = Queue::open(&path, opts(&["a"]), NOW).unwrap();
        assert_eq!(q.oldest_accepted_at("a"), Some(0.0));
        let dead = read_dead_letters(&q.dead_letter_path(), None).unwrap();
        assert_eq!(dead[0].dead_lettered_at, 0.0);
    }
}
