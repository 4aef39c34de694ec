//! Gateway benchmark for issue 3: the per-request authentication decision
//! (`credentials::extract` + `auth::decide`) against a 10,000-key `index::KeyIndex`, next to
//! the irreducible cost measured in the same run: the SHA-256 of the presented key alone (every
//! lookup by hash must compute it). Results read as "decision ÷ SHA-256".
//!
//! Run: `cargo bench -p xai-keys-server --bench auth` (or `bench/run-gateway`, which also runs
//! the load tests). After criterion's own report a summary table (median and p95 of the
//! per-sample mean time per decision, ratio to the baseline, target) is printed and, when
//! `XAI_KEYS_BENCH_SUMMARY` names a file, written there as Markdown (and as JSON to the same
//! name plus `.json`).
//!
//! Cases (each a realistic request's header map: host, user agent, accept, content type and
//! the credential):
//! * valid user key in `X-API-Key` on a `user` route (`POST /send`) → allowed;
//! * unknown key (a well-formed `xai_` key with a valid checksum that is not in the store: the
//!   full path, hash and miss) → 401 `unknown_key`;
//! * malformed key (our prefix, bad checksum: refused before any hashing) → 401 `malformed_key`;
//! * admin route (`POST /admin/api-keys`) with an admin key in `X-Admin-Token` → allowed.
//!
//! Informational rows: the same valid-user decision plus path normalisation and the route
//! policy lookup (everything the middleware does before the proxy), and building a 10,000-key
//! index from a key map (what a reload pays after the store load).
//!
//! How the figures are taken: `iter_custom` times a loop of `iters` decisions; each of
//! criterion's samples gives a mean time per decision, and the summary reports the median and
//! p95 over the samples of the measurement phase (warm-up discarded). Creating and dropping the
//! `Credentials` and the `Outcome` are inside the timed region (the middleware pays both).
//! Without `--bench` (e.g. `cargo test --benches`) criterion runs each routine once as a smoke
//! test.

// Benchmark code: a fixture that cannot be built should stop the run loudly, so unwrap/expect
// and panic are allowed here (and only here, not in the server's code).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use criterion::{Criterion, SamplingMode};
use sha2::{Digest, Sha256};
use xai_keys_core::policy::DAY;
use xai_keys_core::record::{KeyMap, KeyRecord, Origin};
use xai_keys_core::{PlainToken, Scope};
use xai_keys_server::auth::{self, Denial, Outcome};
use xai_keys_server::credentials;
use xai_keys_server::index::KeyIndex;
use xai_keys_server::policy::{Access, RoutePolicy, normalize_path};

/// Keys in the benchmark index.
const INDEX_KEYS: usize = 10_000;
/// The target of issue 3: one decision under 2 µs.
const TARGET_NS: f64 = 2_000.0;

// ---------------------------------------------------------------------------------------------
// Recording: per-sample mean ns per operation, by benchmark id.

fn recordings() -> &'static Mutex<BTreeMap<String, Vec<f64>>> {
    static R: OnceLock<Mutex<BTreeMap<String, Vec<f64>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn record(id: &str, per_op_ns: f64) {
    recordings()
        .lock()
        .unwrap()
        .entry(id.to_string())
        .or_default()
        .push(per_op_ns);
}

