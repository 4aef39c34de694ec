//! Store benchmarks for issue 2: issue latency, store load time and the `events` tail read, each
//! next to a baseline measured in the same run (the Python reference's algorithm re-implemented
//! here with the same parse/render functions), so results read as ratios.
//!
//! Run: `cargo bench -p xai-keys-core --bench store` (or `bench/run-store`, which also prints the
//! summary and times the CLI with hyperfine). A summary table (per-operation median and p95,
//! baseline, ratio) is printed after criterion's own report and, when `XAI_KEYS_BENCH_SUMMARY`
//! names a file, written there as Markdown.
//!
//! How the figures are taken: every benchmark uses `iter_custom` and times each operation on
//! its own (setup such as resetting a store is outside the timed region). The per-operation
//! durations of criterion's measurement phase (its last `sample_size` routine calls; warm-up
//! calls are discarded) give the median and p95 in the summary.
//!
//! Issued keys accumulate across iterations; a fixture is reset (the pre-rendered base store
//! written back, the audit log removed, a fresh `FileStore`, two untimed priming issues that
//! parse the store into the cache and fill the render cache, as in a long-running process)
//! whenever it has grown by 1% (at least 20 keys), so a store "of N keys" always holds between
//! N+2 and N+2+max(N/100, 20) keys. Dropping results (maps, snapshots) is not timed.
//!
//! Environment: `XAI_KEYS_BENCH_TIME_SCALE` — multiplies every warm-up and measurement time
//! (default 1); `XAI_KEYS_BENCH_DIR` — where fixtures go (default: a temporary directory, removed
//! at the end); `XAI_KEYS_BENCH_KEEP=1` keeps CLI fixtures there (`cli/`) for hyperfine.
//! Without `--bench`, or with `--test` (criterion's test mode, e.g. `cargo test --benches`),
//! sizes shrink so the run is a quick smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use serde_json::Value;
use xai_keys_core::audit::{self, Actor, AuditDraft, AuditEvent, EventQuery};
use xai_keys_core::ops::{IssueRequest, KeyManager};
use xai_keys_core::policy::{DAY, TtlPolicy, TtlRequest};
use xai_keys_core::record::{self, Hydration, KeyMap, KeyRecord, LoadContext, Origin};
use xai_keys_core::store::{Durability, FileStore, FileStoreOptions, Integrity, KeyStore};
use xai_keys_core::{KeyId, PlainToken, Scope};

// ---------------------------------------------------------------------------------------------
// Run mode, sizes, per-operation recording

struct Mode {
    /// Real benchmark run (`--bench`), else a quick smoke test.
    bench: bool,
    /// A plain-substring filter from the command line, to skip unneeded fixture setup.
    filter: Option<String>,
}

fn mode() -> &'static Mode {
    static M: OnceLock<Mode> = OnceLock::new();
    M.get_or_init(|| {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // criterion options that take a value
        const WITH_VALUE: &[&str] = &[
            "--save-baseline",
            "--baseline",
            "--baseline-lenient",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
            "--color",
            "--format",
            "--output-format",
            "--plotting-backend",
        ];
        let mut filter = None;
        let mut skip = false;
        for a in &args {
            if skip {
                skip = false;
            } else if WITH_VALUE.contains(&a.as_str()) {
                skip = true;
            } else if !a.starts_with('-') && filter.is_none() {
                filter = Some(a.clone());
            }
        }
        Mode {
            bench: args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test"),
            filter,
        }
    })
}

/// Whether any of `ids` can match the command-line filter, so that fixtures nobody will use are
/// not built. Understands the simple regexes one types: `a|b` alternatives of plain substrings,
/// each optionally ending with `$`.
fn wanted(ids: &[String]) -> bool {
    let Some(f) = &mode().filter else {
        return true;
    };
    f.split('|').any(|alt| {
        ids.iter().any(|id| match alt.strip_suffix('$') {
            Some(suffix) => id.ends_with(suffix),
            None => id.contains(alt),
        })
    })
}

fn store_sizes() -> &'static [usize] {
    if mode().bench {
        &[1_000, 10_000, 100_000]
    } else {
        &[100, 1_000]
    }
}

fn big_log_lines() -> usize {
    if mode().bench { 1_000_000 } else { 2_000 }
}

