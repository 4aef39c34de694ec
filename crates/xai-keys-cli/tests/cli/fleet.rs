//! A fleet of gateways on one etcd store: the real `xai-keys serve` (three of them, each with its
//! own `XAI_STATE_DIR`) and `xai-keys` CLI processes on a real 3-member etcd cluster on loopback
//! (`xai_keys_testkit::EtcdCluster`), driven while members are killed, stopped, paused and the
//! history compacted.
//!
//! * revocation through one gateway reaches the other two (watch) within a second; the
//!   propagation times are printed (p50 / p99 / max) and, when `XAI_FLEET_RESULTS` names a file,
//!   written there as JSON for the benchmark script;
//! * concurrent issues and revokes through all three gateways and the CLI lose nothing: store,
//!   every gateway's listing and the audit log agree exactly with what was acknowledged;
//! * the leader killed and restarted: traffic keeps flowing, no wrong answer, admin writes go
//!   through (after retries during the election);
//! * every member stopped: the staleness rule (`XAI_STORE_MAX_STALENESS`, `XAI_STORE_FAIL_STATIC`)
//!   and the recovery once the cluster is back;
//! * a gateway paused (SIGSTOP) through a revoke and a compaction catches up when continued;
//! * `migrate` from a file store: chains, verify, events, idempotence, refusal.
//!
//! Probes use a user route of the built-in policy proxied to a stand-in node answering 200: a
//! valid key gets 200, an unknown or revoked one 401. Every wait is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use xai_keys_testkit::EtcdCluster;

use crate::commands::error_json;
use crate::common::*;

/// A user route of the built-in policy, proxied to the stand-in node.
const ROUTE: &str = "/wallet/balance";
/// Answers of [`ROUTE`].
const VALID: u16 = 200;
const UNKNOWN: u16 = 401;
/// How long a change made through one gateway (or the CLI) may take to reach another.
const PROPAGATION: Duration = Duration::from_secs(1);
/// Bound of one HTTP exchange in this file (connect, write, read).
const IO: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// A non-panicking HTTP client (the stand-in node is `common::start_upstream`)

/// One exchange over a fresh connection: `(status, body as JSON or Null)`, or why it failed.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, Value), String> {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    exchange(addr, method, path, &headers, body, None, IO)
}

/// The status of [`ROUTE`] with `key`, or why the exchange failed.
fn probe(addr: SocketAddr, key: &str) -> Result<u16, String> {
    call(addr, "GET", ROUTE, Some(key), None).map(|(s, _)| s)
}