/// Registers `group/id` timing `op` in a loop; `samples` is criterion's sample size.
fn bench_loop<T>(
    c: &mut Criterion,
    group: &str,
    id: &str,
    samples: usize,
    measure: Duration,
    flat: bool,
    mut op: impl FnMut() -> T,
) {
    let full = format!("{group}/{id}");
    let mut g = c.benchmark_group(group);
    g.sample_size(samples)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measure);
    if flat {
        g.sampling_mode(SamplingMode::Flat);
    }
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(op());
            }
            let el = t.elapsed();
            record(&full, el.as_nanos() as f64 / iters.max(1) as f64);
            el
        })
    });
    g.finish();
    // Keep only the measurement phase: the last `samples` routine calls (criterion runs the
    // warm-up through the same routine first).
    let mut r = recordings().lock().unwrap();
    if let Some(v) = r.get_mut(&full)
        && v.len() > samples
    {
        let drop = v.len() - samples;
        v.drain(..drop);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture

struct Fixture {
    index: KeyIndex,
    keys: KeyMap,
    user: PlainToken,
    admin: PlainToken,
    unknown: PlainToken,
    malformed: String,
}

const SCOPES: [Scope; 4] = [Scope::User, Scope::Operator, Scope::Auditor, Scope::Admin];

fn record_of(i: usize, scope: Scope, now: f64) -> KeyRecord {
    let created = now - 3.0 * DAY + i as f64;
    KeyRecord {
        label: format!("node-{i:06}-rpc"),
        created,
        scope,
        expires_at: Some(created + 90.0 * DAY),
        permanent: false,
        disabled: false,
        origin: Some(Origin::Generated),
        replaced_by: None,
        extra: None,
        hydration: Default::default(),
    }
}

fn fixture(now: f64) -> Fixture {
    let mut keys = KeyMap::new();
    for i in 0..INDEX_KEYS - 2 {
        let t = PlainToken::generate().unwrap();
        keys.insert(t.key_id(), record_of(i, SCOPES[i % 4], now));
    }
    let user = PlainToken::generate().unwrap();
    let admin = PlainToken::generate().unwrap();
    keys.insert(user.key_id(), record_of(INDEX_KEYS, Scope::User, now));
    keys.insert(admin.key_id(), record_of(INDEX_KEYS + 1, Scope::Admin, now));
    assert_eq!(keys.len(), INDEX_KEYS);
    // Our prefix and length, last checksum character changed: refused before any lookup.
    let mut malformed = user.expose().to_string();
    let last = malformed.pop().unwrap();
    malformed.push(if last == 'a' { 'b' } else { 'a' });
    Fixture {
        index: KeyIndex::from_keys(&keys),
        keys,
        user,
        admin,
        unknown: PlainToken::generate().unwrap(),
        malformed,
    }
}

/// A request's headers as a client (curl, a wallet) sends them, plus the credential.
fn headers(cred_header: &'static str, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    h.insert("user-agent", HeaderValue::from_static("xai-wallet/1.4.2"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("content-length", HeaderValue::from_static("96"));
    h.insert(
        HeaderName::from_static(cred_header),
        HeaderValue::from_str(value).unwrap(),
    );
    h
}

/// The measured operation: what the middleware does per request to authenticate it.
#[inline(always)]
fn decision(index: &KeyIndex, access: Access, method: &Method, h: &HeaderMap, now: f64) -> Outcome {
    let creds = credentials::extract(h, None, false).unwrap();
    auth::decide(index, access, method, &creds, true, now)
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

struct Case {
    id: &'static str,
    what: &'static str,
    access: Access,
    method: Method,
    headers: HeaderMap,
    expect: &'static str,
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Allowed(Some(_)) => "allowed",
        Outcome::Allowed(None) => "allowed_anonymous",
        Outcome::Denied(d) => d.reason(),
    }
}

fn cases(f: &Fixture) -> Vec<Case> {
    vec![
        Case {
            id: "valid_user_key",
            what: "valid user key (X-API-Key), user route POST /send → allowed",
            access: Access::User,
            method: Method::POST,
            headers: headers("x-api-key", f.user.expose()),
            expect: "allowed",
        },
        Case {
            id: "unknown_key",
            what: "unknown key (well-formed, not in the store) → 401 unknown_key",
            access: Access::User,
            method: Method::POST,
            headers: headers("x-api-key", f.unknown.expose()),
            expect: "unknown_key",
        },
        Case {
            id: "malformed_key",
            what: "malformed key (xai_ prefix, bad checksum) → 401 malformed_key",
            access: Access::User,
            method: Method::POST,
            headers: headers("x-api-key", &f.malformed),
            expect: "malformed_key",
        },
        Case {
            id: "admin_token",
            what: "admin route POST /admin/api-keys, admin key in X-Admin-Token → allowed",
            access: Access::Admin,
            method: Method::POST,
            headers: headers("x-admin-token", f.admin.expose()),
            expect: "allowed",
        },
    ]
}

fn main() {
    let now = xai_keys_core::now_epoch();
    let t = Instant::now();
    let f = fixture(now);
    eprintln!(
        "built a {}-key index in {:.1} ms",
        f.index.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let cases = cases(&f);
    for c in &cases {
        let o = decision(&f.index, c.access, &c.method, &c.headers, now);
        assert_eq!(outcome_name(&o), c.expect, "{}", c.id);
        if let Outcome::Denied(d) = &o {
            assert!(matches!(d, Denial::Unknown(_) | Denial::Malformed(_)));
        }
    }

    let mut c = Criterion::default().configure_from_args();
    let secs = Duration::from_secs(3);

    // The irreducible cost: SHA-256 of the presented key (53 bytes).
    let presented = f.user.expose().to_string();
    bench_loop(&mut c, "auth", "sha256_of_key", 60, secs, false, || {
        Sha256::digest(black_box(presented.as_bytes()))
    });
    for case in &cases {
        bench_loop(&mut c, "auth", case.id, 60, secs, false, || {
            decision(
                black_box(&f.index),
                case.access,
                &case.method,
                black_box(&case.headers),
                now,
            )
        });
    }

    // Everything the middleware does before proxying a user request that the auth decision
    // does not cover: path normalisation and the route policy lookup.
    let policy = RoutePolicy::builtin();
    let user_headers = headers("x-api-key", f.user.expose());
    assert_eq!(
        policy
            .classify(&Method::POST, &normalize_path("/send").unwrap())
            .access,
        Access::User
    );
    bench_loop(
        &mut c,
        "auth",
        "valid_user_key_with_route_policy",
        60,
        secs,
        false,
        || {
            let norm = normalize_path(black_box("/api/v2/send")).unwrap();
            let route = policy.classify(&Method::POST, &norm);
            decision(&f.index, route.access, &Method::POST, &user_headers, now)
        },
    );

    // The metrics path of the hot path (issue 4): the same decision plus what the middleware
    // records per request with metrics on (`Metrics::auth`: a labelled counter and the
    // latency histogram). With XAI_METRICS=0 the call returns at once.
    let metrics_on = xai_keys_server::metrics::Metrics::with_enabled(true);
    let metrics_off = xai_keys_server::metrics::Metrics::with_enabled(false);
    for (id, m) in [
        ("valid_user_key_metrics_on", &metrics_on),
        ("valid_user_key_metrics_off", &metrics_off),
    ] {
        bench_loop(&mut c, "auth", id, 60, secs, false, || {
            let t = Instant::now();
            let o = decision(&f.index, Access::User, &Method::POST, &user_headers, now);
            m.auth("allowed", "user", "user", t.elapsed().as_secs_f64());
            o
        });
    }

    // What a reload pays after loading the store: building the index.
    bench_loop(
        &mut c,
        "index",
        "from_keys_10000",
        10,
        Duration::from_secs(3),
        true,
        || KeyIndex::from_keys(black_box(&f.keys)),
    );

    c.final_summary();
    let s = summary(&cases);
    let bench =
        std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--test");
    let title = if bench {
        "xai-keys gateway auth benchmark summary"
    } else {
        "xai-keys gateway auth benchmark: smoke test (single iterations, not figures)"
    };
    println!("\n## {title}\n\n{s}");
    if let Some(p) = std::env::var_os("XAI_KEYS_BENCH_SUMMARY") {
        std::fs::write(&p, &s).unwrap();
        // The same figures as JSON beside it, for scripts (bench/run-gateway).
        let mut json = std::path::PathBuf::from(p).into_os_string();
        json.push(".json");
        std::fs::write(json, summary_json()).unwrap();
    }
}

fn summary_json() -> String {
    let ids: Vec<String> = recordings().lock().unwrap().keys().cloned().collect();
    let mut m = serde_json::Map::new();
    for id in ids {
        if let Some(s) = stat(&id) {
            m.insert(
                id,
                serde_json::json!({"median_ns": s.median, "p95_ns": s.p95, "samples": s.n}),
            );
        }
    }
    serde_json::Value::Object(m).to_string()
}

// ---------------------------------------------------------------------------------------------
// Summary

struct Stat {
    median: f64,
    p95: f64,
    n: usize,
}

fn stat(id: &str) -> Option<Stat> {
    let r = recordings().lock().unwrap();
    let mut v = r.get(id)?.clone();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some(Stat {
        median: pick(0.5),
        p95: pick(0.95),
        n: v.len(),
    })
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn summary(cases: &[Case]) -> String {
    let base = stat("auth/sha256_of_key");
    let mut out = String::from(
        "| measurement | median / p95 (per decision) | samples | ÷ SHA-256 of the key (median) | target |\n|---|---|---|---|---|\n",
    );
    let mut row = |what: &str, id: &str, target: bool| {
        let Some(s) = stat(id) else {
            out.push_str(&format!("| {what} | — | — | — | |\n"));
            return;
        };
        let ratio = match &base {
            Some(b) if id.starts_with("auth/") => format!("{:.1}×", s.median / b.median),
            _ => "—".to_string(),
        };
        let verdict = if !target {
            String::new()
        } else if s.median < TARGET_NS {
            "< 2 µs ✔".to_string()
        } else {
            "< 2 µs ✘ MISSED".to_string()
        };
        out.push_str(&format!(
            "| {what} | **{}** / {} | {} | {ratio} | {verdict} |\n",
            fmt_ns(s.median),
            fmt_ns(s.p95),
            s.n
        ));
    };
    row(
        "baseline: SHA-256 of the presented key alone (53 bytes)",
        "auth/sha256_of_key",
        false,
    );
    for c in cases {
        row(
            &format!("decision: {}", c.what),
            &format!("auth/{}", c.id),
            true,
        );
    }
    row(
        "valid user key, plus path normalisation and route-policy lookup (`/api/v2/send`)",
        "auth/valid_user_key_with_route_policy",
        false,
    );
    row(
        "valid user key + the per-request metrics (`Metrics::auth`), metrics on",
        "auth/valid_user_key_metrics_on",
        false,
    );
    row(
        "valid user key + the per-request metrics call, metrics off (`XAI_METRICS=0`)",
        "auth/valid_user_key_metrics_off",
        false,
    );
    row(
        "build a 10,000-key index (`KeyIndex::from_keys`, per reload)",
        "index/from_keys_10000",
        false,
    );
    out.push_str(&format!(
        "\nIndex: {INDEX_KEYS} keys. \"decision\" = `credentials::extract` on the request's \
         header map + `auth::decide` (creating and dropping the credentials and the outcome \
         included). Median and p95 are over criterion's samples (each a mean over a loop of \
         decisions); the ratio column divides by the same-run SHA-256 median.\n"
    ));
    out
}