const SMALL_LOG_LINES: usize = 100;
const EVENT_LIMIT: usize = 50;

/// Per-operation durations (ns) of each routine call, by benchmark id.
#[derive(Default)]
struct Recording {
    sample_size: usize,
    calls: Vec<Vec<f64>>,
}

fn recordings() -> &'static Mutex<BTreeMap<String, Recording>> {
    static R: OnceLock<Mutex<BTreeMap<String, Recording>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn record_call(id: &str, sample_size: usize, ops: Vec<f64>) {
    let mut r = recordings().lock().unwrap();
    let e = r.entry(id.to_string()).or_default();
    e.sample_size = sample_size;
    e.calls.push(ops);
}

/// Benchmark settings for one id.
#[derive(Clone, Copy)]
struct Cfg {
    samples: usize,
    warm_up: Duration,
    measure: Duration,
    flat: bool,
}

impl Cfg {
    fn quick() -> Cfg {
        Cfg {
            samples: 30,
            warm_up: Duration::from_millis(500),
            measure: Duration::from_secs(2),
            flat: false,
        }
    }
    /// For operations of tens to hundreds of milliseconds.
    fn heavy(measure_secs: u64) -> Cfg {
        Cfg {
            samples: 10,
            warm_up: Duration::from_millis(500),
            measure: Duration::from_secs(measure_secs),
            flat: true,
        }
    }
    /// Warm-up and measurement times multiplied by `XAI_KEYS_BENCH_TIME_SCALE` (default 1;
    /// `bench/run` uses 0.25 for its quick smoke run).
    fn scaled(self) -> Cfg {
        let k = std::env::var("XAI_KEYS_BENCH_TIME_SCALE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|k| k.is_finite() && *k > 0.0)
            .unwrap_or(1.0);
        Cfg {
            warm_up: self.warm_up.mul_f64(k),
            measure: self.measure.mul_f64(k),
            ..self
        }
    }
    fn for_size(n: usize) -> Cfg {
        match n {
            0..=2_000 => Cfg::quick(),
            2_001..=20_000 => Cfg {
                samples: 20,
                measure: Duration::from_secs(3),
                ..Cfg::quick()
            },
            _ => Cfg::heavy(4),
        }
    }
}

/// Registers `group/id`: each `op()` is timed on its own; `setup()` (untimed) runs before each
/// and the value `op` returns is dropped after the clock stops.
fn bench_ops<T>(
    g: &mut Group<'_>,
    id: &str,
    cfg: Cfg,
    mut setup: impl FnMut(),
    mut op: impl FnMut() -> T,
) {
    let cfg = if mode().bench {
        cfg.scaled()
    } else {
        Cfg {
            samples: 10,
            warm_up: Duration::from_millis(50),
            measure: Duration::from_millis(200),
            flat: true,
        }
    };
    let full_id = format!("{}/{id}", g.name);
    g.g.sample_size(cfg.samples)
        .warm_up_time(cfg.warm_up)
        .measurement_time(cfg.measure)
        .sampling_mode(if cfg.flat {
            SamplingMode::Flat
        } else {
            SamplingMode::Auto
        });
    g.g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut ops = Vec::with_capacity(usize::try_from(iters).unwrap_or(0));
            for _ in 0..iters {
                setup();
                let t = Instant::now();
                let out = black_box(op());
                let d = t.elapsed();
                drop(out);
                total += d;
                ops.push(d.as_nanos() as f64);
            }
            record_call(&full_id, cfg.samples, ops);
            total
        })
    });
}

/// A criterion group that knows its name (for the per-operation recordings).
struct Group<'a> {
    g: BenchmarkGroup<'a, WallTime>,
    name: String,
}

