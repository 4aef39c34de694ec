//! SIGKILL of the gateway at random moments of admin API calls: the real `xai-keys serve` on a
//! store of a few hundred keys issues, revokes, rotates (with and without a grace period),
//! disables and enables keys over HTTP, sometimes while CLI processes change the same store,
//! and is killed (the CLI processes too) at a random moment, mostly inside the write protocol.
//! Then it is started again. In some rounds only the CLI processes are killed and the gateway
//! survives.
//!
//! After every kill, on top of everything `crash.rs` checks (`verify` exits 0, the killed call
//! happened completely or not at all and which one agrees with where the kill landed, the log
//! only grows, its replay is exactly the store, a revoked key never reappears, every
//! acknowledged key is present and every acknowledged revocation absent):
//! * the restarted gateway, before anything else touched the store, refuses (401) every key
//!   whose revocation the log records as committed or a response or report acknowledged, and
//!   accepts every key whose issue was acknowledged (on start it completes an interrupted
//!   commit itself rather than serve the store file the commit had not replaced yet); a
//!   gateway that survived the kill of a CLI command must be right within a second (it
//!   completes the command's interrupted commit itself);
//! * after `verify`, the keys touched in the round and a random sample of the others answer
//!   exactly as the store says: absent 401, disabled 403, active 503 (accepted, then refused
//!   for lack of an upstream: no upstream is configured).
//!
//! Kills count only when they landed while the call was in flight (request sent, no response
//! received); a kill after the response, or before the request left, is not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::common::{Gateway, etcd_backend, exchange, serve_cmd_on};
use crate::crash::{self, Harness, Kill, Op, Phase, Rng, Run, field, lines_of, sibling};

