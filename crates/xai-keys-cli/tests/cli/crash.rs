//! SIGKILL at random moments: the real binary is killed while it issues, revokes, rotates,
//! backs up and restores against a store of ~1,000 keys (so writing it takes long enough for
//! kills aimed at the write protocol to land inside it), one process at a time and several at
//! once.
//!
//! After every kill: `verify` exits 0, `list` loads the store, and
//! * every key a command reported issued is present, every key it reported revoked is absent;
//! * the killed command either happened completely (all its audit lines, its whole effect) or
//!   not at all, and which one agrees with where the kill landed relative to the commit point
//!   (inferred from the files the process left behind);
//! * committed audit lines are never lost (each observed log is a prefix of the next);
//! * replaying the audit log gives exactly the keys in the store (nothing unaudited, nothing
//!   audited missing);
//! * a key with a recorded revocation never reappears, and no absent key reappears except by an
//!   audited `restore` of a backup that holds it.
//!
//! The operation mix and the kill delays come from a small deterministic PRNG (seed
//! `CRASH_SEED`, hexadecimal, default fixed); where a kill lands within a run still varies with
//! timing. Only kills that landed while the process was still running count (a process that
//! exited before its SIGKILL does not): this test needs [`CLI_MIN_KILLS`] of them, the gateway
//! test (`crash_gateway.rs`, which shares this harness) `GATEWAY_MIN_KILLS`; together at least
//! 200.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use xai_keys_core::record::{self, LoadContext};
use xai_keys_core::token::sha256_hex;

use crate::common::{BIN, etcd_backend};

/// Serial kill iterations (after calibration) and concurrent rounds, at least; more run (up to
/// twice as many) until [`SERIAL_MIN_KILLS`] and [`CONCURRENT_MIN_KILLS`] kills landed.
/// (A concurrent round lands about three kills for one observation, so it is the cheaper kind.)
const ITERATIONS: usize = 90;
const CONCURRENT_ROUNDS: usize = 22;
const SERIAL_MIN_KILLS: usize = 80;
const CONCURRENT_MIN_KILLS: usize = 60;
/// Kills of running CLI processes this test must land.
pub(super) const CLI_MIN_KILLS: usize = SERIAL_MIN_KILLS + CONCURRENT_MIN_KILLS;
/// Keys in the store before the test starts.
const PREFILL: usize = 1000;

/// The seed: `CRASH_SEED` (hexadecimal, `0x` optional), else a fixed one.
pub(super) fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x5EED_CAFE)
}

/// splitmix64: small, deterministic, good enough to pick operations and delays.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(super) fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// A CLI command, or (`Api*`) a call to the gateway's admin API.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Issue { label: String },
    Revoke { id: String },
    Rotate { id: String, grace: bool },
    Backup { out: PathBuf },
    Restore { from: PathBuf },
    ApiIssue { label: String, scope: &'static str },
    ApiRevoke { id: String },
    ApiRotate { id: String, grace: bool },
    ApiDisable { id: String },
    ApiEnable { id: String },
}

impl Op {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Op::Issue { .. } => "issue",
            Op::Revoke { .. } => "revoke",
            Op::Rotate { grace: false, .. } => "rotate",
            Op::Rotate { grace: true, .. } => "rotate --grace",
            Op::Backup { .. } => "backup",
            Op::Restore { .. } => "restore",
            Op::ApiIssue { .. } => "POST /admin/api-keys",
            Op::ApiRevoke { .. } => "DELETE /admin/api-keys/{id}",
            Op::ApiRotate { grace: false, .. } => "POST …/rotate",
            Op::ApiRotate { grace: true, .. } => "POST …/rotate grace",
            Op::ApiDisable { .. } => "POST …/disable",
            Op::ApiEnable { .. } => "POST …/enable",
        }
    }
    pub(super) fn is_api(&self) -> bool {
        matches!(
            self,
            Op::ApiIssue { .. }
                | Op::ApiRevoke { .. }
                | Op::ApiRotate { .. }
                | Op::ApiDisable { .. }
                | Op::ApiEnable { .. }
        )
    }
    /// The key the operation changes (none for an issue, a backup or a restore).
    pub(super) fn target(&self) -> Option<&str> {
        match self {
            Op::Revoke { id }
            | Op::Rotate { id, .. }
            | Op::ApiRevoke { id }
            | Op::ApiRotate { id, .. }
            | Op::ApiDisable { id }
            | Op::ApiEnable { id } => Some(id),
            _ => None,
        }
    }
    /// Method, path and JSON body of an admin API call.
    pub(super) fn request(&self) -> (&'static str, String, Option<String>) {
        match self {
            Op::ApiIssue { label, scope } => (
                "POST",
                "/admin/api-keys".into(),
                Some(serde_json::json!({"label": label, "scope": scope}).to_string()),
            ),
            Op::ApiRevoke { id } => (
                "DELETE",
                format!("/admin/api-keys/{id}?reason=crash-test"),
                None,
            ),
            Op::ApiRotate { id, grace } => (
                "POST",
                format!("/admin/api-keys/{id}/rotate"),
                Some(if *grace {
                    r#"{"grace": "1h"}"#.into()
                } else {
                    "{}".into()
                }),
            ),
            Op::ApiDisable { id } => ("POST", format!("/admin/api-keys/{id}/disable"), None),
            Op::ApiEnable { id } => ("POST", format!("/admin/api-keys/{id}/enable"), None),
            other => panic!("{other:?} is not an API call"),
        }
    }
    pub(super) fn args(&self) -> Vec<String> {
        let s = |x: &str| x.to_string();
        match self {
            Op::Issue { label } => vec![
                s("issue"),
                s("--scope"),
                s("user"),
                s("--label"),
                label.clone(),
            ],
            Op::Revoke { id } => vec![s("revoke"), id.clone(), s("--reason"), s("crash-test")],
            Op::Rotate { id, grace } => {
                let mut a = vec![s("rotate"), id.clone()];
                if *grace {
                    a.extend([s("--grace"), s("1h")]);
                }
                a
            }
            Op::Backup { out } => vec![s("backup"), s("--out"), out.display().to_string()],
            Op::Restore { from } => vec![s("restore"), from.display().to_string()],
            other => panic!("{other:?} is not a command"),
        }
    }
}