impl Group<'_> {
    fn finish(self) {
        self.g.finish();
    }
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> Group<'a> {
    Group {
        g: c.benchmark_group(name),
        name: name.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

struct BenchDir {
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

fn bench_dir() -> &'static BenchDir {
    static D: OnceLock<BenchDir> = OnceLock::new();
    D.get_or_init(|| match std::env::var_os("XAI_KEYS_BENCH_DIR") {
        Some(p) => {
            let root = PathBuf::from(p);
            fs::create_dir_all(&root).unwrap();
            BenchDir { root, _tmp: None }
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            BenchDir {
                root: t.path().to_path_buf(),
                _tmp: Some(t),
            }
        }
    })
}

/// A fresh, empty owner-only directory under the bench root.
fn fresh_dir(name: &str) -> PathBuf {
    let d = bench_dir().root.join(name);
    let _ = fs::remove_dir_all(&d);
    fs::DirBuilder::new()
        .recursive(true)
        .create(&d)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
        })
        .unwrap();
    d
}

fn write_owner_only(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

const SCOPES: [Scope; 4] = [Scope::User, Scope::Operator, Scope::Auditor, Scope::Admin];

/// A realistic record: label, a `time.time()`-like creation stamp, 90-day expiry.
fn sample_record(i: usize, now: f64) -> KeyRecord {
    let created = now - 3.0 * DAY + (i as f64) * 1.618_034;
    KeyRecord {
        label: format!("node-{:06}-rpc", i),
        created,
        scope: SCOPES[i % 4],
        expires_at: Some(created + 90.0 * DAY),
        permanent: false,
        disabled: false,
        origin: Some(Origin::Generated),
        replaced_by: None,
        extra: None,
        hydration: Hydration::default(),
    }
}

fn sample_keys(n: usize, now: f64) -> KeyMap {
    (0..n)
        .map(|i| {
            (
                KeyId::of_plaintext(&format!("bench-key-{i}")),
                sample_record(i, now),
            )
        })
        .collect()
}

/// Rendered stores by size, built once.
fn base_store(n: usize) -> &'static [u8] {
    static S: OnceLock<Mutex<BTreeMap<usize, &'static [u8]>>> = OnceLock::new();
    let m = S.get_or_init(Default::default);
    let mut m = m.lock().unwrap();
    m.entry(n).or_insert_with(|| {
        let bytes = record::render_store(&sample_keys(n, xai_keys_core::now_epoch()));
        Box::leak(bytes.into_boxed_slice())
    })
}

/// `verify --adopt`: records the fixture store as the audited state.
fn adopt(store: &FileStore) {
    let opts = xai_keys_core::store::VerifyOptions { adopt: true };
    let rep =
        xai_keys_core::store::KeyStore::verify(store, &actor(), xai_keys_core::now_epoch(), opts)
            .unwrap();
    assert!(rep.ok, "{rep:?}");
}

fn actor() -> Actor {
    Actor::Cli {
        user: "bench".into(),
        host: "bench-host".into(),
    }
}

fn opts(durability: Durability) -> FileStoreOptions {
    FileStoreOptions {
        durability,
        ..FileStoreOptions::default()
    }
}

fn ctx(now: f64) -> LoadContext {
    LoadContext {
        now,
        default_ttl_secs: TtlPolicy::default().default_ttl_secs,
    }
}

fn issue_request() -> IssueRequest {
    IssueRequest {
        scope: Scope::User,
        label: "bench-issued".into(),
        ttl: TtlRequest::Default,
        secret: None,
    }
}

/// A store of `n` keys that is put back to `n` (+1) keys whenever it has grown by 1%.
struct GrowingStore {
    path: PathBuf,
    n: usize,
    durability: Durability,
    store: Option<FileStore>,
    grown: usize,
    cap: usize,
}

impl GrowingStore {
    fn new(name: &str, n: usize, durability: Durability) -> Self {
        let dir = fresh_dir(name);
        let mut s = GrowingStore {
            path: dir.join("api_keys.json"),
            n,
            durability,
            store: None,
            grown: 0,
            cap: (n / 100).max(20),
        };
        s.reset();
        s
    }

    /// Writes the base store back, drops the log, and primes a fresh `FileStore`.
    fn reset(&mut self) {
        self.store = None;
        write_owner_only(&self.path, base_store(self.n));
        for suffix in [".log", ".pending"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = fs::remove_file(PathBuf::from(p));
        }
        let store = FileStore::new(&self.path, opts(self.durability)).unwrap();
        // A store of xai-keys records without its log is refused (an erased log); anchor the
        // fixture the audited way, as an operator would after migrating a store.
        adopt(&store);
        // Priming issues: the first (the log is empty, so no anchor check) parses the store into
        // the cache, the second fills the render cache, as a long-running process has them.
        for _ in 0..2 {
            KeyManager::new(&store, TtlPolicy::default())
                .issue(issue_request(), &actor(), xai_keys_core::now_epoch())
                .unwrap();
        }
        self.store = Some(store);
        self.grown = 0;
    }

