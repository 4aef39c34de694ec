//! Soak test: the real `xai-keys serve` under steady traffic while keys change under it.
//!
//! Client threads send user-route requests (`GET /wallet/balance`, proxied to a keep-alive
//! stand-in node) with valid, random invalid, expired and revoked keys, while two mutators
//! change the store at the same time: one through `xai-keys` processes (issue, issue with a
//! 2-second TTL, rotate with a 2-second grace, rotate without grace, revoke), one through the
//! admin API (the same operations). Every mutation is timed (`begin` = just before it was sent,
//! `ack` = when the process exited or the response arrived), and each key carries the states it
//! may be in over time:
//!
//! * a change made with the CLI may be seen by the gateway from `begin` and must be seen by
//!   `ack` + [`PROPAGATION`] (the store watcher polls every `XAI_STORE_POLL_MS`, 50 ms, and
//!   reloads: the issue's bound is one second, as in `serve.rs`);
//! * a change made through the admin API must be seen at once: the handler reloads before it
//!   answers, so any request sent after the answer sees it (bound 0);
//! * an expiry (a short TTL, or the end of a rotation's grace) is judged per request against
//!   the stored `expires_at` ([`EXPIRY_SLACK`] for the two clocks' reads).
//!
//! A response is right when its status is the one of a state the key may have been in at some
//! instant between sending and receiving it: 200 active, 403 `expired`, 401 `unknown_key`
//! (revoked, replaced, not yet propagated); a random key gets 401 `malformed_key` or
//! `unknown_key`. Any 5xx, any other status or a broken connection fails the test.
//!
//! After every revocation the mutator itself polls the revoked key until it is refused and
//! records "ack → first refusal" (p50 / p99 / max, CLI and admin API apart); the CLI's maximum
//! must stay within [`PROPAGATION`].
//!
//! Resources: the gateway's resident memory (`VmRSS`) and open descriptors (`/proc/PID/fd`) are
//! sampled every second. The number of keys is kept bounded (the mutators revoke about as fast
//! as they issue, expired keys are revoked a few seconds after they expire, at most
//! [`LIVE_MAX`] live keys per mutator), so nothing in the gateway should grow with time. After a
//! warm-up (a tenth of the run, at least 5 s) the descriptors may not rise by more than
//! [`FD_SLACK`] (the connection pool to the node varies with concurrency), and resident memory
//! by no more than [`RSS_SLACK_KIB`] over the run and half that over its second half (allocator
//! arenas settling; measured: well under 1 MiB). At the ~1,000 requests/s this test sends, a
//! leak of about 350 bytes per request exceeds the bound within the 30-second CI run, and one
//! of about 30 bytes per request within the 5-minute run of `bench/soak`.
//!
//! `XAI_SOAK_SECS` sets the duration (30 s by default, the CI run; `bench/soak` runs 300 s in
//! release mode), `XAI_SOAK_CLIENTS` the client threads (3). The summary is printed as one
//! human line and one `SOAK_SUMMARY {json}` line that `bench/soak` copies into
//! bench/RESULTS.md.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xai_keys_core::{PlainToken, now_epoch};

use crate::common::*;

/// How long a CLI change may take to reach a running gateway (the issue's bound, as in
/// `serve.rs`). The gateway polls the store every 50 ms.
const PROPAGATION: f64 = 1.0;
/// Admin API changes are reloaded before the response: no delay allowed.
const API_BOUND: f64 = 0.0;
/// Tolerance around a stored `expires_at` (the gateway and the test read the same clock at
/// slightly different instants of the exchange).
const EXPIRY_SLACK: f64 = 0.010;
/// Short lifetimes: the TTL of the "expiring" keys and the grace of the rotations.
const SHORT_TTL: &str = "2s";
const SHORT_SECS: f64 = 2.0;
/// Expired keys stay in use this long before a mutator revokes them.
const EXPIRED_FOR: f64 = 3.0;
/// Revoked keys kept in the clients' sample (older ones are forgotten).
const GONE_KEPT: usize = 64;
/// Keys a mutator keeps alive at least / at most.
const LIVE_MIN: usize = 8;
const LIVE_MAX: usize = 24;
/// The user route the clients call.
const ROUTE: &str = "/wallet/balance";
/// Resource bounds after the warm-up.
const FD_SLACK: i64 = 16;
const RSS_SLACK_KIB: i64 = 8 * 1024;
/// The stand-in node's answer.
use crate::common::{UPSTREAM_BODY, start_upstream};

// ---------------------------------------------------------------------------------------------
// A keep-alive stand-in node and a keep-alive HTTP/1.1 client