/// Polls [`ROUTE`] with `key` every 5 ms until it answers `want`, for at most `limit`; returns
/// how long that took (from the call).
fn wait_status(gw: &Gateway, key: &str, want: u16, limit: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let last = match probe(gw.addr, key) {
            Ok(s) if s == want => return started.elapsed(),
            Ok(s) => s.to_string(),
            Err(e) => e,
        };
        assert!(
            started.elapsed() < limit,
            "{what}: still {last} (want {want}) after {limit:?}; gateway stderr tail:\n{}",
            tail(&gw.stderr(), 20)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET /health`'s body (any status).
fn health(gw: &Gateway) -> Value {
    call(gw.addr, "GET", "/health", None, None)
        .unwrap_or_else(|e| panic!("GET /health on {}: {e}", gw.addr))
        .1
}

fn store_status(gw: &Gateway) -> String {
    health(gw)["store"]["status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// The value of the first sample of metric `name` (with or without labels) whose line
/// contains every string of `having`.
fn metric(text: &str, name: &str, having: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .find(|l| having.iter().all(|h| l.contains(h)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn metrics(gw: &Gateway) -> String {
    gw.get("/metrics", &[]).text()
}

/// Waits (at most 5 s) until the gateway's metrics count exactly `issues` and `revokes`
/// `api_key_audit` security events.
fn wait_audit_events(gw: &Gateway, issues: usize, revokes: usize, what: &str) {
    let counts = |m: &str| {
        (
            metric(m, "xai_security_events_total", &["action=\"issue\""]).unwrap_or(0.0) as usize,
            metric(m, "xai_security_events_total", &["action=\"revoke\""]).unwrap_or(0.0) as usize,
        )
    };
    let mut last = (0, 0);
    let done = poll(Duration::from_secs(5), || {
        last = counts(&metrics(gw));
        (last == (issues, revokes)).then_some(())
    });
    assert!(
        done.is_some(),
        "{what}: (issue, revoke) audit security events {last:?}, want {:?} (5 s after the last change)",
        (issues, revokes)
    );
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// xorshift64: reproducible choices without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// SIGSTOP / SIGCONT a process.
fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}: {st}");
}

// ---------------------------------------------------------------------------------------------
// A fleet: one cluster, a stand-in node, gateways, and the CLI on the same store

struct Fleet {
    /// Declared first: the gateways are killed before the cluster.
    gws: Vec<Gateway>,
    cluster: EtcdCluster,
    url: String,
    upstream: String,
    /// The CLI's own state dir (an etcd store's local files), and one per gateway.
    cli_state: TempDir,
    gw_states: Vec<TempDir>,
    /// An admin key, once [`Fleet::bootstrap`] made one.
    admin: String,
    admin_id: String,
}

impl Fleet {
    /// A fresh 3-member cluster, no key, no gateway.
    fn new(prefix: &str) -> Fleet {
        let cluster = EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
        let url = cluster.url(prefix);
        Fleet {
            gws: Vec::new(),
            cluster,
            url,
            upstream: format!("http://{}", start_upstream()),
            cli_state: tempfile::tempdir().unwrap(),
            gw_states: Vec::new(),
            admin: String::new(),
            admin_id: String::new(),
        }
    }

    /// [`Fleet::new`], an admin key issued with the CLI, and one gateway per `vars`.
    fn start(prefix: &str, vars: &[&[(&str, &str)]]) -> Fleet {
        let mut f = Fleet::new(prefix);
        f.bootstrap();
        for v in vars {
            f.add_gateway(v);
        }
        f
    }

    fn bootstrap(&mut self) {
        let v = self.ok(&["issue", "--scope", "admin", "--label", "adm"]);
        self.admin = v["api_key"].as_str().unwrap().to_string();
        self.admin_id = v["key_id"].as_str().unwrap().to_string();
    }

    fn add_gateway(&mut self, vars: &[(&str, &str)]) {
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().to_str().unwrap().to_string();
        let mut all: Vec<(&str, &str)> = vec![("XAI_STATE_DIR", &state_dir)];
        all.extend_from_slice(vars);
        let cmd = serve_cmd_on(
            Path::new(&self.url),
            &["--no-auto-bootstrap", "--upstream", &self.upstream],
            &all,
        );
        self.gws.push(Gateway::start(cmd));
        self.gw_states.push(state);
    }

    /// `xai-keys --store <etcd url> -o json …` with a clean environment and its own state dir.
    fn cli(&self) -> assert_cmd::Command {
        cli_on(&self.url, self.cli_state.path())
    }

    fn ok(&self, args: &[&str]) -> Value {
        let out = self.cli().args(args).output().unwrap();
        assert_exit(&out, 0, args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {args:?} is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Key ids in the store, via the CLI's `list`.
    fn cli_ids(&self) -> BTreeSet<String> {
        self.ok(&["list"])
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        self.ok(&["events", "--limit", "10000"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// Issues a user key through gateway `i`'s admin API: (plaintext, key_id).
    fn issue_via(&self, i: usize, label: &str) -> (String, String) {
        let body = json!({"scope": "user", "label": label}).to_string();
        let (st, v) = call(
            self.gws[i].addr,
            "POST",
            "/admin/api-keys",
            Some(&self.admin),
            Some(&body),
        )
        .unwrap_or_else(|e| panic!("issue through gateway {i}: {e}"));
        assert_eq!(st, 201, "issue through gateway {i}: {v}");
        (
            v["api_key"].as_str().unwrap().to_string(),
            v["key_id"].as_str().unwrap().to_string(),
        )
    }

    fn revoke_via(&self, i: usize, id: &str) {
        let (st, v) = call(
            self.gws[i].addr,
            "DELETE",
            &format!("/admin/api-keys/{id}"),
            Some(&self.admin),
            None,
        )
        .unwrap_or_else(|e| panic!("revoke through gateway {i}: {e}"));
        assert_eq!(st, 200, "revoke through gateway {i}: {v}");
    }

    /// Key ids gateway `i` lists.
    fn gw_ids(&self, i: usize) -> Result<BTreeSet<String>, String> {
        let (st, v) = call(
            self.gws[i].addr,
            "GET",
            "/admin/api-keys",
            Some(&self.admin),
            None,
        )?;
        if st != 200 {
            return Err(format!("HTTP {st}: {v}"));
        }
        Ok(v["store"]
            .as_object()
            .ok_or_else(|| format!("no store object: {v}"))?
            .keys()
            .cloned()
            .collect())
    }

    /// Waits until every gateway answers `want` for `key`.
    fn everywhere(&self, key: &str, want: u16, limit: Duration, what: &str) {
        for (i, g) in self.gws.iter().enumerate() {
            wait_status(g, key, want, limit, &format!("{what} (gateway {i})"));
        }
    }
}

fn cli_on(store: &str, state: &Path) -> assert_cmd::Command {
    let mut c = base_cmd();
    c.arg("--store")
        .arg(store)
        .args(["-o", "json"])
        .env("XAI_STATE_DIR", state);
    c
}

/// Index of the current leader among the cluster's endpoints.
fn leader(cluster: &EtcdCluster) -> usize {
    let out = cluster
        .etcdctl(&["endpoint", "status", "-w", "json"])
        .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let eps = cluster.endpoints();
    for s in v.as_array().unwrap() {
        let st = &s["Status"];
        if st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"] {
            let ep = s["Endpoint"].as_str().unwrap();
            if let Some(i) = eps.iter().position(|e| ep.ends_with(e.as_str())) {
                return i;
            }
        }
    }
    panic!("no leader in `etcdctl endpoint status`: {out}");
}

// ---------------------------------------------------------------------------------------------
// 1. Revocation propagation

#[test]
fn revocation_through_one_gateway_is_refused_by_the_other_two_within_a_second() {
    const KEYS: usize = 20;
    let f = Fleet::start("fleet1", &[&[], &[], &[]]);
    let keys: Vec<(String, String)> = (0..KEYS)
        .map(|i| f.issue_via(i % 3, &format!("k{i}")))
        .collect();
    for (k, _) in &keys {
        f.everywhere(k, VALID, PROPAGATION, "an issued key");
    }
    // Per gateway: (revoked through, gateway, propagation in seconds).
    let mut samples: Vec<(usize, usize, f64)> = Vec::new();
    // The revoking gateway's own: (key, seconds until refused, accepted after the ack).
    let mut own: Vec<(usize, f64, bool)> = Vec::new();
    for (n, (key, id)) in keys.iter().enumerate() {
        let via = n % 3;
        f.revoke_via(via, id);
        let acked = Instant::now();
        // The revoking gateway itself (it reloads before it answers: the first probe after
        // the acknowledgement must be refused), then the other two.
        let mut pending: Vec<usize> = vec![via, (via + 1) % 3, (via + 2) % 3];
        let mut first = true;
        while !pending.is_empty() {
            let mut still = Vec::new();
            for j in pending {
                match probe(f.gws[j].addr, key) {
                    Ok(UNKNOWN) if j == via => {
                        own.push((n, acked.elapsed().as_secs_f64(), !first));
                    }
                    Ok(UNKNOWN) => samples.push((via, j, acked.elapsed().as_secs_f64())),
                    Ok(VALID) => still.push(j),
                    other => panic!("gateway {j}: revoked key {id}: {other:?}"),
                }
                first &= j != via;
            }
            pending = still;
            assert!(
                acked.elapsed() < Duration::from_secs(5),
                "key {n} revoked through gateway {via}: gateways {pending:?} still accept it 5 s later"
            );
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    let mut all: Vec<f64> = samples.iter().map(|s| s.2).collect();
    all.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
    );
    let mut per_gateway = serde_json::Map::new();
    for j in 0..3 {
        let mut v: Vec<f64> = samples.iter().filter(|s| s.1 == j).map(|s| s.2).collect();
        v.sort_by(f64::total_cmp);
        per_gateway.insert(
            format!("gateway{j}"),
            json!({
                "samples": v.len(),
                "p50_ms": percentile(&v, 0.5) * 1e3,
                "max_ms": percentile(&v, 1.0) * 1e3,
            }),
        );
    }
    eprintln!(
        "fleet revocation propagation over {} samples: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.len(),
        p50 * 1e3,
        p99 * 1e3,
        max * 1e3
    );
    let late: Vec<_> = own.iter().filter(|o| o.2).collect();
    if let Some(path) = std::env::var_os("XAI_FLEET_RESULTS").filter(|p| !p.is_empty()) {
        let report = json!({
            "test": "revocation_through_one_gateway_is_refused_by_the_other_two_within_a_second",
            "gateways": 3,
            "etcd_members": 3,
            "keys": KEYS,
            "samples": all.len(),
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "max_ms": max * 1e3,
            "per_gateway": per_gateway,
            // Keys the revoking gateway itself still accepted after its 200 (should be 0).
            "revoking_gateway_accepted_after_ack": late.len(),
        });
        std::fs::write(&path, format!("{report:#}\n")).unwrap_or_else(|e| {
            panic!(
                "cannot write XAI_FLEET_RESULTS={}: {e}",
                Path::new(&path).display()
            )
        });
    }
    eprintln!(
        "fleet revocation: the revoking gateway itself accepted the key after the DELETE's 200 for {} of {KEYS} keys (key, refused after s): {late:?}",
        late.len()
    );
    assert_eq!(all.len(), 2 * KEYS);
    let slow: Vec<_> = samples
        .iter()
        .filter(|s| s.2 >= PROPAGATION.as_secs_f64())
        .collect();
    assert!(
        slow.is_empty(),
        "revocations seen after {PROPAGATION:?} (via, gateway, seconds): {slow:?}"
    );
    // An admin API change is in force on the gateway that made it when the response arrives
    // (as on the file store).
    assert!(
        late.is_empty(),
        "the revoking gateway still accepted {} of {KEYS} keys after answering 200 to their DELETE (key, refused after s): {late:?}",
        late.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrent writers

#[test]
fn concurrent_issues_and_revokes_through_all_three_lose_nothing() {
    const OPS: usize = 30;
    const CLI_ISSUES: usize = 5;
    let f = Fleet::start("fleet2", &[&[], &[], &[]]);
    let issued: Mutex<BTreeSet<String>> = Mutex::default();
    let revoked: Mutex<BTreeSet<String>> = Mutex::default();
    // Acknowledged, not yet revoked (nor being revoked): what a thread may revoke.
    let pool: Mutex<Vec<String>> = Mutex::default();
    let failures: Mutex<Vec<String>> = Mutex::default();
    std::thread::scope(|s| {
        for t in 0..3 {
            let (f, issued, revoked, pool, failures) = (&f, &issued, &revoked, &pool, &failures);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678));
                let addr = f.gws[t].addr;
                for n in 0..OPS {
                    let victim = if rng.below(100) < 40 {
                        let mut p = pool.lock().unwrap();
                        (!p.is_empty()).then(|| {
                            let i = rng.below(p.len());
                            p.swap_remove(i)
                        })
                    } else {
                        None
                    };
                    match victim {
                        Some(id) => {
                            match call(
                                addr,
                                "DELETE",
                                &format!("/admin/api-keys/{id}"),
                                Some(&f.admin),
                                None,
                            ) {
                                Ok((200, _)) => {
                                    revoked.lock().unwrap().insert(id);
                                }
                                other => failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("gateway {t} revoke {id}: {other:?}")),
                            }
                        }
                        None => {
                            let body =
                                json!({"scope": "user", "label": format!("g{t}-{n}")}).to_string();
                            match call(addr, "POST", "/admin/api-keys", Some(&f.admin), Some(&body))
                            {
                                Ok((201, v)) => {
                                    let id = v["key_id"].as_str().unwrap().to_string();
                                    issued.lock().unwrap().insert(id.clone());
                                    pool.lock().unwrap().push(id);
                                }
                                other => failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("gateway {t} issue: {other:?}")),
                            }
                        }
                    }
                }
            });
        }
        for c in 0..2 {
            let (f, issued, pool, failures) = (&f, &issued, &pool, &failures);
            s.spawn(move || {
                for n in 0..CLI_ISSUES {
                    let label = format!("cli{c}-{n}");
                    let out = f
                        .cli()
                        .args(["issue", "--scope", "user", "--label", &label])
                        .timeout(Duration::from_secs(30))
                        .output()
                        .unwrap();
                    if out.status.success() {
                        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                        let id = v["key_id"].as_str().unwrap().to_string();
                        issued.lock().unwrap().insert(id.clone());
                        pool.lock().unwrap().push(id);
                    } else {
                        failures.lock().unwrap().push(format!(
                            "cli issue {label}: {}: {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "writes refused on a healthy cluster:\n{}",
        failures.join("\n")
    );
    let issued = issued.into_inner().unwrap();
    let revoked = revoked.into_inner().unwrap();
    assert_eq!(issued.len(), 3 * OPS + 2 * CLI_ISSUES - revoked.len());
    assert!(
        revoked.len() >= 10,
        "too few revokes to mean anything: {}",
        revoked.len()
    );
    let mut want: BTreeSet<String> = issued.difference(&revoked).cloned().collect();
    want.insert(f.admin_id.clone());

    let cli = f.cli_ids();
    assert_eq!(
        cli,
        want,
        "the store (CLI list) differs: missing {:?}, extra {:?}",
        want.difference(&cli).collect::<Vec<_>>(),
        cli.difference(&want).collect::<Vec<_>>()
    );
    for i in 0..3 {
        let mut last = Err(String::from("not asked"));
        let same = poll(PROPAGATION * 2, || {
            last = f.gw_ids(i);
            (last.as_ref() == Ok(&want)).then_some(())
        });
        assert!(
            same.is_some(),
            "gateway {i} lists {last:?} 2 s after the last write, want {want:?}"
        );
    }
    let out = f.cli().arg("verify").output().unwrap();
    assert_exit(&out, 0, &["verify"]);

    let events = f.events();
    let mut per: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &events {
        let action = e["action"].as_str().unwrap_or("?").to_string();
        let id = e["key_id"].as_str().unwrap_or("").to_string();
        *per.entry((action, id)).or_default() += 1;
    }
    let mut want_issue = issued.clone();
    want_issue.insert(f.admin_id.clone());
    let mut want_events: BTreeMap<(String, String), usize> = BTreeMap::new();
    for id in &want_issue {
        want_events.insert(("issue".into(), id.clone()), 1);
    }
    for id in &revoked {
        want_events.insert(("revoke".into(), id.clone()), 1);
    }
    assert_eq!(
        per, want_events,
        "audit log (action, key_id) → count differs from what was acknowledged"
    );
    // Every gateway follows the shared audit log into its security events: one per line.
    for i in 0..3 {
        wait_audit_events(
            &f.gws[i],
            issued.len() + 1,
            revoked.len(),
            &format!("gateway {i}"),
        );
    }
    eprintln!(
        "fleet concurrent writers: {} issues ({} by CLI), {} revokes, {} keys left, {} audit lines",
        issued.len(),
        2 * CLI_ISSUES,
        revoked.len(),
        want.len(),
        events.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The leader killed and restarted under traffic

/// What the traffic threads must see for the key whose state changes during the outage.
#[derive(Default)]
struct Changes {
    /// The revoke of `doomed`: (first attempt sent, acknowledged).
    revoke_sent: Option<Instant>,
    revoke_acked: Option<Instant>,
    /// The key issued during the outage, and when the issue was acknowledged.
    fresh: Option<(String, Instant)>,
}

#[test]
fn a_member_killed_and_restarted_keeps_traffic_flowing() {
    let mut f = Fleet::start("fleet3", &[&[], &[], &[]]);
    let (steady, _) = f.issue_via(0, "steady");
    let (doomed, doomed_id) = f.issue_via(1, "doomed");
    let (gone, gone_id) = f.issue_via(2, "gone");
    f.revoke_via(0, &gone_id);
    f.everywhere(&steady, VALID, PROPAGATION, "steady key");
    f.everywhere(&doomed, VALID, PROPAGATION, "doomed key");
    f.everywhere(&gone, UNKNOWN, PROPAGATION, "revoked key");

    let changes: Mutex<Changes> = Mutex::default();
    let stop = AtomicBool::new(false);
    let requests = AtomicUsize::new(0);
    let wrong: Mutex<Vec<String>> = Mutex::default();
    let addrs: Vec<SocketAddr> = f.gws.iter().map(|g| g.addr).collect();
    let started = Instant::now();
    let mut retries = (0usize, 0usize);
    let mut killed = usize::MAX;
    let mut timeline = Vec::new();
    let mut refusals: Vec<String> = Vec::new();
    let short = |r: &Result<(u16, Value), String>| match r {
        Ok((st, v)) => format!(
            "{st} {}",
            v["code"].as_str().or(v["error"].as_str()).unwrap_or("")
        ),
        Err(e) => e.clone(),
    };
    std::thread::scope(|s| {
        for (g, &addr) in addrs.iter().enumerate() {
            let (changes, stop, requests, wrong) = (&changes, &stop, &requests, &wrong);
            let (steady, doomed, gone) = (&steady, &doomed, &gone);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let fresh = changes.lock().unwrap().fresh.clone();
                    let mut probes: Vec<&str> = vec![steady, doomed, gone];
                    if let Some((k, _)) = &fresh {
                        probes.push(k);
                    }
                    for key in probes {
                        let sent = Instant::now();
                        let got = probe(addr, key);
                        requests.fetch_add(1, Ordering::Relaxed);
                        let c = changes.lock().unwrap();
                        let allowed: &[u16] = if key == steady.as_str() {
                            &[VALID]
                        } else if key == gone.as_str() {
                            &[UNKNOWN]
                        } else if key == doomed.as_str() {
                            match (c.revoke_sent, c.revoke_acked) {
                                (None, _) => &[VALID],
                                (Some(_), Some(a)) if sent > a + PROPAGATION => &[UNKNOWN],
                                _ => &[VALID, UNKNOWN],
                            }
                        } else {
                            match &c.fresh {
                                Some((_, a)) if sent > *a + PROPAGATION => &[VALID],
                                _ => &[VALID, UNKNOWN],
                            }
                        };
                        match got {
                            Ok(st) if allowed.contains(&st) => {}
                            other => wrong.lock().unwrap().push(format!(
                                "gateway {g} at {:.3}s: {} → {other:?}, allowed {allowed:?}",
                                started.elapsed().as_secs_f64(),
                                if key == steady.as_str() {
                                    "steady"
                                } else if key == gone.as_str() {
                                    "revoked"
                                } else if key == doomed.as_str() {
                                    "doomed"
                                } else {
                                    "fresh"
                                }
                            )),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }

        std::thread::sleep(Duration::from_millis(300));
        killed = leader(&f.cluster);
        f.cluster.kill(killed);
        let t_kill = Instant::now();
        timeline.push(format!("killed leader m{killed}"));
        // A revoke through gateway 0 during the election: retried until acknowledged.
        changes.lock().unwrap().revoke_sent = Some(Instant::now());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = call(
                addrs[0],
                "DELETE",
                &format!("/admin/api-keys/{doomed_id}"),
                Some(&f.admin),
                None,
            );
            // A 404 after a failed attempt: that attempt committed after all.
            let done = matches!(r, Ok((200, _))) || (retries.0 > 0 && matches!(r, Ok((404, _))));
            if done {
                changes.lock().unwrap().revoke_acked = Some(Instant::now());
                timeline.push(format!(
                    "revoke acknowledged {:.3}s after the kill, {} retries ({r:?})",
                    t_kill.elapsed().as_secs_f64(),
                    retries.0
                ));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "revoke not acknowledged 15 s after the kill: {r:?}"
            );
            retries.0 += 1;
            refusals.push(short(&r));
            std::thread::sleep(Duration::from_millis(100));
        }
        // An issue through gateway 1.
        let body = json!({"scope": "user", "label": "during-outage"}).to_string();
        loop {
            let r = call(
                addrs[1],
                "POST",
                "/admin/api-keys",
                Some(&f.admin),
                Some(&body),
            );
            if let Ok((201, v)) = &r {
                let k = v["api_key"].as_str().unwrap().to_string();
                changes.lock().unwrap().fresh = Some((k, Instant::now()));
                timeline.push(format!(
                    "issue acknowledged {:.3}s after the kill, {} retries",
                    t_kill.elapsed().as_secs_f64(),
                    retries.1
                ));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "issue not acknowledged 15 s after the kill: {r:?}"
            );
            retries.1 += 1;
            refusals.push(short(&r));
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1500));
        f.cluster
            .restart(killed)
            .unwrap_or_else(|e| panic!("restart m{killed}: {e}"));
        timeline.push(format!(
            "m{killed} back {:.3}s after the kill",
            t_kill.elapsed().as_secs_f64()
        ));
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
    });
    let wrong = wrong.into_inner().unwrap();
    let n = requests.load(Ordering::Relaxed);
    eprintln!(
        "fleet leader kill: {n} probes, {} wrong, revoke retries {}, issue retries {}; {}; refused attempts: {refusals:?}",
        wrong.len(),
        retries.0,
        retries.1,
        timeline.join("; ")
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers of {n} (first 20):\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    assert!(n > 300, "too little traffic: {n} probes");
    // After the restart: every gateway healthy, and the restarted member holds the writes.
    for (i, g) in f.gws.iter().enumerate() {
        let ok = poll(Duration::from_secs(3), || {
            (store_status(g) == "ok").then_some(())
        });
        assert!(ok.is_some(), "gateway {i}: {}", health(g));
    }
    let fresh = changes.into_inner().unwrap().fresh.unwrap().0;
    f.everywhere(&fresh, VALID, PROPAGATION, "key issued during the outage");
    f.everywhere(
        &doomed,
        UNKNOWN,
        PROPAGATION,
        "key revoked during the outage",
    );
    let out = f.cli().arg("verify").output().unwrap();
    assert_exit(&out, 0, &["verify"]);
}

// ---------------------------------------------------------------------------------------------
// 4. The whole cluster down: the staleness rule

#[test]
fn all_members_stopped_then_the_staleness_rule() {
    let strict: &[(&str, &str)] = &[("XAI_STORE_MAX_STALENESS", "2s")];
    let fail_static: &[(&str, &str)] = &[
        ("XAI_STORE_MAX_STALENESS", "2s"),
        ("XAI_STORE_FAIL_STATIC", "1"),
    ];
    let mut f = Fleet::start("fleet4", &[strict, strict, fail_static]);
    let (key, _) = f.issue_via(0, "v");
    let (key2, id2) = f.issue_via(1, "v2");
    f.everywhere(&key, VALID, PROPAGATION, "issued key");
    f.everywhere(&key2, VALID, PROPAGATION, "issued key");
    for (i, g) in f.gws.iter().enumerate() {
        let h = health(g);
        assert_eq!(h["store"]["status"], "ok", "gateway {i}: {h}");
        let want = if i == 2 { Value::Null } else { json!(2.0) };
        assert_eq!(h["store"]["max_staleness_secs"], want, "gateway {i}: {h}");
    }

    f.cluster.stop_all();
    let t0 = Instant::now();
    // At first every gateway serves its last good copy.
    for (i, g) in f.gws.iter().enumerate() {
        assert_eq!(
            probe(g.addr, &key),
            Ok(VALID),
            "gateway {i} right after stop_all"
        );
    }
    let first_round = t0.elapsed();
    assert!(
        first_round < Duration::from_secs(1),
        "the first probes took {first_round:?}"
    );
    // Then /health says stale, while keys still work.
    let stale_at = poll(Duration::from_millis(1500), || {
        (store_status(&f.gws[0]) != "ok").then(|| t0.elapsed())
    })
    .unwrap_or_else(|| panic!("still ok 1.5 s after stop_all: {}", health(&f.gws[0])));
    let h = health(&f.gws[0]);
    if t0.elapsed() < Duration::from_millis(1600) {
        assert_eq!(h["store"]["status"], "stale", "{h}");
        assert!(h["store"]["stale_for_secs"].as_f64().is_some(), "{h}");
        assert_eq!(
            probe(f.gws[0].addr, &key),
            Ok(VALID),
            "stale but not past 2 s"
        );
    }
    eprintln!("fleet stop_all: gateway 0 stale after {stale_at:?}");
    // Past 2 s: the strict gateways refuse every key, the fail-static one serves on.
    for i in 0..2 {
        let took = wait_status(
            &f.gws[i],
            &key,
            UNKNOWN,
            Duration::from_secs(4),
            "strict gateway",
        );
        let since = t0.elapsed();
        assert!(
            since > Duration::from_millis(1500),
            "gateway {i} refused {since:?} after stop_all, before the 2 s rule ({took:?})"
        );
        let h = health(&f.gws[i]);
        assert_eq!(h["store"]["status"], "stale_refusing", "gateway {i}: {h}");
        assert!(h["store"]["stale_for_secs"].as_f64().unwrap() > 2.0, "{h}");
        assert_eq!(h["store"]["max_staleness_secs"], json!(2.0), "{h}");
        let m = metrics(&f.gws[i]);
        assert_eq!(
            metric(&m, "xai_keys_store_stale_refusing", &[]),
            Some(1.0),
            "{m}"
        );
        assert_eq!(metric(&m, "xai_keys_store_stale", &[]), Some(1.0), "{m}");
        assert!(
            metric(&m, "xai_keys_store_staleness_seconds", &[]).is_some_and(|s| s > 2.0),
            "{m}"
        );
    }
    assert_eq!(probe(f.gws[2].addr, &key), Ok(VALID), "fail-static gateway");
    let h = health(&f.gws[2]);
    assert_eq!(h["store"]["status"], "stale", "fail-static gateway: {h}");
    assert!(h["store"]["stale_for_secs"].as_f64().unwrap() > 2.0, "{h}");
    assert_eq!(
        metric(&metrics(&f.gws[2]), "xai_keys_store_stale_refusing", &[]),
        Some(0.0)
    );

    f.cluster
        .restart_all()
        .unwrap_or_else(|e| panic!("restart_all: {e}"));
    let t1 = Instant::now();
    for (i, g) in f.gws.iter().enumerate() {
        wait_status(
            g,
            &key,
            VALID,
            Duration::from_secs(5),
            &format!("gateway {i} after restart_all"),
        );
        let ok = poll(Duration::from_secs(5), || {
            (store_status(g) == "ok").then_some(())
        });
        assert!(ok.is_some(), "gateway {i} after restart_all: {}", health(g));
    }
    eprintln!(
        "fleet restart_all: every gateway accepting and ok after {:?}",
        t1.elapsed()
    );
    // Does /health stay ok once it is ok? (Recorded, not asserted: a short relapse to
    // `stale` while the client reconnects was seen.)
    let mut seen: Vec<(usize, String, f64)> = Vec::new();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(1500) {
        for (i, g) in f.gws.iter().enumerate() {
            let st = store_status(g);
            if st != "ok" {
                seen.push((i, st, t1.elapsed().as_secs_f64()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "fleet restart_all: non-ok /health samples after the first ok (gateway, status, s after restart_all): {seen:?}"
    );
    // The security events of the whole episode, counted in each gateway's metrics.
    for (i, g) in f.gws.iter().enumerate() {
        // The event pipeline notices the recovery on its next pass.
        let recovered = "event_type=\"store_recovered\"";
        let seen = poll(Duration::from_secs(5), || {
            let m = metrics(g);
            (metric(&m, "xai_security_events_total", &[recovered]).unwrap_or(0.0) >= 1.0)
                .then_some(())
        });
        let m = metrics(g);
        assert!(
            seen.is_some(),
            "gateway {i}: no store_recovered event 5 s after it was ok again\n{m}"
        );
        let unstale = poll(Duration::from_secs(3), || {
            (metric(&metrics(g), "xai_keys_store_stale", &[]) == Some(0.0)).then_some(())
        });
        assert!(
            unstale.is_some(),
            "gateway {i}: xai_keys_store_stale still 1 3 s after ok\n{m}"
        );
        let count = |ev: &str| {
            let label = format!("event_type=\"{ev}\"");
            metric(&m, "xai_security_events_total", &[&label]).unwrap_or(0.0)
        };
        assert!(
            count("store_stale") >= 1.0,
            "gateway {i}: no store_stale event\n{m}"
        );
        assert!(
            count("store_recovered") >= 1.0,
            "gateway {i}: no store_recovered event\n{m}"
        );
        if i < 2 {
            let label = "event_type=\"store_stale_refusing\"";
            assert!(
                metric(&m, "xai_security_events_critical_total", &[label]).unwrap_or(0.0) >= 1.0,
                "gateway {i}: no critical store_stale_refusing event\n{m}"
            );
        } else {
            assert_eq!(
                count("store_stale_refusing"),
                0.0,
                "fail-static gateway\n{m}"
            );
        }
    }
    // Caught up: a revocation right after the restart is enforced everywhere.
    f.revoke_via(0, &id2);
    let acked = Instant::now();
    for (i, g) in f.gws.iter().enumerate() {
        wait_status(
            g,
            &key2,
            UNKNOWN,
            PROPAGATION,
            &format!("gateway {i}: revoke after restart"),
        );
    }
    // The audit lines reach every gateway's security events once the cluster is back: the
    // admin key, two issues, one revoke.
    for (i, g) in f.gws.iter().enumerate() {
        wait_audit_events(g, 3, 1, &format!("gateway {i} after restart_all"));
    }
    eprintln!(
        "fleet restart_all: revoke enforced everywhere {:?} after its ack",
        acked.elapsed()
    );
    let out = f.cli().arg("verify").output().unwrap();
    assert_exit(&out, 0, &["verify"]);
}

// ---------------------------------------------------------------------------------------------
// 5. A paused gateway through a compaction

#[test]
fn a_gateway_paused_through_a_compaction_catches_up_by_full_reload() {
    let mut f = Fleet::start("fleet5", &[&[], &[], &[]]);
    let (doomed, doomed_id) = f.issue_via(0, "doomed");
    let (steady, _) = f.issue_via(0, "steady");
    f.everywhere(&doomed, VALID, PROPAGATION, "issued key");
    f.everywhere(&steady, VALID, PROPAGATION, "issued key");

    let pid = f.gws[2].pid();
    signal(pid, "STOP");
    // Continued whatever happens (the guard's SIGKILL would end a stopped gateway too, but
    // only at the end of the test).
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(self.0.to_string())
                .status();
        }
    }
    let cont = Cont(pid);
    let t_pause = Instant::now();
    // Every member restarted while the gateway is stopped: its watch stream is gone, so once
    // continued it must watch again from its last revision, which the compaction below
    // removes from the history: only a full reload can catch up.
    f.cluster.stop_all();
    f.cluster
        .restart_all()
        .unwrap_or_else(|e| panic!("restart_all: {e}"));
    for i in 0..2 {
        let ok = poll(Duration::from_secs(5), || {
            (store_status(&f.gws[i]) == "ok").then_some(())
        });
        assert!(
            ok.is_some(),
            "gateway {i} not ok after restart_all: {}",
            health(&f.gws[i])
        );
    }
    f.revoke_via(0, &doomed_id);
    let mut later = Vec::new();
    for n in 0..5 {
        later.push(f.issue_via(1, &format!("later{n}")));
    }
    f.revoke_via(1, &later[0].1);
    let rev = f
        .cluster
        .compact()
        .unwrap_or_else(|e| panic!("compact: {e}"));
    // Past the mirror's 1.5 s "stale" mark too.
    std::thread::sleep(Duration::from_millis(2000).saturating_sub(t_pause.elapsed()));
    let paused_for = t_pause.elapsed();
    drop(cont);
    let paused = &f.gws[2];
    let took = wait_status(
        paused,
        &doomed,
        UNKNOWN,
        Duration::from_secs(2),
        "paused gateway after SIGCONT: revoked key",
    );
    wait_status(
        paused,
        &later[0].0,
        UNKNOWN,
        Duration::from_secs(2),
        "paused gateway: revoked later key",
    );
    for (k, _) in &later[1..] {
        wait_status(
            paused,
            k,
            VALID,
            Duration::from_secs(2),
            "paused gateway: key issued while paused",
        );
    }
    assert_eq!(probe(paused.addr, &steady), Ok(VALID));
    let ok = poll(Duration::from_secs(3), || {
        (store_status(paused) == "ok").then_some(())
    });
    assert!(
        ok.is_some(),
        "paused gateway not ok after SIGCONT: {}",
        health(paused)
    );
    let reload = paused.wait_for_log("the full reload after the compaction", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("compacted") && m.contains("reloading in full"))
    });
    eprintln!(
        "fleet pause: paused {paused_for:?}, compacted at revision {rev}; the revoked key refused {took:?} after SIGCONT; {reload}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. migrate

/// A file store in a temp dir, driven by the CLI.
struct FileEnv {
    _dir: TempDir,
    store: std::path::PathBuf,
}

impl FileEnv {
    fn new() -> FileEnv {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("keys").join("api_keys.json");
        FileEnv { _dir: dir, store }
    }

    fn log(&self) -> std::path::PathBuf {
        let mut s = self.store.clone().into_os_string();
        s.push(".log");
        s.into()
    }

    fn ok(&self, args: &[&str]) -> Value {
        let out = base_cmd()
            .arg("--store")
            .arg(&self.store)
            .args(["-o", "json"])
            .args(args)
            .output()
            .unwrap();
        assert_exit(&out, 0, args);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn issue(&self, scope: &str, label: &str) -> (String, String) {
        let v = self.ok(&["issue", "--scope", scope, "--label", label]);
        (
            v["api_key"].as_str().unwrap().to_string(),
            v["key_id"].as_str().unwrap().to_string(),
        )
    }
}

#[test]
fn migration_from_a_file_store_with_chain_verification() {
    // A file store of its own (whatever backend the rest of the suite runs on).
    let env = FileEnv::new();
    let (a, _) = env.issue("user", "a");
    let (b, b_id) = env.issue("user", "b");
    let (c, c_id) = env.issue("user", "c");
    let (d, _) = env.issue("operator", "d");
    env.ok(&["revoke", &b_id]);
    let rotated = env.ok(&["rotate", &c_id]);
    let c2 = rotated["api_key"].as_str().unwrap().to_string();
    let file_events = env.ok(&["events", "--limit", "10000"]);
    let file_events = file_events.as_array().unwrap();
    let file_lines = read(&env.log()).lines().filter(|l| !l.is_empty()).count();
    let file_ids: BTreeSet<String> = env
        .ok(&["list"])
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();

    let mut f = Fleet::new("migrated");
    let state = tempfile::tempdir().unwrap();
    let migrate = |to: &str| {
        cli_on(to, state.path())
            .args(["migrate", "--from"])
            .arg(&env.store)
            .args(["--to", to])
            .output()
            .unwrap()
    };
    let out = migrate(&f.url);
    assert_exit(&out, 0, &["migrate"]);
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["already_migrated"], false, "{rep}");
    assert_eq!(rep["keys"], file_ids.len(), "{rep}");
    assert_eq!(rep["log_lines"], file_lines, "{rep}");
    assert_eq!(rep["copied_lines"], file_lines, "{rep}");
    assert!(
        rep["file_chain"].as_str().unwrap().starts_with("ok"),
        "{rep}"
    );
    assert!(
        rep["etcd_chain"].as_str().unwrap().starts_with("ok"),
        "{rep}"
    );

    let out = f.cli().arg("verify").output().unwrap();
    assert_exit(&out, 0, &["verify"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = report.to_string();
    assert!(text.contains("audit chain"), "{report}");
    assert!(text.contains("store matches log"), "{report}");
    assert_eq!(f.cli_ids(), file_ids);

    let etcd_events = f.events();
    assert_eq!(
        etcd_events.len(),
        file_events.len() + 1,
        "etcd events: {etcd_events:#?}"
    );
    let migrate_line = etcd_events
        .iter()
        .find(|e| e["action"] == "migrate")
        .unwrap_or_else(|| panic!("no migrate event: {etcd_events:#?}"));
    let without: Vec<&Value> = etcd_events
        .iter()
        .filter(|e| e["action"] != "migrate")
        .collect();
    let file_refs: Vec<&Value> = file_events.iter().collect();
    assert_eq!(
        without, file_refs,
        "the file's events, as etcd reports them"
    );
    // The migrate line is the newest.
    let newest = etcd_events
        .iter()
        .max_by(|x, y| {
            x["timestamp"]
                .as_f64()
                .partial_cmp(&y["timestamp"].as_f64())
                .unwrap()
        })
        .unwrap();
    assert_eq!(newest["action"], "migrate", "{migrate_line}");

    // A gateway on the migrated store.
    f.add_gateway(&[]);
    let gw = &f.gws[0];
    for (k, want, what) in [
        (&a, VALID, "a"),
        (&d, VALID, "d (operator)"),
        (&c2, VALID, "c's replacement"),
        (&b, UNKNOWN, "revoked b"),
        (&c, UNKNOWN, "rotated-out c"),
    ] {
        let got = probe(gw.addr, k);
        let ok = match want {
            // An operator key may be refused by the user route's policy (403), but not as unknown.
            VALID if what.starts_with('d') => matches!(got, Ok(200 | 403)),
            _ => got == Ok(want),
        };
        assert!(ok, "migrated key {what}: {got:?}, want {want}");
    }

    // Again: already migrated, nothing written.
    let before = f.events().len();
    let out = migrate(&f.url);
    assert_exit(&out, 0, &["migrate", "again"]);
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["already_migrated"], true, "{rep}");
    assert_eq!(rep["copied_lines"], 0, "{rep}");
    assert_eq!(rep["changes_since"], 0, "{rep}");
    assert_eq!(f.events().len(), before);

    // Into a prefix holding another store: refused, nothing written.
    let other = f.cluster.url("other");
    let other_cli = || cli_on(&other, f.cli_state.path());
    let out = other_cli()
        .args(["issue", "--scope", "user", "--label", "native"])
        .output()
        .unwrap();
    assert_exit(&out, 0, &["issue on other"]);
    let dump = |p: &str| {
        f.cluster
            .etcdctl(&["get", "--prefix", p, "-w", "json"])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let kvs = |p: &str| -> Value {
        let v: Value = serde_json::from_str(&dump(p)).unwrap();
        v["kvs"].clone()
    };
    let other_before = kvs("other");
    let out = migrate(&other);
    assert_exit(&out, 1, &["migrate into another store"]);
    let err = error_json(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(err["error"], "migration_refused", "{err}");
    assert_eq!(
        kvs("other"),
        other_before,
        "a refused migration wrote to etcd"
    );
    let out = other_cli().arg("verify").output().unwrap();
    assert_exit(&out, 0, &["verify other"]);
}

/// Three gateways started at once on a new, empty etcd store, each allowed to generate the
/// first admin key: the emptiness check is inside the commit, so exactly one does.
#[test]
fn gateways_starting_together_on_a_new_store_generate_one_admin_key() {
    let f = Fleet::new("fresh");
    let states: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let handles: Vec<_> = states
        .iter()
        .map(|s| {
            let cmd = serve_cmd_on(
                Path::new(&f.url),
                &["--upstream", &f.upstream],
                &[("XAI_STATE_DIR", s.path().to_str().unwrap())],
            );
            std::thread::spawn(move || Gateway::start(cmd))
        })
        .collect();
    let gws: Vec<Gateway> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ids = f.cli_ids();
    assert_eq!(ids.len(), 1, "one admin key for the fleet, got {ids:?}");
    let generated = gws
        .iter()
        .filter(|g| g.stderr().contains("so an admin key was generated"))
        .count();
    assert_eq!(generated, 1, "exactly one gateway prints a generated key");
    let issues = f.events().iter().filter(|e| e["action"] == "issue").count();
    assert_eq!(issues, 1, "one audited issue");
}