/// Where a kill landed, inferred from the files it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Killed before writing anything (start-up, parsing, waiting for the lock, copying).
    BeforeWrite,
    /// Killed with `<store>.pending` written or being written, before the audit append.
    PendingWritten,
    /// Killed during the audit append (the log grew, but not by a complete commit).
    Appending,
    /// Killed after the commit point, before the rename.
    Committed,
    /// Killed after the rename (or after a backup was renamed into place), before reporting.
    Published,
    /// The process finished before the kill.
    Completed,
}

impl Phase {
    /// Whether the change must have happened (`None`: either is allowed).
    pub(super) fn applied(self) -> Option<bool> {
        match self {
            Phase::BeforeWrite | Phase::PendingWritten | Phase::Appending => Some(false),
            Phase::Committed | Phase::Published | Phase::Completed => Some(true),
        }
    }
}

pub(super) fn cmd(store: &Path, args: &[String]) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("XAI_") {
            c.env_remove(k);
        }
    }
    c.arg("--store").arg(store).arg("-o").arg("json").args(args);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub(super) fn sibling(store: &Path, suffix: &str) -> PathBuf {
    let mut s = store.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub(super) fn lines_of(log: &[u8]) -> Vec<Map<String, Value>> {
    let complete = log
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&log[..0], |i| &log[..=i]);
    complete
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

pub(super) fn field<'a>(e: &'a Map<String, Value>, k: &str) -> &'a str {
    e.get(k).and_then(Value::as_str).unwrap_or("")
}

fn str_list(e: &Map<String, Value>, k: &str) -> BTreeSet<String> {
    e.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Key ids in a backup directory.
fn backup_keys(dir: &Path) -> BTreeSet<String> {
    let p = dir.join("api_keys.json");
    let bytes = std::fs::read(&p).unwrap();
    record::parse_store(
        &bytes,
        &p,
        LoadContext {
            now: xai_keys_core::now_epoch(),
            default_ttl_secs: 86_400.0,
        },
    )
    .unwrap()
    .keys()
    .map(|k| k.to_string())
    .collect()
}

/// When to kill a command.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kill {
    Never,
    /// This long after it was spawned.
    After(Duration),
    /// This long after it started writing (or when it exits, if it never does).
    AfterWriteStarts(Duration),
    /// This long after the audit log grew (the commit point: aims at the roll-forward window
    /// and what follows it), or when it exits, if the log never grows.
    AfterCommit(Duration),
}

/// A running command (or an admin API call) and what came of it.
pub(super) struct Run {
    pub(super) op: Op,
    pub(super) child: Option<Child>,
    pub(super) kill: Kill,
    pub(super) output: Option<Output>,
    /// The SIGKILL landed while the process ran (an API call: while the call was in flight).
    pub(super) killed: bool,
    /// An API call's response: status and JSON body.
    pub(super) reply: Option<(u16, Value)>,
}

impl Run {
    /// What the command or call acknowledged: its JSON report, or a 2xx response's body.
    fn report(&self) -> Option<Value> {
        if self.op.is_api() {
            return self
                .reply
                .as_ref()
                .filter(|(st, b)| (200..300).contains(st) && b.is_object())
                .map(|(_, b)| b.clone());
        }
        let out = self.output.as_ref()?;
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .filter(Value::is_object)
    }
}