struct Resp {
    status: u16,
    body: Vec<u8>,
    /// Epoch seconds just before the request was written and just after the response was read.
    sent: f64,
    received: f64,
}

impl Resp {
    fn reason(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| {
                v.get("reason")
                    .or_else(|| v.get("code"))
                    .and_then(|r| r.as_str().map(str::to_string))
            })
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One keep-alive connection to the gateway, reopened after an error.
struct Conn {
    addr: SocketAddr,
    r: Option<BufReader<TcpStream>>,
}

/// Reused connections the gateway had closed (the request was then retried once on a new one).
static RECONNECTS: AtomicU64 = AtomicU64::new(0);

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, r: None }
    }

    /// A GET with one retry when a reused connection turns out closed.
    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
        let reused = self.r.is_some();
        match self.send("GET", path, headers, None) {
            Err(_) if reused => {
                RECONNECTS.fetch_add(1, Ordering::Relaxed);
                self.send("GET", path, headers, None)
            }
            r => r,
        }
    }

    /// One exchange, never retried (mutations).
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Resp, String> {
        let r = self.exchange(method, path, headers, body);
        if r.is_err() {
            self.r = None;
        }
        r
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Resp, String> {
        let e = |what: &str, err: std::io::Error| format!("{method} {path}: {what}: {err}");
        if self.r.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, HTTP_CONNECT)
                .map_err(|x| e("connect", x))?;
            s.set_read_timeout(Some(HTTP_EXCHANGE))
                .map_err(|x| e("timeout", x))?;
            s.set_nodelay(true).map_err(|x| e("nodelay", x))?;
            self.r = Some(BufReader::new(s));
        }
        let Some(r) = self.r.as_mut() else {
            return Err("no connection".into());
        };
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: soak\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        let sent = now_epoch();
        r.get_mut()
            .write_all(req.as_bytes())
            .map_err(|x| e("write", x))?;
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|x| e("read", x))? == 0 {
            return Err(format!("{method} {path}: connection closed"));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{method} {path}: bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|x| e("read", x))? == 0 {
                return Err(format!("{method} {path}: closed in the headers"));
            }
            let t = line.trim_end();
            if t.is_empty() {
                break;
            }
            if let Some((k, v)) = t.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = v.parse().unwrap_or(0),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line).map_err(|x| e("read", x))?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("{method} {path}: bad chunk size {line:?}"))?;
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk).map_err(|x| e("read", x))?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            r.read_exact(&mut body).map_err(|x| e("read", x))?;
        }
        let received = now_epoch();
        if close {
            self.r = None;
        }
        Ok(Resp {
            status,
            body,
            sent,
            received,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The model: what each key may answer, and when

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Expired,
    Gone,
}

/// The key may be seen in `state` at any instant of [from, until].
#[derive(Debug, Clone)]
struct Phase {
    state: State,
    from: f64,
    until: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    /// Long-lived and usable: the mutators pick these to rotate or revoke.
    Live,
    /// Expires (or expired) around `at`: revoked a few seconds after.
    Expiring { at: f64 },
    /// Revoked or replaced.
    Gone,
}

#[derive(Debug)]
struct Track {
    id: String,
    phases: Vec<Phase>,
    slot: Slot,
    claimed: bool,
}

impl Track {
    fn may_be(&self, state: State, sent: f64, received: f64) -> bool {
        self.phases
            .iter()
            .any(|p| p.state == state && p.from <= received && p.until.is_none_or(|u| u >= sent))
    }
}

#[derive(Default)]
struct World {
    tracks: HashMap<String, Track>,
    live: Vec<String>,
    expiring: Vec<String>,
    gone: VecDeque<String>,
}

impl World {
    /// A key issued between `begin` and `ack` with expiry `expires`, seen by the gateway at
    /// `ack + bound` at the latest.
    fn issued(&mut self, key: String, id: String, begin: f64, ack: f64, bound: f64, expires: f64) {
        let slot = if expires - ack > 600.0 {
            self.live.push(key.clone());
            Slot::Live
        } else {
            self.expiring.push(key.clone());
            Slot::Expiring { at: expires }
        };
        let phases = vec![
            Phase {
                state: State::Gone,
                from: f64::NEG_INFINITY,
                until: Some(ack + bound),
            },
            Phase {
                state: State::Active,
                from: begin,
                until: Some(expires + EXPIRY_SLACK),
            },
            Phase {
                state: State::Expired,
                from: expires - EXPIRY_SLACK,
                until: None,
            },
        ];
        self.tracks.insert(
            key,
            Track {
                id,
                phases,
                slot,
                claimed: false,
            },
        );
    }

    /// A grace rotation shortened the key's life: it expires somewhere in [lo, hi].
    fn shortened(&mut self, key: &str, lo: f64, hi: f64) {
        let t = self.tracks.get_mut(key).unwrap();
        for p in &mut t.phases {
            match p.state {
                State::Active => {
                    p.until = Some(p.until.map_or(hi, |u| u.min(hi)) + EXPIRY_SLACK);
                }
                State::Expired => p.from = p.from.min(lo - EXPIRY_SLACK),
                State::Gone => {}
            }
        }
        t.slot = Slot::Expiring { at: hi };
        self.live.retain(|k| k != key);
        self.expiring.push(key.to_string());
    }

    /// A change to `key` is about to be sent at `begin`: from then on the gateway may show its
    /// outcome, even before the mutator has registered the ack (another thread may check a
    /// response in between). Without grace the key may be gone from `begin`; with a grace of
    /// `g` seconds it may be expired from `begin + g`. (A change that fails fails the test.)
    fn pending(&mut self, key: &str, begin: f64, grace: Option<f64>) {
        let t = self.tracks.get_mut(key).unwrap();
        match grace {
            None => t.phases.push(Phase {
                state: State::Gone,
                from: begin,
                until: None,
            }),
            Some(g) => {
                for p in &mut t.phases {
                    if p.state == State::Expired {
                        p.from = p.from.min(begin + g - EXPIRY_SLACK);
                    }
                }
            }
        }
    }

    /// Revoked (or replaced without grace) between `begin` and `ack`.
    fn ended(&mut self, key: &str, begin: f64, ack: f64, bound: f64) {
        let t = self.tracks.get_mut(key).unwrap();
        let last = ack + bound;
        // The outcome, registered by `pending` (kept open); every other state ends.
        let outcome = |p: &Phase| p.state == State::Gone && p.from == begin && p.until.is_none();
        for p in &mut t.phases {
            if !outcome(p) && p.until.is_none_or(|u| u > last) {
                p.until = Some(last);
            }
        }
        if !t.phases.iter().any(outcome) {
            t.phases.push(Phase {
                state: State::Gone,
                from: begin,
                until: None,
            });
        }
        t.slot = Slot::Gone;
        t.claimed = false;
        self.live.retain(|k| k != key);
        self.expiring.retain(|k| k != key);
        self.gone.push_back(key.to_string());
        while self.gone.len() > GONE_KEPT {
            if let Some(old) = self.gone.pop_front() {
                self.tracks.remove(&old);
            }
        }
    }

    fn claim(&mut self, key: &str) -> String {
        let t = self.tracks.get_mut(key).unwrap();
        assert!(!t.claimed);
        t.claimed = true;
        t.id.clone()
    }

    fn release(&mut self, key: &str) {
        if let Some(t) = self.tracks.get_mut(key) {
            t.claimed = false;
        }
    }
}

/// xorshift64*: enough randomness for choosing, no dependency.
struct Rng(u64);

impl Rng {
    fn seeded(salt: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng((t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

// ---------------------------------------------------------------------------------------------
// Shared results

#[derive(Default)]
struct Tally {
    /// Ids of keys that got a wrong answer (for the diagnosis printed on failure).
    wrong_ids: Vec<String>,
    /// Requests by the kind of key sent: live, expiring, revoked, invalid.
    by_kind: HashMap<&'static str, u64>,
    /// Responses by status.
    by_status: HashMap<u16, u64>,
    wrong: u64,
    failures: Vec<String>,
    /// ack → first refusal after a revocation, seconds: CLI, admin API.
    prop_cli: Vec<f64>,
    prop_api: Vec<f64>,
    /// begin → ack of every change, seconds: CLI (the whole process), admin API (the call).
    op_cli: Vec<f64>,
    op_api: Vec<f64>,
    /// Mutations acknowledged, by front end and operation.
    mutations: HashMap<String, u64>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.wrong += 1;
        if self.failures.len() < 30 {
            self.failures.push(what);
        }
    }
}

struct Shared {
    world: Mutex<World>,
    tally: Mutex<Tally>,
    stop: AtomicBool,
}

impl Shared {
    fn fail(&self, what: String) {
        self.tally.lock().unwrap().fail(what);
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Clients

fn client(shared: Arc<Shared>, addr: SocketAddr, salt: u64) {
    let mut conn = Conn::new(addr);
    let mut rng = Rng::seeded(salt);
    let mut local: HashMap<u16, u64> = HashMap::new();
    let mut kinds: HashMap<&'static str, u64> = HashMap::new();
    while !shared.stop.load(Ordering::Relaxed) {
        // Pick a key: live 50%, expiring or expired 20%, revoked 15%, random 15%.
        let roll = rng.below(100);
        let picked = {
            let w = shared.world.lock().unwrap();
            let from = |list: &[String], rng: &mut Rng| {
                (!list.is_empty()).then(|| list[rng.below(list.len())].clone())
            };
            match roll {
                0..50 => from(&w.live, &mut rng).map(|k| ("live", k)),
                50..70 => from(&w.expiring, &mut rng).map(|k| ("expiring", k)),
                70..85 => (!w.gone.is_empty())
                    .then(|| ("revoked", w.gone[rng.below(w.gone.len())].clone())),
                _ => None,
            }
        };
        let (kind, key) = match picked {
            Some(p) => p,
            None if rng.chance(0.5) => (
                "invalid",
                PlainToken::generate().unwrap().expose().to_string(),
            ),
            None => (
                "invalid",
                format!("xai_{:016x}{:016x}", rng.next(), rng.next()),
            ),
        };
        *kinds.entry(kind).or_default() += 1;
        let r = match conn.get(ROUTE, &[("X-API-Key", &key)]) {
            Ok(r) => r,
            Err(e) => {
                shared.fail(format!("{kind} key: transport error: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        *local.entry(r.status).or_default() += 1;
        check(&shared, kind, &key, &r);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut t = shared.tally.lock().unwrap();
    for (s, n) in local {
        *t.by_status.entry(s).or_default() += n;
    }
    for (k, n) in kinds {
        *t.by_kind.entry(k).or_default() += n;
    }
}

fn check(shared: &Shared, kind: &str, key: &str, r: &Resp) {
    if r.status >= 500 {
        shared.fail(format!(
            "{kind} key: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
        return;
    }
    let observed = match (r.status, r.reason().as_str()) {
        (200, _) if r.body == UPSTREAM_BODY.as_bytes() => State::Active,
        (403, "expired") => State::Expired,
        (401, "unknown_key") => State::Gone,
        (401, "malformed_key") if kind == "invalid" => State::Gone,
        _ => {
            shared.fail(format!(
                "{kind} key: unexpected {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
            return;
        }
    };
    if kind == "invalid" {
        if observed != State::Gone {
            shared.fail(format!("a random key got {}", r.status));
        }
        return;
    }
    let w = shared.world.lock().unwrap();
    // Forgotten meanwhile (an old revoked key): nothing left to check against.
    let Some(t) = w.tracks.get(key) else { return };
    if !t.may_be(observed, r.sent, r.received) {
        let id = t.id.clone();
        let what = format!(
            "{kind} key {}: answered {} ({observed:?}) for a request sent at {:.3}, received at {:.3}; allowed: {:?}",
            &t.id[..12],
            r.status,
            r.sent,
            r.received,
            t.phases
        );
        drop(w);
        let mut tally = shared.tally.lock().unwrap();
        if !tally.wrong_ids.contains(&id) && tally.wrong_ids.len() < 5 {
            tally.wrong_ids.push(id);
        }
        tally.fail(what);
    }
}

// ---------------------------------------------------------------------------------------------
// Mutators

/// A key just issued: plaintext, id, expires_at.
type Issued = (String, String, f64);
/// What a rotation returns: the new key and, with a grace period, the window in which the old
/// key's expiry lies.
type Rotated = (Issued, Option<(f64, f64)>);

/// One front end that changes keys: the CLI or the admin API.
trait Front {
    fn name(&self) -> &'static str;
    /// How long a change may take to reach the gateway after its ack.
    fn bound(&self) -> f64;
    /// Issues a user key: (plaintext, id, expires_at).
    fn issue(&mut self, ttl: Option<&str>) -> Result<Issued, String>;
    /// Rotates; returns the new key (plaintext, id, expires_at) and, with a grace period,
    /// the window in which the old key's expiry lies (exact when the front end reports it).
    fn rotate(&mut self, id: &str, grace: bool, begin: f64) -> Result<Rotated, String>;
    fn revoke(&mut self, id: &str) -> Result<(), String>;
}

struct Cli<'a> {
    env: &'a Env,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Result<Value, String> {
        let out = self
            .env
            .cmd()
            .args(args)
            .output()
            .map_err(|e| format!("xai-keys {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "xai-keys {args:?}: {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("xai-keys {args:?}: {e}"))
    }
}

fn issued_fields(v: &Value) -> Result<Issued, String> {
    match (
        v["api_key"].as_str(),
        v["key_id"].as_str(),
        v["expires_at"].as_f64(),
    ) {
        (Some(k), Some(i), Some(e)) => Ok((k.to_string(), i.to_string(), e)),
        _ => Err(format!("no key in {v}")),
    }
}

impl Front for Cli<'_> {
    fn name(&self) -> &'static str {
        "cli"
    }
    fn bound(&self) -> f64 {
        PROPAGATION
    }
    fn issue(&mut self, ttl: Option<&str>) -> Result<Issued, String> {
        let mut args = vec!["issue", "--scope", "user", "--label", "soak-cli"];
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        issued_fields(&self.run(&args)?)
    }
    fn rotate(&mut self, id: &str, grace: bool, begin: f64) -> Result<Rotated, String> {
        let g = if grace { SHORT_TTL } else { "0s" };
        let v = self.run(&["rotate", id, "--grace", g])?;
        let ack = now_epoch();
        // The CLI reports no old expiry: it is its clock at the commit plus the grace.
        Ok((
            issued_fields(&v)?,
            grace.then_some((begin + SHORT_SECS, ack + SHORT_SECS)),
        ))
    }
    fn revoke(&mut self, id: &str) -> Result<(), String> {
        self.run(&["revoke", id, "--reason", "soak"]).map(|_| ())
    }
}

struct Api {
    conn: Conn,
    admin: String,
}

impl Api {
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        want: u16,
    ) -> Result<Value, String> {
        let r = self
            .conn
            .send(method, path, &[("X-Admin-Token", &self.admin)], body)?;
        if r.status != want {
            return Err(format!(
                "{method} {path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        Ok(r.json())
    }
}

impl Front for Api {
    fn name(&self) -> &'static str {
        "api"
    }
    fn bound(&self) -> f64 {
        API_BOUND
    }
    fn issue(&mut self, ttl: Option<&str>) -> Result<Issued, String> {
        let body = match ttl {
            Some(_) => {
                json!({"label": "soak-api", "scope": "user", "expires_in_hours": SHORT_SECS / 3600.0})
            }
            None => json!({"label": "soak-api", "scope": "user"}),
        };
        issued_fields(&self.call("POST", "/admin/api-keys", Some(&body.to_string()), 201)?)
    }
    fn rotate(&mut self, id: &str, grace: bool, _begin: f64) -> Result<Rotated, String> {
        let body = json!({"grace": if grace { SHORT_TTL } else { "0s" }}).to_string();
        let v = self.call(
            "POST",
            &format!("/admin/api-keys/{id}/rotate"),
            Some(&body),
            201,
        )?;
        let old = v["old_expires_at"].as_f64();
        Ok((
            issued_fields(&v)?,
            grace.then(|| old.map(|e| (e, e))).flatten(),
        ))
    }
    fn revoke(&mut self, id: &str) -> Result<(), String> {
        self.call(
            "DELETE",
            &format!("/admin/api-keys/{id}?reason=soak"),
            None,
            200,
        )
        .map(|_| ())
    }
}

enum Op {
    Issue,
    IssueShort,
    Rotate { key: String, grace: bool },
    Revoke { key: String },
}

fn choose(shared: &Shared, rng: &mut Rng) -> Op {
    let mut w = shared.world.lock().unwrap();
    let now = now_epoch();
    // Expired keys that clients have had a few seconds to try: revoke (keeps the store small).
    let stale: Vec<String> = w
        .expiring
        .iter()
        .filter(|k| {
            let t = &w.tracks[*k];
            !t.claimed && matches!(t.slot, Slot::Expiring { at } if at + EXPIRED_FOR < now)
        })
        .cloned()
        .collect();
    if let Some(k) = stale.first().filter(|_| rng.chance(0.7)) {
        w.claim(k);
        return Op::Revoke { key: k.clone() };
    }
    let free: Vec<String> = w
        .live
        .iter()
        .filter(|k| !w.tracks[*k].claimed)
        .cloned()
        .collect();
    if free.len() < LIVE_MIN {
        return if rng.chance(0.2) {
            Op::IssueShort
        } else {
            Op::Issue
        };
    }
    let pick = free[rng.below(free.len())].clone();
    let roll = if w.live.len() > LIVE_MAX {
        99
    } else {
        rng.below(100)
    };
    let op = match roll {
        0..20 => return Op::Issue,
        20..35 => return Op::IssueShort,
        35..55 => Op::Rotate {
            key: pick.clone(),
            grace: true,
        },
        55..65 => Op::Rotate {
            key: pick.clone(),
            grace: false,
        },
        _ => Op::Revoke { key: pick.clone() },
    };
    w.claim(&pick);
    op
}

/// Polls a revoked key until the gateway refuses it: ack → first refusal, in seconds.
fn first_refusal(conn: &mut Conn, shared: &Shared, key: &str, ack: f64) -> Option<f64> {
    let limit = Instant::now() + Duration::from_secs(5);
    loop {
        match conn.get(ROUTE, &[("X-API-Key", key)]) {
            Ok(r) if r.status == 401 => return Some(r.received - ack),
            Ok(r) if r.status >= 500 => {
                shared.fail(format!("revocation poll: {} {}", r.status, r.reason()));
            }
            Ok(_) => {}
            Err(e) => shared.fail(format!("revocation poll: {e}")),
        }
        if Instant::now() > limit {
            shared.fail("a revoked key was still accepted 5 s after the ack".into());
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn mutator(
    shared: Arc<Shared>,
    mut front: Box<dyn Front + Send + '_>,
    addr: SocketAddr,
    salt: u64,
) {
    let mut rng = Rng::seeded(salt);
    let mut probe = Conn::new(addr);
    let name = front.name();
    let bound = front.bound();
    while !shared.stop.load(Ordering::Relaxed) {
        let op = choose(&shared, &mut rng);
        let begin = now_epoch();
        let (what, result, ack) = match op {
            Op::Issue | Op::IssueShort => {
                let short = matches!(op, Op::IssueShort);
                let r = front.issue(short.then_some(SHORT_TTL));
                let ack = now_epoch();
                let r = r.map(|(k, id, e)| {
                    shared
                        .world
                        .lock()
                        .unwrap()
                        .issued(k, id, begin, ack, bound, e);
                });
                (if short { "issue_short_ttl" } else { "issue" }, r, ack)
            }
            Op::Rotate { key, grace } => {
                let id = {
                    let mut w = shared.world.lock().unwrap();
                    w.pending(&key, begin, grace.then_some(SHORT_SECS));
                    w.tracks[&key].id.clone()
                };
                let r = front.rotate(&id, grace, begin);
                let ack = now_epoch();
                let r = r.map(|((k, new_id, e), old)| {
                    let mut w = shared.world.lock().unwrap();
                    w.issued(k, new_id, begin, ack, bound, e);
                    match old {
                        Some((lo, hi)) => {
                            w.shortened(&key, lo, hi);
                            w.release(&key);
                        }
                        None => w.ended(&key, begin, ack, bound),
                    }
                });
                if r.is_err() {
                    shared.world.lock().unwrap().release(&key);
                }
                (if grace { "rotate_grace" } else { "rotate" }, r, ack)
            }
            Op::Revoke { key } => {
                let id = {
                    let mut w = shared.world.lock().unwrap();
                    w.pending(&key, begin, None);
                    w.tracks[&key].id.clone()
                };
                let r = front.revoke(&id);
                let ack = now_epoch();
                match r {
                    Ok(()) => {
                        shared.world.lock().unwrap().ended(&key, begin, ack, bound);
                        if let Some(lat) = first_refusal(&mut probe, &shared, &key, ack) {
                            let mut t = shared.tally.lock().unwrap();
                            if name == "cli" {
                                t.prop_cli.push(lat);
                            } else {
                                t.prop_api.push(lat);
                            }
                        }
                        ("revoke", Ok(()), ack)
                    }
                    Err(e) => {
                        shared.world.lock().unwrap().release(&key);
                        ("revoke", Err(e), ack)
                    }
                }
            }
        };
        let took = ack - begin;
        match result {
            Ok(()) => {
                let mut t = shared.tally.lock().unwrap();
                *t.mutations.entry(format!("{name}_{what}")).or_default() += 1;
                if name == "cli" {
                    t.op_cli.push(took);
                } else {
                    t.op_api.push(took);
                }
            }
            Err(e) => shared.fail(format!("{name} {what}: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(60) as u64));
    }
}

// ---------------------------------------------------------------------------------------------
// Resources

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    rss_kib: i64,
    fds: i64,
}

fn sample(pid: u32, start: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as i64;
    Some(Sample {
        at: start.elapsed().as_secs_f64(),
        rss_kib,
        fds,
    })
}

/// Nearest-rank percentile of a sorted slice, in milliseconds.
fn pct_ms(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] * 1000.0
}

// ---------------------------------------------------------------------------------------------

#[test]
fn soak_steady_traffic_while_keys_change_from_the_cli_and_the_admin_api() {
    let secs = env_num("XAI_SOAK_SECS", 30).max(10);
    let clients = env_num("XAI_SOAK_CLIENTS", 3).max(1);
    let warmup = (secs as f64 / 10.0).max(5.0);

    let env = Env::new();
    let upstream = start_upstream();
    let upstream_url = format!("http://{upstream}");
    let gw = env.serve(&["--upstream", &upstream_url], &[("XAI_ACCESS_LOG", "0")]);
    let admin = gw
        .stderr()
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("xai_"))
        .unwrap_or_else(|| panic!("no first admin key printed:\n{}", gw.stderr()))
        .to_string();
    let addr = gw.addr;
    let pid = gw.pid();

    let shared = Arc::new(Shared {
        world: Mutex::new(World::default()),
        tally: Mutex::new(Tally::default()),
        stop: AtomicBool::new(false),
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut samples = vec![sample(pid, start).unwrap()];

    std::thread::scope(|s| {
        let cli: Box<dyn Front + Send + '_> = Box::new(Cli { env: &env });
        let api: Box<dyn Front + Send + '_> = Box::new(Api {
            conn: Conn::new(addr),
            admin: admin.clone(),
        });
        let sh = Arc::clone(&shared);
        s.spawn(move || mutator(sh, cli, addr, 1));
        let sh = Arc::clone(&shared);
        s.spawn(move || mutator(sh, api, addr, 2));
        for c in 0..clients {
            let sh = Arc::clone(&shared);
            s.spawn(move || client(sh, addr, 100 + c));
        }
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            match sample(pid, start) {
                Some(x) => samples.push(x),
                None => {
                    shared.fail("the gateway process is gone".into());
                    break;
                }
            }
        }
        shared.stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(x) = sample(pid, start) {
        samples.push(x);
    }

    // The gateway is still healthy, its log has no error, and the store and its audit log
    // still agree after all those concurrent writers.
    let health = gw.get("/health", &[]);
    let errors: Vec<Value> = gw
        .logs()
        .into_iter()
        .filter(|v| v["level"] == "ERROR")
        .collect();
    let (verify_rc, verify) = env.verify();
    let keys_left = env.ids().len();

    // Resources after the warm-up.
    let after: Vec<Sample> = samples.iter().copied().filter(|x| x.at >= warmup).collect();
    let first = *after.first().unwrap_or(&samples[0]);
    let last = *samples.last().unwrap();
    let mid = after
        .iter()
        .copied()
        .find(|x| x.at >= (first.at + last.at) / 2.0)
        .unwrap_or(first);
    let fd_max = after.iter().map(|x| x.fds).max().unwrap_or(first.fds);
    let rss_max = after
        .iter()
        .map(|x| x.rss_kib)
        .max()
        .unwrap_or(first.rss_kib);

    let mut t = shared.tally.lock().unwrap();
    t.prop_cli.sort_by(f64::total_cmp);
    t.prop_api.sort_by(f64::total_cmp);
    t.op_cli.sort_by(f64::total_cmp);
    t.op_api.sort_by(f64::total_cmp);
    let total: u64 = t.by_status.values().sum();
    let kind = |k: &str| t.by_kind.get(k).copied().unwrap_or(0);
    let status = |s: u16| t.by_status.get(&s).copied().unwrap_or(0);
    let fivexx: u64 = t
        .by_status
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| n)
        .sum();
    let mutations: u64 = t.mutations.values().sum();
    let summary = json!({
        "seconds": (elapsed * 10.0).round() / 10.0,
        "clients": clients,
        "requests": total,
        "rps": (total as f64 / elapsed).round(),
        "by_key": {
            "live": kind("live"), "expiring_or_expired": kind("expiring"),
            "revoked": kind("revoked"), "invalid": kind("invalid"),
        },
        "by_status": {
            "200": status(200), "401": status(401), "403": status(403), "5xx": fivexx,
            "other": total - status(200) - status(401) - status(403) - fivexx,
        },
        "wrong": t.wrong,
        "reconnects": RECONNECTS.load(Ordering::Relaxed),
        "mutations": mutations,
        "mutations_by_kind": t.mutations,
        "propagation_cli_ms": {
            "n": t.prop_cli.len(), "p50": pct_ms(&t.prop_cli, 50.0),
            "p99": pct_ms(&t.prop_cli, 99.0), "max": pct_ms(&t.prop_cli, 100.0),
        },
        "propagation_api_ms": {
            "n": t.prop_api.len(), "p50": pct_ms(&t.prop_api, 50.0),
            "p99": pct_ms(&t.prop_api, 99.0), "max": pct_ms(&t.prop_api, 100.0),
        },
        "change_cli_ms": {
            "p50": pct_ms(&t.op_cli, 50.0), "p99": pct_ms(&t.op_cli, 99.0),
            "max": pct_ms(&t.op_cli, 100.0),
        },
        "change_api_ms": {
            "p50": pct_ms(&t.op_api, 50.0), "p99": pct_ms(&t.op_api, 99.0),
            "max": pct_ms(&t.op_api, 100.0),
        },
        "propagation_bound_ms": PROPAGATION * 1000.0,
        "warmup_s": warmup,
        "rss_kib": {"start": first.rss_kib, "mid": mid.rss_kib, "end": last.rss_kib, "max": rss_max},
        "fds": {"start": first.fds, "end": last.fds, "max": fd_max},
        "keys_left": keys_left,
        "verify_ok": verify_rc == 0,
    });
    eprintln!(
        "soak: {elapsed:.0} s, {total} requests ({:.0}/s; keys: live {}, expiring/expired {}, revoked {}, invalid {}; \
         answers: 200 {}, 401 {}, 403 {}, 5xx {fivexx}), wrong {}, {mutations} mutations; \
         revocation ack → first refusal: CLI p50 {:.1} / p99 {:.1} / max {:.1} ms (n {}), API p50 {:.1} / p99 {:.1} / max {:.1} ms (n {}); \
         RSS {} → {} KiB (max {}), fds {} → {} (max {}), keys left {keys_left}",
        total as f64 / elapsed,
        kind("live"),
        kind("expiring"),
        kind("revoked"),
        kind("invalid"),
        status(200),
        status(401),
        status(403),
        t.wrong,
        pct_ms(&t.prop_cli, 50.0),
        pct_ms(&t.prop_cli, 99.0),
        pct_ms(&t.prop_cli, 100.0),
        t.prop_cli.len(),
        pct_ms(&t.prop_api, 50.0),
        pct_ms(&t.prop_api, 99.0),
        pct_ms(&t.prop_api, 100.0),
        t.prop_api.len(),
        first.rss_kib,
        last.rss_kib,
        rss_max,
        first.fds,
        last.fds,
        fd_max,
    );
    println!("SOAK_SUMMARY {summary}");

    // On a wrong answer: what the audit log and the store say about those keys.
    let mut diagnosis = String::new();
    if !t.wrong_ids.is_empty() {
        let log = std::fs::read_to_string(env.log()).unwrap_or_default();
        let store = std::fs::read_to_string(&env.store).unwrap_or_default();
        for id in &t.wrong_ids {
            diagnosis.push_str(&format!(
                "\nkey {id}: in the store file: {}; audit lines:\n",
                store.contains(id.as_str())
            ));
            for l in log.lines().filter(|l| l.contains(id.as_str())) {
                diagnosis.push_str(&format!("  {l}\n"));
            }
        }
        let lines: Vec<Value> = gw
            .logs()
            .into_iter()
            .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
            .collect();
        diagnosis.push_str(&format!("gateway warnings and errors: {lines:?}\n"));
        diagnosis.push_str(&format!("verify: {verify_rc} {verify}\n"));
    }
    assert!(
        t.wrong == 0,
        "{} wrong answers or errors; the first ones:\n{}\n{diagnosis}",
        t.wrong,
        t.failures.join("\n")
    );
    assert_eq!(fivexx, 0);
    assert!(total > 1000 * secs / 10, "too little traffic: {summary}");
    for k in ["live", "expiring", "revoked", "invalid"] {
        assert!(kind(k) > 0, "no {k} key was sent: {summary}");
    }
    assert!(status(403) > 0, "no expired key was refused: {summary}");
    for m in ["revoke", "rotate_grace", "issue_short_ttl"] {
        for f in ["cli", "api"] {
            assert!(
                t.mutations.contains_key(&format!("{f}_{m}")),
                "no {f} {m}: {summary}"
            );
        }
    }
    let max_cli = pct_ms(&t.prop_cli, 100.0);
    assert!(
        max_cli <= PROPAGATION * 1000.0,
        "a CLI revocation took {max_cli:.1} ms to be refused (bound {PROPAGATION} s)"
    );
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(errors.is_empty(), "the gateway logged errors: {errors:?}");
    assert_eq!(verify_rc, 0, "verify after the soak: {verify}");
    assert!(
        keys_left <= 4 * LIVE_MAX + 64,
        "the store grew: {keys_left} keys"
    );
    assert!(
        fd_max <= first.fds + FD_SLACK,
        "descriptors grew: {first:?} → max {fd_max} ({summary})"
    );
    assert!(
        last.rss_kib - first.rss_kib <= RSS_SLACK_KIB,
        "resident memory grew by {} KiB after the warm-up: {summary}",
        last.rss_kib - first.rss_kib
    );
    assert!(
        last.rss_kib - mid.rss_kib <= RSS_SLACK_KIB / 2,
        "resident memory kept growing in the second half: {} KiB ({summary})",
        last.rss_kib - mid.rss_kib
    );
}