/// Gateway kills that must land while an admin call is in flight.
pub(super) const GATEWAY_MIN_KILLS: usize = 60;
const _: () = assert!(crash::CLI_MIN_KILLS + GATEWAY_MIN_KILLS >= 200);
/// Rounds (one gateway kill each) at least; more (up to twice as many) until
/// [`GATEWAY_MIN_KILLS`] landed.
const ROUNDS: usize = 80;
/// Keys in the store before the test starts.
const PREFILL: usize = 200;
/// A user route of the built-in policy: any valid key passes authentication (then 503: no
/// upstream), an unknown or revoked one is refused with 401, a disabled one with 403.
const PROBE: &str = "/wallet/balance";
/// Answers of [`PROBE`].
const VALID: u16 = 503;
const UNKNOWN: u16 = 401;
const REFUSED: u16 = 403;
/// How long a running gateway may take to see a change another process made (the issue's
/// propagation bound).
const PROPAGATION: Duration = Duration::from_secs(1);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `xai-keys serve` (the suite's gateway process, killed on drop), probed on
/// [`PROBE`].
struct Gw(Gateway);

impl Gw {
    fn start(store: &Path) -> Gw {
        // No first admin key is generated: the test issues its own with the CLI.
        Gw(Gateway::start(serve_cmd_on(
            store,
            &["--no-auto-bootstrap"],
            &[],
        )))
    }

    /// Probes until `ok(status)` or `limit` passed (at least once); the last status.
    fn probe_until(&self, key: &str, limit: Duration, ok: impl Fn(u16) -> bool, ctx: &str) -> u16 {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.probe(key, ctx);
            if ok(st) || Instant::now() >= deadline {
                return st;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&self) -> String {
        self.0.stderr()
    }

    /// A probe of [`PROBE`] with `key`: the status.
    fn probe(&self, key: &str, ctx: &str) -> u16 {
        match request(self.0.addr, "GET", PROBE, &[("X-API-Key", key)], None, None) {
            Ok((status, _)) => status,
            Err(e) => panic!("{ctx}: probe failed: {e}; stderr:\n{}", self.stderr()),
        }
    }
}

/// [`exchange`] with this file's time limit.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    sent: Option<&Mutex<Option<Instant>>>,
) -> Result<(u16, Value), String> {
    exchange(addr, method, path, headers, body, sent, HTTP_TIMEOUT)
}

/// What one round did.
struct Outcome {
    /// The admin call.
    api: Run,
    cli: Vec<Run>,
    /// From the request's start: when `<store>.pending` appeared and when the response came.
    write_at: Option<Duration>,
    end: Option<Duration>,
}

struct GwHarness {
    h: Harness,
    gw: Option<Gw>,
    admin: String,
    /// (kind, phase) → count, for lone admin calls.
    stats: BTreeMap<(&'static str, Phase), usize>,
    /// Gateway kills that landed while a call was in flight, CLI processes killed, gateway
    /// kills after the response or before the request left, rounds.
    gw_kills: usize,
    cli_kills: usize,
    idle_kills: usize,
    /// Rounds with CLI commands killed and the gateway left running.
    survived: usize,
    rounds: usize,
    /// Probes right after a restart: keys refused for a committed revocation, keys accepted.
    revoked_probes: usize,
    live_probes: usize,
    /// Probes after `verify` against the store's state.
    exact_probes: usize,
    /// Time to restart the gateway, summed.
    restart_time: Duration,
}

impl GwHarness {
    fn ctx(&self, what: &str) -> String {
        format!("{what} (seed {:#x})", self.h.seed)
    }

    fn gw(&self) -> &Gw {
        self.gw.as_ref().unwrap()
    }

    fn start_gateway(&mut self) {
        let t = Instant::now();
        self.gw = Some(Gw::start(&self.h.store));
        self.restart_time += t.elapsed();
    }

    /// A key from `pool`, not in `avoid`; mostly one whose plaintext is known (so probes can
    /// check it afterwards).
    fn pick(&mut self, pool: Vec<String>, avoid: &BTreeSet<String>) -> Option<String> {
        let pool: Vec<String> = pool.into_iter().filter(|k| !avoid.contains(k)).collect();
        let known: Vec<String> = pool
            .iter()
            .filter(|k| self.h.plain.contains_key(*k))
            .cloned()
            .collect();
        if !known.is_empty() && self.h.rng.below(4) != 0 {
            Some(self.h.rng.pick(&known).clone())
        } else if pool.is_empty() {
            None
        } else {
            Some(self.h.rng.pick(&pool).clone())
        }
    }

    /// An admin call of the kind `roll` (0..100) picks: issue 30%, revoke 22%, rotate 16%,
    /// rotate with grace 10%, disable 11%, enable 11% (disable when nothing is disabled).
    fn choose_api(&mut self, round: usize, roll: usize, avoid: &BTreeSet<String>) -> Op {
        let label = format!("api-{round}");
        let active = self.h.active();
        let all = self.h.keys_where(|_, _| true);
        let enabled = self.h.keys_where(|_, v| v["state"] == "active");
        let disabled = self.h.keys_where(|_, v| v["state"] == "disabled");
        let op = match roll {
            0..=29 => None,
            30..=51 => self.pick(all, avoid).map(|id| Op::ApiRevoke { id }),
            52..=67 => self
                .pick(active, avoid)
                .map(|id| Op::ApiRotate { id, grace: false }),
            68..=77 => self
                .pick(active, avoid)
                .map(|id| Op::ApiRotate { id, grace: true }),
            78..=88 => self.pick(enabled, avoid).map(|id| Op::ApiDisable { id }),
            _ => match self.pick(disabled, avoid) {
                Some(id) => Some(Op::ApiEnable { id }),
                None => self.pick(enabled, avoid).map(|id| Op::ApiDisable { id }),
            },
        };
        op.unwrap_or_else(|| {
            let scope = *self.h.rng.pick(&["user", "auditor", "operator", "admin"]);
            Op::ApiIssue { label, scope }
        })
    }

    /// A CLI command to run beside the call: issue, revoke, rotate, rotate --grace.
    fn choose_cli(&mut self, label: String, avoid: &BTreeSet<String>) -> Op {
        let active = self.h.active();
        let all = self.h.keys_where(|_, _| true);
        let op = match self.h.rng.below(4) {
            0 => None,
            1 => self.pick(all, avoid).map(|id| Op::Revoke { id }),
            g => self
                .pick(active, avoid)
                .map(|id| Op::Rotate { id, grace: g == 3 }),
        };
        op.unwrap_or(Op::Issue { label })
    }

    /// Sends `api` to the running gateway `request_after` after spawning `cli`; kills the CLI
    /// processes at their delays (from the start) and the gateway as `kill` says (`After`: from
    /// the moment the request starts).
    fn run_round(
        &mut self,
        api: &Op,
        kill: Kill,
        cli: Vec<(Op, Duration)>,
        request_after: Duration,
        what: &str,
    ) -> Outcome {
        let addr = self.gw().0.addr;
        let store = self.h.store.clone();
        let pending = sibling(&store, ".pending");
        let admin = self.admin.clone();
        let start = Instant::now();
        // (operation, when to kill it (None: done), process)
        let mut children: Vec<(Op, Option<Duration>, Option<Child>)> = cli
            .into_iter()
            .map(|(op, d)| {
                let c = crash::cmd(&store, &op.args()).spawn().unwrap();
                (op, Some(d), Some(c))
            })
            .collect();
        let sent = Mutex::new(None::<Instant>);
        let (method, path, body) = api.request();
        let log = sibling(&store, ".log");
        let log_len = self.h.log.len() as u64;
        let mut write_at = None;
        let mut commit_at: Option<Instant> = None;
        let mut killed_at = None;
        let (reply, replied_at) = std::thread::scope(|s| {
            let sent = &sent;
            let client = s.spawn(move || {
                std::thread::sleep(request_after);
                let r = request(
                    addr,
                    method,
                    &path,
                    &[("X-Admin-Token", admin.as_str())],
                    body.as_deref(),
                    Some(sent),
                );
                (r, Instant::now())
            });
            let req_start = start + request_after;
            let mut cli_left = children.len();
            loop {
                let now = Instant::now();
                for (_, d, c) in children.iter_mut() {
                    if let Some(d) = *d
                        && start + d <= now
                        && let Some(c) = c
                    {
                        // SIGKILL; a child that already exited is not signalled.
                        let _ = c.kill();
                        cli_left -= 1;
                    }
                    if d.is_some_and(|d| start + d <= now) {
                        *d = None;
                    }
                }
                if now >= req_start && write_at.is_none() && pending.exists() {
                    write_at = Some(now - req_start);
                }
                if killed_at.is_none() {
                    let fire = match kill {
                        Kill::Never => false,
                        Kill::After(d) => now >= req_start + d,
                        Kill::AfterWriteStarts(d) => {
                            write_at.is_some_and(|w| now >= req_start + w + d)
                        }
                        Kill::AfterCommit(d) => {
                            if commit_at.is_none()
                                && std::fs::metadata(&log).is_ok_and(|m| m.len() > log_len)
                            {
                                commit_at = Some(now);
                            }
                            commit_at.is_some_and(|c| now >= c + d)
                        }
                    };
                    // A call that ends before its kill leaves an idle gateway to kill.
                    if fire || (!matches!(kill, Kill::Never) && client.is_finished()) {
                        killed_at = Some(Instant::now());
                        self.gw.as_mut().unwrap().0.kill();
                    }
                }
                let gw_done = killed_at.is_some() || client.is_finished();
                if gw_done && cli_left == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            client.join().unwrap()
        });
        let ctx = self.ctx(what);
        let sent = *sent.lock().unwrap();
        if killed_at.is_some() {
            let st = self.gw.take().unwrap().0.wait();
            // `Drop` reaps it again harmlessly; the status shows whether it was running.
            assert!(
                st.signal() == Some(9),
                "{ctx}: the gateway exited with {st} before its kill"
            );
        }
        // A failed exchange is only acceptable when the gateway was killed first.
        if let Err(e) = &reply {
            assert!(
                killed_at.is_some_and(|k| k <= replied_at),
                "{ctx}: the call failed although the gateway was not killed: {e}; stderr:\n{}",
                self.gw.as_ref().map(Gw::stderr).unwrap_or_default()
            );
        }
        // Counted only when the whole request had left before the kill; without a response the
        // call may or may not have happened either way.
        let in_flight = reply.is_err() && sent.is_some_and(|t| killed_at.is_some_and(|k| t <= k));
        let api_run = Run {
            op: api.clone(),
            child: None,
            kill,
            output: None,
            killed: reply.is_err(),
            reply: reply.as_ref().ok().cloned(),
        };
        if killed_at.is_some() {
            if in_flight {
                self.gw_kills += 1;
            } else {
                self.idle_kills += 1;
            }
        }
        let mut cli_runs = Vec::new();
        for (op, _, c) in children {
            let out = c.unwrap().wait_with_output().unwrap();
            let killed = out.status.signal() == Some(9);
            if !killed {
                assert!(
                    out.status.success(),
                    "{ctx}: beside it, {op:?} failed without being killed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            self.cli_kills += usize::from(killed);
            cli_runs.push(Run {
                op,
                child: None,
                kill: Kill::Never,
                output: Some(out),
                killed,
                reply: None,
            });
        }
        let end = reply.is_ok().then(|| replied_at - (start + request_after));
        Outcome {
            api: api_run,
            cli: cli_runs,
            write_at,
            end,
        }
    }

    /// After a kill: check that the gateway refuses every key the log records as revoked (or
    /// that a response or report acknowledged as revoked) and accepts every key acknowledged
    /// as issued. If it was killed, it is started again and must be right at once, before
    /// anything else completed an interrupted commit; if it survived (only CLI processes were
    /// killed), it must be right within [`PROPAGATION`] (it completes a killed command's
    /// commit itself).
    fn probe_after_kill(&mut self, runs: &[Run], ctx: &str) {
        let log = std::fs::read(sibling(&self.h.store, ".log")).unwrap();
        let mut lines = lines_of(&log);
        // A commit cut short (its last line still says `tx_continues`) did not happen.
        while lines
            .last()
            .is_some_and(|l| l.get("tx_continues") == Some(&Value::Bool(true)))
        {
            lines.pop();
        }
        // The model as of the last observation, plus the commits since.
        let mut live = self.h.replay.clone();
        let mut revoked = self.h.revoked.clone();
        let seen = lines_of(&self.h.log).len();
        for l in lines.iter().skip(seen) {
            let id = field(l, "key_id").to_string();
            match field(l, "action") {
                "issue" => {
                    revoked.remove(&id);
                    live.insert(id);
                }
                "revoke" => {
                    live.remove(&id);
                    revoked.insert(id);
                }
                _ => {}
            }
        }
        let mut must_refuse: BTreeSet<String> = BTreeSet::new();
        let mut must_accept: BTreeSet<String> = BTreeSet::new();
        for r in runs {
            let Some(rep) = acknowledged(r) else { continue };
            let s = |k: &str| rep[k].as_str().unwrap_or("").to_string();
            match &r.op {
                Op::Issue { .. } | Op::ApiIssue { .. } => {
                    self.h.plain.insert(s("key_id"), s("api_key"));
                    must_accept.insert(s("key_id"));
                }
                Op::Rotate { id, grace } | Op::ApiRotate { id, grace } => {
                    self.h.plain.insert(s("key_id"), s("api_key"));
                    must_accept.insert(s("key_id"));
                    if *grace {
                        must_accept.insert(id.clone());
                    } else {
                        must_refuse.insert(id.clone());
                    }
                }
                Op::Revoke { id } | Op::ApiRevoke { id } => {
                    must_refuse.insert(id.clone());
                }
                _ => {}
            }
        }
        // Every revocation of this round the log records, and a sample of the older ones.
        let new_revoked: Vec<String> = revoked
            .iter()
            .filter(|k| !self.h.revoked.contains(*k) && self.h.plain.contains_key(*k))
            .cloned()
            .collect();
        must_refuse.extend(new_revoked);
        let older: Vec<String> = self
            .h
            .revoked
            .iter()
            .filter(|k| self.h.plain.contains_key(*k))
            .cloned()
            .collect();
        for _ in 0..older.len().min(4) {
            must_refuse.insert(self.h.rng.pick(&older).clone());
        }
        let acked: Vec<String> = self
            .h
            .must_exist
            .iter()
            .filter(|k| self.h.plain.contains_key(*k) && live.contains(*k))
            .cloned()
            .collect();
        for _ in 0..acked.len().min(4) {
            must_accept.insert(self.h.rng.pick(&acked).clone());
        }
        let wait = if self.gw.is_none() {
            self.start_gateway();
            Duration::ZERO
        } else {
            PROPAGATION
        };
        let gw = self.gw();
        let (mut refused, mut accepted) = (0, 0);
        for k in &must_refuse {
            assert!(
                revoked.contains(k),
                "{ctx}: {k} was acknowledged revoked but the log records no committed revocation"
            );
            let Some(plain) = self.h.plain.get(k) else {
                continue;
            };
            let st = gw.probe_until(plain, wait, |st| st == UNKNOWN, ctx);
            refused += 1;
            assert_eq!(
                st,
                UNKNOWN,
                "{ctx}: the gateway answered {st} to revoked key {k} (want 401) {wait:?} after the kill or restart; stderr:\n{}",
                gw.stderr()
            );
        }
        for k in &must_accept {
            assert!(
                live.contains(k),
                "{ctx}: {k} was acknowledged issued but the log records no committed issue"
            );
            let Some(plain) = self.h.plain.get(k) else {
                continue;
            };
            let st = gw.probe_until(plain, wait, |st| st == VALID || st == REFUSED, ctx);
            accepted += 1;
            assert!(
                st == VALID || st == REFUSED,
                "{ctx}: the gateway answered {st} to acknowledged key {k} (want {VALID}, or {REFUSED} if disabled) {wait:?} after the kill or restart; stderr:\n{}",
                gw.stderr()
            );
        }
        self.revoked_probes += refused;
        self.live_probes += accepted;
    }

    /// Probes `ids` (plaintext known) and compares with the observed store: absent 401,
    /// disabled or expired 403, active 503.
    fn probe_exact(&mut self, ids: &BTreeSet<String>, ctx: &str) {
        let gw = self.gw.as_ref().unwrap();
        for k in ids {
            let Some(plain) = self.h.plain.get(k) else {
                continue;
            };
            let want = match self
                .h
                .keys
                .get(k)
                .map(|v| v["state"].as_str().unwrap_or(""))
            {
                None => UNKNOWN,
                Some("active") => VALID,
                Some(_) => REFUSED,
            };
            let st = gw.probe(plain, ctx);
            assert_eq!(
                st,
                want,
                "{ctx}: the gateway answered {st} for {k} (want {want}); in store: {:?}, revoked: {}; stderr:\n{}",
                self.h.keys.get(k),
                self.h.revoked.contains(k),
                gw.stderr()
            );
            self.exact_probes += 1;
        }
    }

    /// One round: an admin call (sometimes with CLI commands beside it), the gateway killed at
    /// a random moment (`calibrate`: never), restarted, everything checked.
    fn round(&mut self, round: usize, roll: Option<usize>, calibrate: bool) {
        self.h.rng = Rng::new(self.h.seed ^ 0x6A7E ^ (round as u64).wrapping_mul(0x9E37_79B9));
        let roll = roll.unwrap_or_else(|| self.h.rng.below(100));
        let mut avoid = self.h.protected.clone();
        let api = self.choose_api(round, roll, &avoid);
        avoid.extend(api.target().map(String::from));
        // A third of the rounds run one or two CLI commands beside the call.
        let mut cli = Vec::new();
        if !calibrate && self.h.rng.below(3) == 0 {
            for j in 0..1 + self.h.rng.below(2) {
                let op = self.choose_cli(format!("gwcli-{round}-{j}"), &avoid);
                avoid.extend(op.target().map(String::from));
                let d = self.h.concurrent_delay(&op);
                cli.push((op, d));
            }
        }
        let (write, end) = self
            .h
            .est
            .get(api.kind())
            .map_or((0.01, 0.03), |(w, e)| (w.as_secs_f64(), e.as_secs_f64()));
        let secs = |x: f64| Duration::from_secs_f64(x.max(0.0));
        let (kill, request_after) = if calibrate {
            (Kill::Never, Duration::ZERO)
        } else if !cli.is_empty() {
            // Overlap the commands' writes (they start ~a CLI start-up later) and lock waits.
            let cli_write = self
                .h
                .est
                .get("issue")
                .map_or(0.03, |(w, _)| w.as_secs_f64());
            let after = secs(self.h.rng.unit() * cli_write * 1.2);
            // A quarter of these rounds kill only the commands: the gateway survives.
            let k = if self.h.rng.below(4) == 0 {
                Kill::Never
            } else {
                Kill::After(secs(self.h.rng.unit() * end * 1.5))
            };
            (k, after)
        } else {
            let k = match self.h.rng.below(8) {
                0 => Kill::After(secs(self.h.rng.unit() * 0.002)),
                1 => Kill::After(secs(self.h.rng.unit() * end * 1.2)),
                2 | 3 => Kill::AfterCommit(secs(self.h.rng.unit() * (end - write) * 0.25)),
                _ => Kill::AfterWriteStarts(secs(self.h.rng.unit() * (end - write) * 0.9)),
            };
            (k, Duration::ZERO)
        };
        let what = format!(
            "gateway round {round}: {api:?}, gateway kill {kill:?} (request after {request_after:?}), beside it {cli:?}"
        );
        let out = self.run_round(&api, kill, cli, request_after, &what);
        let lone = out.cli.is_empty();
        let mut runs: Vec<Run> = Vec::new();
        runs.push(out.api);
        runs.extend(out.cli);
        let phase = lone.then(|| self.h.phase(&runs[0]));
        if let Some(p) = phase {
            *self.stats.entry((api.kind(), p)).or_default() += 1;
        }
        if calibrate {
            let w = out.write_at.unwrap_or_default();
            let e = out.end.unwrap_or_default();
            let est = self.h.est.entry(api.kind()).or_insert((w, e));
            *est = ((est.0 + w) / 2, (est.1 + e) / 2);
        } else if let (true, Kill::AfterWriteStarts(_), Some(w), Some(e)) =
            (lone, kill, out.write_at, out.end)
            && let Some(est) = self.h.est.get_mut(api.kind())
        {
            // The call ended before its kill: the estimate is too long for the machine's
            // current pace; move it a quarter of the way towards this call.
            *est = ((est.0 * 3 + w) / 4, (est.1 * 3 + e) / 4);
        }
        let what = format!("{what}, landed at {phase:?}");
        let ctx = self.ctx(&what);
        if !calibrate {
            self.survived += usize::from(self.gw.is_some());
            self.probe_after_kill(&runs, &ctx);
        }
        // `check` adds the seed itself.
        self.h.check(&runs, phase, &what);
        // Exactly as the store says: every key touched this round and a sample of the rest.
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for r in &runs {
            touched.extend(r.op.target().map(String::from));
            if let Some(rep) = acknowledged(r)
                && let Some(id) = rep["key_id"].as_str()
            {
                touched.insert(id.to_string());
            }
        }
        let known: Vec<String> = self.h.plain.keys().cloned().collect();
        for _ in 0..known.len().min(6) {
            touched.insert(self.h.rng.pick(&known).clone());
        }
        self.probe_exact(&touched, &ctx);
        self.rounds += 1;
    }
}

/// What a run acknowledged (a CLI report or a 2xx response), with the plaintext.
fn acknowledged(r: &Run) -> Option<Map<String, Value>> {
    let v = if r.op.is_api() {
        r.reply
            .as_ref()
            .filter(|(st, _)| (200..300).contains(st))
            .map(|(_, b)| b.clone())
    } else {
        r.output
            .as_ref()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
    };
    match v {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    }
}

#[test]
fn sigkill_of_the_gateway_during_admin_calls_keeps_every_guarantee() {
    // Crash recovery of the store files under a gateway: file mechanics, no etcd counterpart.
    if etcd_backend() {
        return;
    }
    let started = Instant::now();
    let seed = crash::seed();
    eprintln!("gateway crash test: seed {seed:#x} (rerun with CRASH_SEED={seed:x})");
    let mut h = Harness::new(seed, PREFILL);
    // The admin key the calls use, issued by the CLI and never touched by the operations.
    let out = h.run_cli(&["issue", "--scope", "admin", "--label", "gateway-admin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let admin = rep["api_key"].as_str().unwrap().to_string();
    let admin_id = rep["key_id"].as_str().unwrap().to_string();
    let (keys, log) = h.observe("issuing the admin key");
    h.replay.insert(admin_id.clone());
    h.must_exist.insert(admin_id.clone());
    h.keys = keys;
    h.log = log;
    h.protected.insert(admin_id);
    // The CLI commands that run beside the calls, uninterrupted, to learn their timing
    // (issue, revoke, rotate, rotate --grace).
    for (i, roll) in [0, 40, 60, 75].into_iter().enumerate() {
        h.serial(1_000_000 + i, Some(roll), false);
    }
    let mut g = GwHarness {
        h,
        gw: None,
        admin,
        stats: BTreeMap::new(),
        gw_kills: 0,
        cli_kills: 0,
        idle_kills: 0,
        survived: 0,
        rounds: 0,
        revoked_probes: 0,
        live_probes: 0,
        exact_probes: 0,
        restart_time: Duration::ZERO,
    };
    g.start_gateway();
    let restarts_before = g.restart_time;
    // Calibration: every kind of call twice, uninterrupted (a disable before each enable).
    let rolls = [0, 80, 95, 40, 60, 70];
    let mut round = 0;
    for roll in rolls.iter().chain(&rolls) {
        g.round(round, Some(*roll), true);
        round += 1;
    }
    g.stats.clear();
    let calibration = round;
    let mut n = 0;
    while n < ROUNDS || (g.gw_kills < GATEWAY_MIN_KILLS && n < 2 * ROUNDS) {
        g.round(round, None, false);
        round += 1;
        n += 1;
    }
    // Finally every key whose plaintext is known, against the last observation.
    let all: BTreeSet<String> = g.h.plain.keys().cloned().collect();
    g.probe_exact(&all, &g.ctx("final sweep"));
    let mut by_phase: BTreeMap<Phase, usize> = BTreeMap::new();
    for ((_, p), n) in &g.stats {
        *by_phase.entry(*p).or_default() += n;
    }
    eprintln!(
        "gateway crash test: seed {seed:#x}, {n} rounds after {calibration} calibration rounds, {PREFILL} keys, {:.1?} ({:.1?} restarting the gateway)",
        started.elapsed(),
        g.restart_time - restarts_before
    );
    for (kind, (w, e)) in &g.h.est {
        eprintln!("    {kind:<28} writes from {w:.1?}, ends at {e:.1?} (uninterrupted)");
    }
    eprintln!("  where the kills of lone calls landed: {by_phase:?}");
    for ((kind, p), n) in &g.stats {
        eprintln!("    {kind:<28} {p:?}: {n}");
    }
    eprintln!(
        "  gateway kills during a call: {} (need {GATEWAY_MIN_KILLS}); after the response or before the request: {}; CLI processes killed beside: {} (the gateway left running in {} rounds)",
        g.gw_kills, g.idle_kills, g.cli_kills, g.survived
    );
    eprintln!(
        "  probes: {} revoked keys refused and {} acknowledged keys accepted right after the kill (and restart); {} against the store after verify; {} keys at the end, {} revoked",
        g.revoked_probes,
        g.live_probes,
        g.exact_probes,
        g.h.keys.len(),
        g.h.revoked.len()
    );
    let inside = crash::kills_inside_the_write_protocol(&by_phase);
    assert!(
        inside > 0,
        "no gateway kill landed inside the write protocol (seed {seed:#x}): {by_phase:?}"
    );
    assert!(
        g.gw_kills >= GATEWAY_MIN_KILLS,
        "too few gateway kills landed during a call (seed {seed:#x}): {} (need {GATEWAY_MIN_KILLS})",
        g.gw_kills
    );
}