    fn before_op(&mut self) {
        if self.grown >= self.cap {
            self.reset();
        }
        self.grown += 1;
    }

    fn store(&self) -> &FileStore {
        self.store.as_ref().unwrap()
    }
}

/// The reference's issue: read + parse the whole store, insert, render the whole store, write a
/// temp file, rename, append an audit line. No lock, no cache, no fsync (as the reference).
struct ReferenceIssue {
    path: PathBuf,
    tmp: PathBuf,
    log: PathBuf,
    n: usize,
    grown: usize,
    cap: usize,
}

impl ReferenceIssue {
    fn new(name: &str, n: usize) -> Self {
        let dir = fresh_dir(name);
        let path = dir.join("api_keys.json");
        let mut s = ReferenceIssue {
            tmp: dir.join("api_keys.json.tmp"),
            log: dir.join("api_keys.json.log"),
            path,
            n,
            grown: 0,
            cap: (n / 100).max(20),
        };
        s.reset();
        s
    }

    fn reset(&mut self) {
        write_owner_only(&self.path, base_store(self.n));
        let _ = fs::remove_file(&self.log);
        self.grown = 0;
    }

    fn before_op(&mut self) {
        if self.grown >= self.cap {
            self.reset();
        }
        self.grown += 1;
    }

    fn issue(&self) {
        let now = xai_keys_core::now_epoch();
        let bytes = fs::read(&self.path).unwrap();
        let mut keys = record::parse_store(&bytes, &self.path, ctx(now)).unwrap();
        let token = PlainToken::generate().unwrap();
        let id = token.key_id();
        let created = now;
        let expires_at = created + 90.0 * DAY;
        keys.insert(
            id.clone(),
            KeyRecord {
                label: "bench-issued".into(),
                created,
                scope: Scope::User,
                expires_at: Some(expires_at),
                permanent: false,
                disabled: false,
                origin: None,
                replaced_by: None,
                extra: None,
                hydration: Hydration::default(),
            },
        );
        let out = record::render_store(&keys);
        write_owner_only(&self.tmp, &out);
        fs::rename(&self.tmp, &self.path).unwrap();
        let line = serde_json::json!({
            "timestamp": now,
            "action": "issue",
            "key_id": id.as_str(),
            "label": "bench-issued",
            "scope": "user",
            "expires_at": expires_at,
            "permanent": false,
        });
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

/// Writes a chained audit log of `lines` issue events (the real format, via `build_line`).
fn write_log(path: &Path, lines: usize) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let actor = actor();
    let store_sha = "5f1c3a8e9b0d2c4f6a7e8d9c0b1a2f3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a";
    let mut prev = audit::GENESIS.to_string();
    let t0 = xai_keys_core::now_epoch() - lines as f64;
    for i in 0..lines {
        let id = KeyId::of_plaintext(&format!("log-key-{i}"));
        let created = t0 + i as f64 + 0.123_456;
        let d = AuditDraft::new("issue", Some(id.as_str()))
            .with("label", format!("node-{:06}-rpc", i))
            .with("scope", SCOPES[i % 4].as_str())
            .with("expires_at", created + 90.0 * DAY)
            .with("permanent", false)
            .with("origin", "generated");
        let (line, h) = audit::build_line(created, &d, &actor, store_sha, &prev);
        w.write_all(line.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
        prev = h;
    }
    w.flush().unwrap();
}

/// The reference's `events --limit N`: read the whole log, parse every line (skipping blank or
/// unparseable ones), keep the last N. (Kinder than the reference, which keeps every parsed line
/// in memory before slicing.)
fn reference_events(path: &Path, limit: usize) -> Vec<AuditEvent> {
    let r = BufReader::with_capacity(1 << 16, File::open(path).unwrap());
    let mut last: VecDeque<AuditEvent> = VecDeque::with_capacity(limit + 1);
    for line in r.split(b'\n') {
        let line = line.unwrap();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Ok(obj) = serde_json::from_slice::<AuditEvent>(&line) {
            if last.len() == limit {
                last.pop_front();
            }
            last.push_back(obj);
        }
    }
    last.into()
}

/// The reference's load: a generic JSON parse into dictionaries, then a hydration pass.
fn reference_load(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let Value::Object(m) = &v else {
        panic!("not an object")
    };
    let complete = m
        .values()
        .filter(|rec| {
            rec.as_object().is_some_and(|r| {
                ["created", "scope", "expires_at", "permanent"]
                    .iter()
                    .all(|k| r.contains_key(*k))
            })
        })
        .count();
    assert_eq!(complete, m.len());
    v
}

fn size_label(n: usize) -> String {
    n.to_string()
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

fn bench_issue(c: &mut Criterion) {
    let sizes = store_sizes();
    for (gname, durability) in [
        ("issue_excl_fsync", Some(Durability::UnsafeNoSync)),
        ("issue_reference_algo", None),
        ("issue_with_fsync", Some(Durability::Full)),
    ] {
        let ids: Vec<String> = sizes
            .iter()
            .map(|n| format!("{gname}/{}", size_label(*n)))
            .collect();
        if !wanted(&ids) {
            continue;
        }
        let mut g = group(c, gname);
        for &n in sizes {
            if !wanted(&[format!("{gname}/{}", size_label(n))]) {
                continue;
            }
            let mut cfg = Cfg::for_size(n);
            if durability.is_none() && n >= 10_000 {
                cfg = Cfg::heavy(if n >= 100_000 { 5 } else { 3 });
            }
            match durability {
                Some(d) => {
                    let fixture = std::cell::RefCell::new(GrowingStore::new(gname, n, d));
                    let actor = actor();
                    bench_ops(
                        &mut g,
                        &size_label(n),
                        cfg,
                        || fixture.borrow_mut().before_op(),
                        || {
                            let f = fixture.borrow();
                            KeyManager::new(f.store(), TtlPolicy::default())
                                .issue(issue_request(), &actor, xai_keys_core::now_epoch())
                                .unwrap()
                        },
                    );
                }
                None => {
                    let fixture = std::cell::RefCell::new(ReferenceIssue::new(gname, n));
                    bench_ops(
                        &mut g,
                        &size_label(n),
                        cfg,
                        || fixture.borrow_mut().before_op(),
                        || fixture.borrow().issue(),
                    );
                }
            }
        }
        g.finish();
    }
}

fn bench_load(c: &mut Criterion) {
    let sizes = store_sizes();
    let groups = ["load_filestore", "load_parse_store", "load_reference_algo"];
    let ids: Vec<String> = groups
        .iter()
        .flat_map(|g| sizes.iter().map(move |n| format!("{g}/{}", size_label(*n))))
        .collect();
    if !wanted(&ids) {
        return;
    }
    let dir = fresh_dir("load");
    let paths: BTreeMap<usize, PathBuf> = sizes
        .iter()
        .map(|&n| {
            let p = dir.join(format!("store-{n}.json"));
            write_owner_only(&p, base_store(n));
            // Anchored in its log, as every store xai-keys writes is. Without the log, a store
            // of xai-keys records reads as an erased log: a warning path that looks again under
            // the writers' lock (a second parse), which is not what a CLI command pays.
            let store = FileStore::new(&p, opts(Durability::Full)).unwrap();
            adopt(&store);
            let snap = store.load(xai_keys_core::now_epoch()).unwrap();
            assert_eq!(snap.integrity, Integrity::Recorded, "{:?}", snap.warnings);
            (n, p)
        })
        .collect();
    let cfg_for = |n: usize| {
        if n >= 100_000 {
            Cfg::heavy(3)
        } else {
            Cfg::for_size(n)
        }
    };

    // Our load as a CLI process does it: a fresh FileStore (empty cache), `load(now)`.
    let mut g = group(c, "load_filestore");
    for &n in sizes {
        let p = &paths[&n];
        bench_ops(
            &mut g,
            &size_label(n),
            cfg_for(n),
            || {},
            || {
                let s = FileStore::new(p, opts(Durability::Full)).unwrap();
                let snap = s.load(xai_keys_core::now_epoch()).unwrap();
                assert!(snap.keys.len() == n && snap.integrity == Integrity::Recorded);
                (s, snap)
            },
        );
    }
    g.finish();

    // The parser alone, on bytes already in memory.
    let mut g = group(c, "load_parse_store");
    for &n in sizes {
        let bytes = base_store(n);
        let p = &paths[&n];
        bench_ops(
            &mut g,
            &size_label(n),
            cfg_for(n),
            || {},
            || record::parse_store(bytes, p, ctx(xai_keys_core::now_epoch())).unwrap(),
        );
    }
    g.finish();

    let mut g = group(c, "load_reference_algo");
    for &n in sizes {
        let p = &paths[&n];
        bench_ops(
            &mut g,
            &size_label(n),
            cfg_for(n),
            || {},
            || reference_load(p),
        );
    }
    g.finish();
}

fn bench_events(c: &mut Criterion) {
    let ids: Vec<String> = [
        "events_tail/1M_lines",
        "events_tail/100_lines",
        "events_reference_algo/1M_lines",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !wanted(&ids) {
        return;
    }
    let dir = fresh_dir("events");
    let big = dir.join("big.json.log");
    let small = dir.join("small.json.log");
    let t = Instant::now();
    write_log(&big, big_log_lines());
    write_log(&small, SMALL_LOG_LINES);
    eprintln!(
        "generated a {}-line audit log ({} MB) in {:.1} s",
        big_log_lines(),
        fs::metadata(&big).unwrap().len() / 1_000_000,
        t.elapsed().as_secs_f64()
    );
    let q = EventQuery {
        limit: EVENT_LIMIT,
        ..Default::default()
    };
    let mut g = group(c, "events_tail");
    for (id, path) in [("1M_lines", &big), ("100_lines", &small)] {
        bench_ops(
            &mut g,
            id,
            Cfg::quick(),
            || {},
            || {
                let page = audit::read_events(path, &q).unwrap();
                assert_eq!(page.events.len(), EVENT_LIMIT);
                page
            },
        );
    }
    g.finish();

    let mut g = group(c, "events_reference_algo");
    bench_ops(
        &mut g,
        "1M_lines",
        Cfg::heavy(5),
        || {},
        || {
            let ev = reference_events(&big, EVENT_LIMIT);
            assert_eq!(ev.len(), EVENT_LIMIT);
            ev
        },
    );
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// CLI fixtures for hyperfine (bench/run-store)

fn write_cli_fixtures() {
    if std::env::var_os("XAI_KEYS_BENCH_KEEP").is_none() || !mode().bench {
        return;
    }
    let root = bench_dir().root.join("cli");
    for (name, keys, log_lines) in [
        ("events-1m", 10usize, big_log_lines()),
        ("events-100", 10, SMALL_LOG_LINES),
        ("issue-10k", 10_000, 0),
    ] {
        let dir = fresh_dir(&format!("cli/{name}"));
        let store = dir.join("api_keys.json");
        write_owner_only(&store, base_store(keys));
        if log_lines == 0 {
            adopt(&FileStore::new(&store, opts(Durability::Full)).unwrap());
        }
        if log_lines > 0 {
            let log = dir.join("api_keys.json.log");
            let events_big = bench_dir().root.join("events/big.json.log");
            let events_small = bench_dir().root.join("events/small.json.log");
            let src = if log_lines == SMALL_LOG_LINES {
                events_small
            } else {
                events_big
            };
            // Reuse the benchmark's log when it exists (rename: no 450 MB copy).
            if fs::rename(&src, &log).is_err() {
                write_log(&log, log_lines);
            }
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&log, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    eprintln!("CLI fixtures kept in {}", root.display());
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
    let rec = r.get(id)?;
    let keep = rec.sample_size.min(rec.calls.len());
    let mut all: Vec<f64> = rec.calls[rec.calls.len() - keep..]
        .iter()
        .flatten()
        .copied()
        .collect();
    if all.is_empty() {
        return None;
    }
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((all.len() - 1) as f64 * q).round() as usize;
        all[i]
    };
    Some(Stat {
        median: pick(0.5),
        p95: pick(0.95),
        n: all.len(),
    })
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn fmt_stat(s: &Option<Stat>) -> (String, String) {
    match s {
        Some(s) => (
            format!("{} / {}", fmt_ns(s.median), fmt_ns(s.p95)),
            s.n.to_string(),
        ),
        None => ("—".into(), "—".into()),
    }
}

fn summary() -> String {
    let mut out = String::new();
    let mut row = |what: &str, ours: &str, base: Option<&str>, target: &str| {
        let o = stat(ours);
        let b = base.and_then(stat);
        let (os, on) = fmt_stat(&o);
        let (bs, _) = fmt_stat(&b);
        let ratio = match (&o, &b) {
            (Some(o), Some(b)) => format!("{:.1}×", b.median / o.median),
            _ => "—".into(),
        };
        let verdict = match (&o, target_ns(target)) {
            (Some(o), Some(t)) if o.median < t => format!("{target} ✔"),
            (Some(_), Some(_)) => format!("{target} ✘ MISSED"),
            _ => target.to_string(),
        };
        out.push_str(&format!(
            "| {what} | {os} | {on} | {bs} | {ratio} | {verdict} |\n"
        ));
    };
    let header = "| measurement | ours: median / p95 | ops | baseline: median / p95 | baseline ÷ ours (median) | target (median) |\n|---|---|---|---|---|---|\n";
    let sizes = store_sizes();
    for &n in sizes {
        let t = if n == 10_000 { "< 5 ms" } else { "" };
        row(
            &format!("issue, {n} keys, excluding fsync"),
            &format!("issue_excl_fsync/{n}"),
            Some(&format!("issue_reference_algo/{n}")),
            t,
        );
    }
    for &n in sizes {
        row(
            &format!("issue, {n} keys, with fsync (Durability::Full)"),
            &format!("issue_with_fsync/{n}"),
            Some(&format!("issue_reference_algo/{n}")),
            "",
        );
    }
    for &n in sizes {
        let t = if n == 100_000 { "< 100 ms" } else { "" };
        row(
            &format!("load, {n} keys (fresh FileStore)"),
            &format!("load_filestore/{n}"),
            Some(&format!("load_reference_algo/{n}")),
            t,
        );
    }
    for &n in sizes {
        row(
            &format!("parse_store alone, {n} keys"),
            &format!("load_parse_store/{n}"),
            Some(&format!("load_reference_algo/{n}")),
            "",
        );
    }
    row(
        &format!("events --limit 50, {} lines", big_log_lines()),
        "events_tail/1M_lines",
        Some("events_reference_algo/1M_lines"),
        "< 20 ms",
    );
    row(
        "events --limit 50, 100 lines",
        "events_tail/100_lines",
        None,
        "",
    );
    row(
        "events --limit 50: 1M-line log vs 100-line log",
        "events_tail/1M_lines",
        Some("events_tail/100_lines"),
        "",
    );
    format!(
        "{header}{out}\nops = operations timed individually in criterion's measurement phase. \
         Baselines: issue = reference algorithm (read+parse whole store, insert, render whole \
         store, temp file + rename, append log line; no lock, cache or fsync); load = read + \
         generic serde_json::Value parse + hydration pass; events = read and parse every line, \
         keep the last 50. For the 1M-vs-100 row the \"baseline\" column is the 100-line tail read \
         (a ratio near 1× means \"as fast\").\n"
    )
}

fn target_ns(t: &str) -> Option<f64> {
    let t = t.strip_prefix("< ")?;
    let (v, unit) = t.split_once(' ')?;
    let v: f64 = v.parse().ok()?;
    Some(match unit {
        "ms" => v * 1e6,
        "µs" => v * 1e3,
        "s" => v * 1e9,
        _ => return None,
    })
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_issue(&mut c);
    bench_load(&mut c);
    bench_events(&mut c);
    c.final_summary();
    write_cli_fixtures();
    let s = summary();
    println!("\n## xai-keys store benchmark summary\n\n{s}");
    if let Some(p) = std::env::var_os("XAI_KEYS_BENCH_SUMMARY") {
        fs::write(p, &s).unwrap();
    }
    // The directory lives in a static (never dropped): remove a temporary one explicitly.
    let d = bench_dir();
    if d._tmp.is_some() {
        let _ = fs::remove_dir_all(&d.root);
    }
}