pub(super) struct Harness {
    pub(super) _dir: tempfile::TempDir,
    pub(super) store: PathBuf,
    pub(super) backups_dir: PathBuf,
    pub(super) rng: Rng,
    pub(super) seed: u64,
    /// Last observation: listing by key id, and the log bytes.
    pub(super) keys: BTreeMap<String, Value>,
    pub(super) log: Vec<u8>,
    /// Replay of the whole log.
    pub(super) replay: BTreeSet<String>,
    /// Keys with a committed revocation, and keys a command reported revoked.
    pub(super) revoked: BTreeSet<String>,
    /// Keys a command reported issued and nothing audited has removed since.
    pub(super) must_exist: BTreeSet<String>,
    /// Reported backups.
    pub(super) backups: Vec<PathBuf>,
    pub(super) backup_cache: BTreeMap<String, BTreeSet<String>>,
    /// For each kind of command, uninterrupted: when it started writing (`<store>.pending` or
    /// the partial backup appeared) and when it exited, from spawn.
    pub(super) est: BTreeMap<&'static str, (Duration, Duration)>,
    /// (kind, phase) → count.
    pub(super) stats: BTreeMap<(&'static str, Phase), usize>,
    pub(super) counter: usize,
    /// Keys no generated operation may touch (the gateway test's admin key).
    pub(super) protected: BTreeSet<String>,
    /// Plaintexts of the keys issued during the test (by a report or a response), by key id.
    pub(super) plain: BTreeMap<String, String>,
}

impl Harness {
    pub(super) fn new(seed: u64, prefill: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        std::fs::create_dir(&keys_dir).unwrap();
        std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let store = keys_dir.join("api_keys.json");
        let backups_dir = dir.path().join("backups");
        std::fs::create_dir(&backups_dir).unwrap();
        // A store of `prefill` keys written directly, then adopted so the log anchors it.
        let mut rng = Rng::new(seed ^ 0xA5A5_A5A5);
        let now = xai_keys_core::now_epoch();
        let mut m = Map::new();
        for i in 0..prefill {
            let id = format!(
                "{:016x}{:016x}{:016x}{:016x}",
                rng.next(),
                rng.next(),
                rng.next(),
                rng.next()
            );
            let scope = ["user", "operator", "auditor", "admin"][i % 4];
            m.insert(
                id,
                serde_json::json!({
                    "label": format!("pre-{i}"),
                    "created": now - 1000.0,
                    "scope": scope,
                    "expires_at": now + 30.0 * 86_400.0,
                    "permanent": false,
                }),
            );
        }
        let mut text = serde_json::to_vec_pretty(&Value::Object(m)).unwrap();
        text.push(b'\n');
        std::fs::write(&store, &text).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = cmd(&store, &["verify".into(), "--adopt".into()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut h = Harness {
            _dir: dir,
            store,
            backups_dir,
            rng,
            seed,
            keys: BTreeMap::new(),
            log: Vec::new(),
            replay: BTreeSet::new(),
            revoked: BTreeSet::new(),
            must_exist: BTreeSet::new(),
            backups: Vec::new(),
            backup_cache: BTreeMap::new(),
            est: BTreeMap::new(),
            stats: BTreeMap::new(),
            counter: 0,
            protected: BTreeSet::new(),
            plain: BTreeMap::new(),
        };
        let (keys, log) = h.observe("after adopt");
        assert_eq!(keys.len(), prefill);
        h.replay = keys.keys().cloned().collect();
        assert_eq!(lines_of(&log).len(), 1);
        h.keys = keys;
        h.log = log;
        h
    }

    pub(super) fn run_cli(&self, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        cmd(&self.store, &args).output().unwrap()
    }

    /// `verify` (must pass: it also completes an interrupted commit) then `list`.
    pub(super) fn observe(&self, ctx: &str) -> (BTreeMap<String, Value>, Vec<u8>) {
        let v = self.run_cli(&["verify"]);
        let rep: Value = serde_json::from_slice(&v.stdout).unwrap_or(Value::Null);
        assert!(
            v.status.success() && rep["ok"] == true,
            "{ctx}: verify failed after the kill:\n{}\n{}",
            serde_json::to_string_pretty(&rep).unwrap(),
            String::from_utf8_lossy(&v.stderr)
        );
        let l = self.run_cli(&["list"]);
        assert!(
            l.status.success(),
            "{ctx}: list failed: {}",
            String::from_utf8_lossy(&l.stderr)
        );
        let keys: Map<String, Value> = serde_json::from_slice(&l.stdout).unwrap();
        let log = std::fs::read(sibling(&self.store, ".log")).unwrap();
        (keys.into_iter().collect(), log)
    }

    pub(super) fn backup_set(&mut self, path: &str) -> BTreeSet<String> {
        self.backup_cache
            .entry(path.to_string())
            .or_insert_with(|| backup_keys(Path::new(path)))
            .clone()
    }

    /// Chooses an operation whose target is valid in the last observed state.
    /// `roll` (0..100) picks the kind: issue 35%, revoke 20%, rotate 15%, rotate --grace 12%,
    /// backup 9%, restore 9% (issue while there is no backup yet).
    pub(super) fn choose(&mut self, label: String, roll: usize) -> Op {
        let active = self.active();
        let ours = self.keys_where(|_, v| !v["label"].as_str().unwrap_or("").starts_with("pre-"));
        let all = self.keys_where(|_, _| true);
        match roll {
            0..=34 => Op::Issue { label },
            35..=54 => {
                let pool = if !ours.is_empty() && self.rng.below(2) == 0 {
                    &ours
                } else {
                    &all
                };
                Op::Revoke {
                    id: self.rng.pick(pool).clone(),
                }
            }
            55..=69 => Op::Rotate {
                id: self.rng.pick(&active).clone(),
                grace: false,
            },
            70..=81 => Op::Rotate {
                id: self.rng.pick(&active).clone(),
                grace: true,
            },
            82..=90 => self.backup_op(),
            _ if !self.backups.is_empty() => Op::Restore {
                from: self.rng.pick(&self.backups).clone(),
            },
            _ => Op::Issue { label },
        }
    }

    /// Ids of the last observed keys that `keep` accepts, never a protected one.
    pub(super) fn keys_where(&self, keep: impl Fn(&str, &Value) -> bool) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(k, v)| !self.protected.contains(*k) && keep(k, v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys that may be rotated: active and not already rotated.
    pub(super) fn active(&self) -> Vec<String> {
        self.keys_where(|_, v| v["state"] == "active" && v["replaced_by"].is_null())
    }

    pub(super) fn backup_op(&mut self) -> Op {
        self.counter += 1;
        Op::Backup {
            out: self.backups_dir.join(format!("b{}", self.counter)),
        }
    }

    /// When to kill a lone command: a quarter very early or anywhere in the run (by time since
    /// spawn), a quarter soon after its commit point, the rest at a random moment after it
    /// starts writing (the write protocol is a small part of a debug build's run, and machine
    /// load moves it around).
    pub(super) fn kill_for(&mut self, op: &Op) -> Kill {
        let (write, end) = self
            .est
            .get(op.kind())
            .map_or((0.04, 0.06), |(w, e)| (w.as_secs_f64(), e.as_secs_f64()));
        let secs = |x: f64| Duration::from_secs_f64(x.max(0.0));
        match self.rng.below(8) {
            // Start-up, argument parsing, opening the store.
            0 => Kill::After(secs(self.rng.unit() * 0.003)),
            1 => Kill::After(secs(self.rng.unit() * end * 1.1)),
            2 | 3 if !matches!(op, Op::Backup { .. }) => {
                Kill::AfterCommit(secs(self.rng.unit() * (end - write) * 0.2))
            }
            _ => Kill::AfterWriteStarts(secs(self.rng.unit() * (end - write) * 1.05)),
        }
    }

    /// A delay for one of several concurrent commands (by time: they also wait for the lock).
    pub(super) fn concurrent_delay(&mut self, op: &Op) -> Duration {
        let end = self
            .est
            .get(op.kind())
            .map_or(0.06, |(_, e)| e.as_secs_f64());
        Duration::from_secs_f64(self.rng.unit() * end * 2.0)
    }

    /// The file whose appearance shows that `child` (running `op`) has started writing.
    pub(super) fn write_marker(&self, op: &Op, child: &Child) -> PathBuf {
        match op {
            Op::Backup { out } => {
                let mut m = out.as_os_str().to_owned();
                m.push(format!(".partial-{}", child.id()));
                PathBuf::from(m)
            }
            _ => sibling(&self.store, ".pending"),
        }
    }

    /// Starts `ops` at once and kills each as told.
    pub(super) fn run_all(&mut self, ops: Vec<(Op, Kill)>) -> Vec<Run> {
        let start = Instant::now();
        let mut runs: Vec<Run> = ops
            .into_iter()
            .map(|(op, kill)| Run {
                child: Some(cmd(&self.store, &op.args()).spawn().unwrap()),
                op,
                kill,
                output: None,
                killed: false,
                reply: None,
            })
            .collect();
        if let [one] = runs.as_mut_slice()
            && matches!(
                one.kill,
                Kill::Never | Kill::AfterWriteStarts(_) | Kill::AfterCommit(_)
            )
        {
            // Watch for the start of writing; uninterrupted runs calibrate the estimates.
            let marker = self.write_marker(&one.op, one.child.as_ref().unwrap());
            let child = one.child.as_mut().unwrap();
            let log = sibling(&self.store, ".log");
            let log_len = self.log.len() as u64;
            let mut write_at = None;
            let mut kill_at = None;
            let mut ended = None;
            loop {
                if child.try_wait().unwrap().is_some() {
                    ended = Some(start.elapsed());
                    break;
                }
                if write_at.is_none() && marker.exists() {
                    write_at = Some(start.elapsed());
                    if let Kill::AfterWriteStarts(d) = one.kill {
                        kill_at = Some(Instant::now() + d);
                    }
                }
                if let Kill::AfterCommit(d) = one.kill
                    && kill_at.is_none()
                    && std::fs::metadata(&log).is_ok_and(|m| m.len() > log_len)
                {
                    kill_at = Some(Instant::now() + d);
                }
                if kill_at.is_some_and(|k| Instant::now() >= k) {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            match (one.kill, ended) {
                (Kill::Never, Some(end)) => {
                    let w = write_at.unwrap_or(end.mul_f64(0.85));
                    let e = self.est.entry(one.op.kind()).or_insert((w, end));
                    *e = ((e.0 + w) / 2, (e.1 + end) / 2);
                }
                // It ended before its kill: the machine is faster now than the estimate says
                // (load varies); move the estimate a quarter of the way towards this run.
                (Kill::AfterWriteStarts(_), Some(end)) => {
                    if let (Some(w), Some(e)) = (write_at, self.est.get_mut(one.op.kind())) {
                        *e = ((e.0 * 3 + w) / 4, (e.1 * 3 + end) / 4);
                    }
                }
                _ => {}
            }
        }
        let mut order: Vec<usize> = (0..runs.len()).collect();
        let at = |k: &Kill| match k {
            Kill::After(d) => *d,
            _ => Duration::MAX,
        };
        order.sort_by_key(|&i| at(&runs[i].kill));
        for i in order {
            if let Kill::After(d) = runs[i].kill {
                let elapsed = start.elapsed();
                if d > elapsed {
                    std::thread::sleep(d - elapsed);
                }
                // SIGKILL; a child that already exited is not signalled.
                if let Some(c) = runs[i].child.as_mut() {
                    let _ = c.kill();
                }
            }
        }
        for r in &mut runs {
            let out = r.child.take().unwrap().wait_with_output().unwrap();
            r.killed = out.status.signal() == Some(9);
            if !r.killed {
                assert!(
                    out.status.success(),
                    "{:?} failed without being killed (seed {:#x}): {}",
                    r.op,
                    self.seed,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            r.output = Some(out);
        }
        runs
    }

    /// Where a lone killed command stopped, from the files it left (before anything recovers).
    pub(super) fn phase(&self, run: &Run) -> Phase {
        if !run.killed {
            return Phase::Completed;
        }
        if let Op::Backup { out } = &run.op {
            return if out.exists() {
                Phase::Published
            } else {
                Phase::BeforeWrite
            };
        }
        let pending = std::fs::read(sibling(&self.store, ".pending")).ok();
        let log = std::fs::read(sibling(&self.store, ".log")).unwrap();
        let store = std::fs::read(&self.store).unwrap();
        let new_lines = lines_of(&log).split_off(lines_of(&self.log).len());
        if let Some(p) = pending {
            let digest = sha256_hex(&p);
            let committed = new_lines.last().is_some_and(|l| {
                field(l, "store_sha256") == digest && l.get("tx_continues").is_none()
            });
            return if committed {
                Phase::Committed
            } else if log.len() > self.log.len() {
                Phase::Appending
            } else {
                Phase::PendingWritten
            };
        }
        if log.len() > self.log.len() {
            Phase::Published
        } else {
            assert_eq!(
                sha256_hex(&store),
                field(lines_of(&self.log).last().unwrap(), "store_sha256"),
                "{:?}: store changed without a pending file or log lines",
                run.op
            );
            Phase::BeforeWrite
        }
    }

    /// Observes after `runs`, checks every guarantee, and updates the model.
    pub(super) fn check(&mut self, runs: &[Run], phase: Option<Phase>, ctx: &str) {
        let ctx = format!("{ctx} (seed {:#x})", self.seed);
        let (keys, log) = self.observe(&ctx);
        // Committed lines are never lost.
        assert!(
            log.starts_with(&self.log),
            "{ctx}: the log lost committed lines"
        );
        let delta = lines_of(&log).split_off(lines_of(&self.log).len());
        // Group the new lines into commits: every line of a commit but its last is marked
        // `tx_continues`, and all of them record the same store digest.
        let mut commits: Vec<Vec<&Map<String, Value>>> = Vec::new();
        let mut open = false;
        for e in &delta {
            if open {
                let c = commits.last_mut().unwrap();
                assert_eq!(
                    field(c[0], "store_sha256"),
                    field(e, "store_sha256"),
                    "{ctx}: one commit, two store digests"
                );
                c.push(e);
            } else {
                commits.push(vec![e]);
            }
            open = e.get("tx_continues") == Some(&Value::Bool(true));
        }
        assert!(!open, "{ctx}: the log ends inside a commit after recovery");
        // Match each run to at most one commit; every commit must belong to a run.
        let mut applied = vec![false; runs.len()];
        for c in &commits {
            let actions: Vec<&str> = c
                .iter()
                .map(|e| field(e, "action"))
                .filter(|a| *a != "recover")
                .collect();
            let body: Vec<&&Map<String, Value>> = c
                .iter()
                .filter(|e| field(e, "action") != "recover")
                .collect();
            let owner = runs.iter().enumerate().position(|(i, r)| {
                !applied[i]
                    && match &r.op {
                        Op::Issue { label } | Op::ApiIssue { label, .. } => {
                            actions == ["issue"] && field(body[0], "label") == label
                        }
                        Op::Revoke { id } | Op::ApiRevoke { id } => {
                            actions == ["revoke"] && field(body[0], "key_id") == id
                        }
                        Op::ApiDisable { id } => {
                            actions == ["disable"] && field(body[0], "key_id") == id
                        }
                        Op::ApiEnable { id } => {
                            actions == ["enable"] && field(body[0], "key_id") == id
                        }
                        Op::Rotate { id, grace } | Op::ApiRotate { id, grace } => {
                            let mid = if *grace { "expire" } else { "revoke" };
                            actions == ["issue", mid, "rotate"]
                                && field(body[1], "key_id") == id
                                && field(body[2], "replaced") == id
                                && field(body[0], "key_id") == field(body[2], "key_id")
                                && field(body[1], "replaced_by") == field(body[0], "key_id")
                        }
                        Op::Restore { from } => {
                            actions == ["restore"]
                                && field(body[0], "backup") == from.display().to_string()
                        }
                        Op::Backup { .. } => false,
                    }
            });
            let Some(i) = owner else {
                panic!("{ctx}: a commit no command explains (half-applied?): {actions:?}\n{c:#?}");
            };
            applied[i] = true;
        }
        // Replay the new lines onto the previous key set.
        for e in &delta {
            let id = field(e, "key_id").to_string();
            match field(e, "action") {
                "issue" => assert!(self.replay.insert(id.clone()), "{ctx}: {id} issued twice"),
                "revoke" => {
                    assert!(self.replay.remove(&id), "{ctx}: revoked absent {id}");
                    self.revoked.insert(id.clone());
                    self.must_exist.remove(&id);
                }
                "restore" => {
                    let from = field(e, "backup").to_string();
                    let b = self.backup_set(&from);
                    let left_out = str_list(e, "revoked_since_backup");
                    // Every key of the backup revoked since must be left out.
                    let resurrected: Vec<&String> = b
                        .intersection(&self.revoked)
                        .filter(|k| !left_out.contains(*k))
                        .collect();
                    assert!(
                        resurrected.is_empty(),
                        "{ctx}: restore brought back revoked keys {resurrected:?}"
                    );
                    let dropped = str_list(e, "dropped_keys");
                    let want: BTreeSet<String> = b.difference(&left_out).cloned().collect();
                    let really_dropped: BTreeSet<String> =
                        self.replay.difference(&want).cloned().collect();
                    let not_revoked: BTreeSet<String> =
                        really_dropped.difference(&left_out).cloned().collect();
                    assert_eq!(
                        dropped, not_revoked,
                        "{ctx}: the restore line misreports the keys it dropped"
                    );
                    for k in &really_dropped {
                        self.must_exist.remove(k);
                    }
                    self.replay = want;
                }
                _ => {}
            }
        }
        let ids: BTreeSet<String> = keys.keys().cloned().collect();
        assert_eq!(
            ids.len(),
            self.replay.len(),
            "{ctx}: the store holds {} keys, the audit log accounts for {}",
            ids.len(),
            self.replay.len()
        );
        assert!(
            ids == self.replay,
            "{ctx}: store and audit log disagree: only in store {:?}, only in log {:?}",
            ids.difference(&self.replay).collect::<Vec<_>>(),
            self.replay.difference(&ids).collect::<Vec<_>>()
        );
        // No absent key reappears except through an audited restore or issue.
        let old_ids: BTreeSet<String> = self.keys.keys().cloned().collect();
        for k in ids.difference(&old_ids) {
            let issued_now = delta
                .iter()
                .any(|e| field(e, "action") == "issue" && field(e, "key_id") == k);
            let restored_now = delta.iter().any(|e| field(e, "action") == "restore");
            assert!(
                issued_now || restored_now,
                "{ctx}: {k} appeared from nowhere"
            );
        }
        // Per-command outcomes.
        for (i, r) in runs.iter().enumerate() {
            let report = r.report();
            if let Some((status, body)) = &r.reply
                && !(200..300).contains(status)
            {
                panic!(
                    "{ctx}: {:?} answered {status} (applied={}): {body}",
                    r.op, applied[i]
                );
            }
            // A backup never commits anything to the store or the log.
            let expect = match r.op {
                Op::Backup { .. } => Some(false),
                _ => phase.and_then(Phase::applied),
            };
            if let Some(p) = expect {
                assert_eq!(
                    applied[i], p,
                    "{ctx}: {:?} killed at {phase:?} but applied={}",
                    r.op, applied[i]
                );
            }
            if let Some(rep) = &report {
                assert!(
                    applied[i] || matches!(r.op, Op::Backup { .. }),
                    "{ctx}: {:?} reported success, did not happen",
                    r.op
                );
                self.check_report(&r.op, rep, &ids, &keys, &ctx);
            }
            if !applied[i] && !r.killed && !matches!(r.op, Op::Backup { .. }) {
                panic!("{ctx}: {:?} finished but left no commit", r.op);
            }
        }
        for k in &self.must_exist {
            assert!(ids.contains(k), "{ctx}: reported-issued key {k} is missing");
        }
        for k in &self.revoked {
            assert!(!ids.contains(k), "{ctx}: revoked key {k} is back");
        }
        self.keys = keys;
        self.log = log;
    }

    pub(super) fn check_report(
        &mut self,
        op: &Op,
        rep: &Value,
        ids: &BTreeSet<String>,
        keys: &BTreeMap<String, Value>,
        ctx: &str,
    ) {
        let s = |k: &str| rep[k].as_str().unwrap_or("").to_string();
        match op {
            Op::Issue { label } | Op::ApiIssue { label, .. } => {
                assert_eq!(&s("label"), label, "{ctx}");
                assert!(s("api_key").starts_with("xai_"), "{ctx}");
                assert!(
                    ids.contains(&s("key_id")),
                    "{ctx}: acknowledged issued key {} is missing",
                    s("key_id")
                );
                self.must_exist.insert(s("key_id"));
                self.plain.insert(s("key_id"), s("api_key"));
            }
            Op::Revoke { id } | Op::ApiRevoke { id } => {
                assert_eq!(&s("key_id"), id, "{ctx}");
                assert!(!ids.contains(id), "{ctx}: reported revoked {id} is present");
                self.revoked.insert(id.clone());
            }
            Op::ApiDisable { id } | Op::ApiEnable { id } => {
                assert_eq!(&s("key_id"), id, "{ctx}");
                let want = if matches!(op, Op::ApiDisable { .. }) {
                    "disabled"
                } else {
                    "active"
                };
                assert_eq!(s("state"), want, "{ctx}");
                assert_eq!(
                    keys.get(id).map(|k| &k["state"]),
                    Some(&Value::from(want)),
                    "{ctx}: acknowledged {} of {id} is not in the store",
                    op.kind()
                );
            }
            Op::Rotate { id, grace } | Op::ApiRotate { id, grace } => {
                let old = if op.is_api() {
                    "old_key_id"
                } else {
                    "replaced"
                };
                assert_eq!(&s(old), id, "{ctx}");
                let new = s("key_id");
                assert!(s("api_key").starts_with("xai_"), "{ctx}");
                assert!(
                    ids.contains(&new),
                    "{ctx}: acknowledged rotated-to key {new} is missing"
                );
                self.plain.insert(new.clone(), s("api_key"));
                self.must_exist.insert(new.clone());
                if *grace {
                    assert_eq!(keys[id]["replaced_by"], new.as_str(), "{ctx}");
                } else {
                    assert!(!ids.contains(id), "{ctx}: rotated-away {id} is present");
                    self.revoked.insert(id.clone());
                }
            }
            Op::Backup { out } => {
                let b = self.backup_set(&out.display().to_string());
                assert_eq!(rep["keys"].as_u64(), Some(b.len() as u64), "{ctx}");
                self.backups.push(out.clone());
            }
            Op::Restore { from } => {
                let b = self.backup_set(&from.display().to_string());
                let left_out = str_list(rep.as_object().unwrap(), "revoked_since_backup");
                let want: BTreeSet<String> = b.difference(&left_out).cloned().collect();
                assert_eq!(ids, &want, "{ctx}: restore reported, store differs");
            }
        }
    }

    /// One command, killed after a random delay (or, when `kill` is false, left to finish).
    /// One command of a kind chosen by `roll` (random when `None`).
    pub(super) fn serial(
        &mut self,
        iter: usize,
        roll: Option<usize>,
        kill: bool,
    ) -> (&'static str, Phase) {
        self.rng = Rng::new(self.seed ^ (iter as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let roll = roll.unwrap_or_else(|| self.rng.below(100));
        let op = self.choose(format!("crash-{iter}"), roll);
        let how = if kill {
            self.kill_for(&op)
        } else {
            Kill::Never
        };
        let runs = self.run_all(vec![(op.clone(), how)]);
        let phase = self.phase(&runs[0]);
        self.check(
            &runs,
            Some(phase),
            &format!("iteration {iter}: {op:?}, kill {how:?}, landed at {phase:?}"),
        );
        (op.kind(), phase)
    }

    /// Three commands at once on distinct keys, each killed at its own random moment.
    pub(super) fn concurrent(&mut self, round: usize) -> usize {
        self.rng = Rng::new(self.seed ^ 0xC0C0 ^ ((round as u64) << 20));
        let mut ops = vec![Op::Issue {
            label: format!("conc-{round}"),
        }];
        let active = self.active();
        let a = self.rng.pick(&active).clone();
        let mut b = self.rng.pick(&active).clone();
        while b == a {
            b = self.rng.pick(&active).clone();
        }
        ops.push(Op::Revoke { id: a });
        ops.push(Op::Rotate {
            id: b,
            grace: self.rng.below(2) == 0,
        });
        if self.rng.below(2) == 0 {
            ops.push(Op::Issue {
                label: format!("conc-{round}-b"),
            });
        }
        let with_delays: Vec<(Op, Kill)> = ops
            .into_iter()
            .map(|op| {
                let d = self.concurrent_delay(&op);
                (op, Kill::After(d))
            })
            .collect();
        let what: Vec<String> = with_delays
            .iter()
            .map(|(op, k)| format!("{op:?} kill {k:?}"))
            .collect();
        let runs = self.run_all(with_delays);
        let killed = runs.iter().filter(|r| r.killed).count();
        self.check(&runs, None, &format!("concurrent round {round}: {what:?}"));
        killed
    }
}

#[test]
fn sigkill_at_random_moments_keeps_every_guarantee() {
    // Torn writes and crash recovery of the store files: file mechanics, no etcd counterpart.
    if etcd_backend() {
        return;
    }
    let started = Instant::now();
    let seed = seed();
    eprintln!("crash test: seed {seed:#x} (rerun with CRASH_SEED={seed:x})");
    let mut h = Harness::new(seed, PREFILL);
    // Calibration: every kind of command twice, uninterrupted, to learn when each starts
    // writing and when it ends (backup first, so that restore has a backup to use).
    let rolls = [85, 0, 40, 60, 75, 95];
    let mut iter = 0;
    for roll in rolls.iter().chain(&rolls) {
        h.serial(iter, Some(*roll), false);
        iter += 1;
    }
    assert_eq!(h.est.len(), 6, "calibration missed a command kind");
    let calibration = iter;
    // Serial kills: at least ITERATIONS, more until SERIAL_MIN_KILLS landed.
    let mut serial_kills = 0;
    let mut n = 0;
    while n < ITERATIONS || (serial_kills < SERIAL_MIN_KILLS && n < 2 * ITERATIONS) {
        let (kind, phase) = h.serial(iter, None, true);
        *h.stats.entry((kind, phase)).or_default() += 1;
        serial_kills += usize::from(phase != Phase::Completed);
        iter += 1;
        n += 1;
    }
    let serial_time = started.elapsed();
    let mut concurrent_kills = 0;
    let mut rounds = 0;
    while rounds < CONCURRENT_ROUNDS
        || (concurrent_kills < CONCURRENT_MIN_KILLS && rounds < 2 * CONCURRENT_ROUNDS)
    {
        concurrent_kills += h.concurrent(rounds);
        rounds += 1;
    }
    // Summary (shown with --nocapture).
    let mut by_phase: BTreeMap<Phase, usize> = BTreeMap::new();
    for ((_, p), n) in &h.stats {
        *by_phase.entry(*p).or_default() += n;
    }
    eprintln!(
        "crash test: seed {seed:#x}, {n} serial runs killed after {calibration} calibration runs, {PREFILL} keys; serial {serial_time:.1?}, total {:.1?}",
        started.elapsed()
    );
    eprintln!("  where the kills landed: {by_phase:?}");
    for (kind, (w, e)) in &h.est {
        eprintln!("    {kind:<15} writes from {w:.1?}, ends at {e:.1?} (uninterrupted)");
    }
    for ((kind, p), n) in &h.stats {
        eprintln!("    {kind:<15} {p:?}: {n}");
    }
    eprintln!(
        "  concurrent: {rounds} rounds, {concurrent_kills} processes killed; {} keys at the end, {} revoked, {} backups",
        h.keys.len(),
        h.revoked.len(),
        h.backups.len()
    );
    let before: usize = [Phase::BeforeWrite, Phase::PendingWritten, Phase::Appending]
        .iter()
        .map(|p| by_phase.get(p).copied().unwrap_or(0))
        .sum();
    let inside = kills_inside_the_write_protocol(&by_phase);
    eprintln!(
        "  {before} kills before the commit point, {} after; {inside} inside the write protocol",
        serial_kills - before
    );
    eprintln!(
        "  CLI kills that landed: {serial_kills} serial + {concurrent_kills} concurrent = {} (need {CLI_MIN_KILLS})",
        serial_kills + concurrent_kills
    );
    // The test must actually exercise the protocol, not only start-up.
    assert!(
        inside > 0,
        "no kill landed inside the write protocol (seed {seed:#x}): {by_phase:?}"
    );
    assert!(
        serial_kills >= SERIAL_MIN_KILLS && concurrent_kills >= CONCURRENT_MIN_KILLS,
        "too few kills landed while the process ran (seed {seed:#x}): {serial_kills} serial (need {SERIAL_MIN_KILLS}), {concurrent_kills} concurrent (need {CONCURRENT_MIN_KILLS})"
    );
}

/// Kills that landed after the first write and before the process would have finished.
pub(super) fn kills_inside_the_write_protocol(by_phase: &BTreeMap<Phase, usize>) -> usize {
    [
        Phase::PendingWritten,
        Phase::Appending,
        Phase::Committed,
        Phase::Published,
    ]
    .iter()
    .map(|p| by_phase.get(p).copied().unwrap_or(0))
    .sum()
}
