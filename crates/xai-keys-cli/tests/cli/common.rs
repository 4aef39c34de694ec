//! Shared helpers: a temporary store, a command builder with a clean environment, JSON runs,
//! and for `serve` a gateway process guard plus a tiny blocking HTTP/1.1 client.
//!
//! The suite runs against the file backend by default. With `XAI_TEST_BACKEND=etcd` every
//! [`Env`] is instead a fresh key prefix on one etcd cluster (a single loopback member started
//! once per test binary); tests about file mechanics opt out with [`Env::file_only`].
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;
use xai_keys_testkit::EtcdCluster;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_xai-keys");

/// Selects the backend every [`Env`] uses: `etcd`, or anything else (or unset) for files.
pub const BACKEND_VAR: &str = "XAI_TEST_BACKEND";

/// Whether this run is against etcd (`XAI_TEST_BACKEND=etcd`).
pub fn etcd_backend() -> bool {
    std::env::var(BACKEND_VAR).is_ok_and(|v| v.trim().eq_ignore_ascii_case("etcd"))
}

/// The one etcd cluster of an etcd run, shared by every test of the binary.
struct SharedEtcd {
    /// `etcd://127.0.0.1:PORT`, without a prefix.
    base: String,
    /// Fallback `XAI_STATE_DIR` for commands built without an [`Env`] ([`base_cmd`]).
    state: TempDir,
    /// Never dropped: statics are not dropped at exit, so the members are killed by `watchdog`.
    cluster: EtcdCluster,
    /// The watchdog, with the write end of its stdin: held (never waited for) for the life of
    /// this process.
    _watchdog: Child,
}

static ETCD: OnceLock<SharedEtcd> = OnceLock::new();
static PREFIX_SEQ: AtomicU64 = AtomicU64::new(0);

/// The shared cluster, started on first use.
///
/// A static is never dropped, so the cluster's `Drop` (which kills the members) never runs. A
/// watchdog process (`sh`) is started with its stdin on a pipe whose write end only this process
/// holds (close-on-exec, so no child inherits it): however the test binary ends (exit, panic,
/// SIGKILL), the kernel closes the pipe, the watchdog's `read` returns, and it SIGKILLs the
/// members (by pid) and removes their temp dir.
fn shared_etcd() -> &'static SharedEtcd {
    ETCD.get_or_init(|| {
        let cluster = EtcdCluster::start(1).unwrap_or_else(|e| panic!("{BACKEND_VAR}=etcd: {e}"));
        let dir = cluster
            .dir()
            .expect("a running cluster has its dir")
            .to_path_buf();
        let pids = pids_with_arg_under(&dir);
        assert!(
            !pids.is_empty(),
            "no etcd process found with a --data-dir under {}",
            dir.display()
        );
        let watchdog = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"read -r _ ; kill -9 "$@" 2>/dev/null; sleep 0.2; rm -rf "$0""#)
            .arg(&dir)
            .args(pids.iter().map(u32::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the etcd watchdog (sh)");
        let base = format!("etcd://{}", cluster.endpoints().join(","));
        SharedEtcd {
            base,
            state: tempfile::tempdir().unwrap(),
            cluster,
            _watchdog: watchdog,
        }
    })
}

/// Pids of processes with a command-line argument under `dir` (the etcd members' data dirs).
fn pids_with_arg_under(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg.starts_with(needle))
        {
            pids.push(pid);
        }
    }
    pids
}

/// A private directory holding one store: a file store under it, or on etcd a fresh prefix
/// (the directory then is the commands' `XAI_STATE_DIR`).
pub struct Env {
    pub dir: TempDir,
    /// The file's path, or `etcd://127.0.0.1:PORT/t<unique>`.
    pub store: PathBuf,
}

impl Env {
    /// A fresh store on the backend of this run.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = if etcd_backend() {
            let n = PREFIX_SEQ.fetch_add(1, Ordering::Relaxed);
            PathBuf::from(format!(
                "{}/t{}-{n}",
                shared_etcd().base,
                std::process::id()
            ))
        } else {
            dir.path().join("keys").join("api_keys.json")
        };
        Env { dir, store }
    }

    /// A fresh file store, or `None` on etcd: for tests about file mechanics (permissions,
    /// torn writes, crash recovery of files, disk full, files edited under a process), which
    /// have no etcd counterpart. Use as `let Some(env) = Env::file_only() else { return };`.
    pub fn file_only() -> Option<Self> {
        if etcd_backend() {
            None
        } else {
            Some(Env::new())
        }
    }

    /// Whether this store is on etcd.
    pub fn is_etcd(&self) -> bool {
        self.store.to_string_lossy().starts_with("etcd://")
    }

    /// The audit log: `<store>.log` for files; on etcd its name in messages,
    /// `etcd://…/prefix/log/` (not a file: read events with `xai-keys events`).
    pub fn log(&self) -> PathBuf {
        let mut s = self.store.clone().into_os_string();
        if self.is_etcd() {
            s.push("/log/");
        } else {
            s.push(".log");
        }
        PathBuf::from(s)
    }

    /// How messages name the store: its path, or its URL.
    pub fn label(&self) -> String {
        self.store.display().to_string()
    }

    /// `xai-keys --store <store> -o json …` with every XAI_* variable removed (on etcd,
    /// `XAI_STATE_DIR` is this Env's directory).
    pub fn cmd(&self) -> Command {
        let mut c = base_cmd();
        if self.is_etcd() {
            c.env("XAI_STATE_DIR", self.dir.path());
        }
        c.arg("--store").arg(&self.store).arg("-o").arg("json");
        c
    }

    /// Every audit line, oldest first, via `xai-keys events` (the log file or the etcd log).
    pub fn events(&self) -> Vec<Value> {
        let v = self.ok(&["events", "--limit", "10000"]);
        v.as_array()
            .unwrap_or_else(|| panic!("events is not a JSON array: {v}"))
            .clone()
    }

    /// The base name of this machine's own files (webhook queue, usage, cursors): the store
    /// file itself, or on etcd `<XAI_STATE_DIR>/etcd_<prefix>` (this Env's directory).
    pub fn local_base(&self) -> PathBuf {
        match self.etcd_prefix() {
            Some(prefix) => self
                .dir
                .path()
                .join(format!("etcd{}", prefix.replace('/', "_"))),
            None => self.store.clone(),
        }
    }

    /// On etcd, the store's key prefix (`/t…`, without the trailing slash).
    pub fn etcd_prefix(&self) -> Option<String> {
        let url = self.store.to_str()?.strip_prefix("etcd://")?;
        url.find('/').map(|i| url[i..].to_string())
    }

    /// `etcdctl ARGS` against the shared cluster (etcd runs only); returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        assert!(self.is_etcd(), "etcdctl on a file store");
        shared_etcd()
            .cluster
            .etcdctl(args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Everything the store holds, as text: the store file and its log (each empty when
    /// missing), or every key and value under the etcd prefix. For "never persisted" and
    /// "nothing changed" checks that hold on both backends.
    pub fn persisted(&self) -> String {
        match self.etcd_prefix() {
            Some(prefix) => self.etcdctl(&["get", "--prefix", &format!("{prefix}/")]),
            None => {
                let store = std::fs::read_to_string(&self.store).unwrap_or_default();
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                format!("{store}\n--- log ---\n{log}")
            }
        }
    }

    /// Whether nothing of the store was created: not even the file store's directory, or no key
    /// under the etcd prefix.
    pub fn nothing_created(&self) -> bool {
        if self.is_etcd() {
            !self.store_exists()
        } else {
            !self.store.parent().unwrap().exists()
        }
    }

    /// Whether anything of the store exists: its file or its log, or any key under the prefix.
    pub fn store_exists(&self) -> bool {
        match self.etcd_prefix() {
            Some(prefix) => !self
                .etcdctl(&["get", "--prefix", "--keys-only", &format!("{prefix}/")])
                .trim()
                .is_empty(),
            None => self.store.exists() || self.log().exists(),
        }
    }
    /// Runs and asserts exit 0; parses stdout as JSON.
    pub fn ok(&self, args: &[&str]) -> Value {
        self.ok_with(&[], args)
    }

    /// [`Env::ok`] with these variables set.
    pub fn ok_with(&self, vars: &[(&str, &str)], args: &[&str]) -> Value {
        let out = self
            .cmd()
            .envs(vars.iter().copied())
            .args(args)
            .output()
            .unwrap();
        assert_exit(&out, 0, args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {args:?} is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs and asserts the exit code; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_exit(&out, code, args);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Issues a key; returns (plaintext, key_id).
    pub fn issue(&self, scope: &str, label: &str) -> (String, String) {
        let v = self.ok(&["issue", "--scope", scope, "--label", label]);
        (
            v["api_key"].as_str().unwrap().to_string(),
            v["key_id"].as_str().unwrap().to_string(),
        )
    }

    /// Key ids currently in the store, via `list`.
    pub fn ids(&self) -> Vec<String> {
        let v = self.ok(&["list"]);
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// `verify` exit code and JSON report.
    pub fn verify(&self) -> (i32, Value) {
        let out = self.cmd().arg("verify").output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        )
    }
}

/// The binary with a clean environment (no XAI_* leaking in from the machine).
/// On an etcd run, `XAI_STATE_DIR` is a temp dir shared by the binary ([`Env::cmd`] sets the
/// Env's own), so no command writes its state files into the working directory.
pub fn base_cmd() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("XAI_") {
            c.env_remove(k);
        }
    }
    if etcd_backend() {
        c.env("XAI_STATE_DIR", shared_etcd().state.path());
    }
    c
}

pub fn assert_exit(out: &Output, code: i32, args: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "xai-keys {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------------------------
// serve: a running gateway process and a tiny blocking HTTP/1.1 client.

/// Longest a gateway may take to print its `listening` line, or to stop after SIGTERM.
pub const GATEWAY_START: Duration = Duration::from_secs(10);
pub const GATEWAY_STOP: Duration = Duration::from_secs(5);
/// Bounds of one HTTP exchange with the gateway.
pub const HTTP_CONNECT: Duration = Duration::from_secs(5);
pub const HTTP_EXCHANGE: Duration = Duration::from_secs(10);

/// A running `xai-keys serve`, killed on drop so a failing test never leaves it behind.
/// Its stderr (the notice, then JSON log lines) is collected by a thread as it arrives.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Env {
    /// `xai-keys --store … -o json serve --listen 127.0.0.1:0 ARGS` with a clean environment
    /// plus `vars`, not started.
    pub fn serve_cmd(&self, args: &[&str], vars: &[(&str, &str)]) -> std::process::Command {
        let mut c = serve_cmd_on(&self.store, args, vars);
        if self.is_etcd() {
            c.env("XAI_STATE_DIR", self.dir.path());
        }
        c
    }

    /// Starts a gateway on this store and waits (bounded) until it listens.
    pub fn serve(&self, args: &[&str], vars: &[(&str, &str)]) -> Gateway {
        Gateway::start(self.serve_cmd(args, vars))
    }
}

/// [`Env::serve_cmd`] for any store path.
pub fn serve_cmd_on(store: &Path, args: &[&str], vars: &[(&str, &str)]) -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("XAI_") {
            c.env_remove(k);
        }
    }
    if etcd_backend() {
        c.env("XAI_STATE_DIR", shared_etcd().state.path());
    }
    c.arg("--store")
        .arg(store)
        .args(["-o", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        // The tests poll admin routes and retry revoked keys: the admin and failed-auth
        // limits (20 per minute) are not what they are about. `vars` may turn them back on.
        .env("XAI_RATE_LIMIT_ENABLED", "0");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

impl Gateway {
    pub fn start(mut cmd: std::process::Command) -> Gateway {
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + GATEWAY_START;
        let addr = loop {
            let text = stderr.lock().unwrap().clone();
            if let Some(addr) = json_lines(&text)
                .into_iter()
                .find(|v| v["message"] == "listening")
                .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()))
            {
                break addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                // Let the reader thread drain what the process wrote before it exited.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "serve exited with {status} before listening; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "serve did not print its listening line within {GATEWAY_START:?}; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Gateway {
            child,
            addr,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, without waiting.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the process to end.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The structured log lines written so far.
    pub fn logs(&self) -> Vec<Value> {
        json_lines(&self.stderr())
    }

    /// Waits (bounded) for a log line matching `pred`.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found = poll(Duration::from_secs(5), || {
            self.logs().into_iter().find(|v| pred(v))
        });
        found.unwrap_or_else(|| panic!("no log line for {what}; stderr:\n{}", self.stderr()))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        http(self.addr, method, path, headers, body)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers, None)
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let st = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < GATEWAY_STOP,
                "serve did not stop within {GATEWAY_STOP:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `text` that are JSON objects (the structured log), in order.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Calls `f` every 10 ms until it returns `Some`, for at most `limit`.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request over a fresh connection (`Connection: close`), every step bounded. A JSON body
/// is sent with `Content-Type: application/json`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let what = format!("{method} {path} on {addr}");
    let mut s = TcpStream::connect_timeout(&addr, HTTP_CONNECT)
        .unwrap_or_else(|e| panic!("{what}: cannot connect: {e}"));
    s.set_read_timeout(Some(HTTP_EXCHANGE)).unwrap();
    s.set_write_timeout(Some(HTTP_EXCHANGE)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("{what}: cannot send: {e}"));
    let deadline = Instant::now() + HTTP_EXCHANGE;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "{what}: reading the response failed ({e}) after {} bytes: {}",
                raw.len(),
                String::from_utf8_lossy(&raw)
            ),
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no complete response within {HTTP_EXCHANGE:?}"
        );
    }
    parse_reply(&raw).unwrap_or_else(|| {
        panic!(
            "{what}: not an HTTP/1.1 response: {}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// Decodes a chunked HTTP body (`None` when cut short or malformed).
pub fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// What [`start_upstream`]'s stand-in node answers.
pub const UPSTREAM_BODY: &str = r#"{"success":true}"#;

/// A keep-alive HTTP/1.1 stand-in node on 127.0.0.1 answering 200 [`UPSTREAM_BODY`] to
/// everything; its address.
pub fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = upstream_conn(conn);
            });
        }
    });
    addr
}

fn upstream_conn(conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{UPSTREAM_BODY}",
        UPSTREAM_BODY.len()
    );
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let t = line.trim_end();
            if t.is_empty() {
                break;
            }
            if let Some((k, v)) = t.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        if length > 0 {
            let mut body = vec![0u8; length];
            r.read_exact(&mut body)?;
        }
        w.write_all(answer.as_bytes())?;
    }
}

/// One HTTP/1.1 exchange over a fresh connection; `Err` when the connection fails or closes
/// before a complete response (the gateway was killed). `sent` gets the moment the whole
/// request was written. Never panics: for tests that kill or stop what they talk to.
pub fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    sent: Option<&Mutex<Option<Instant>>>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    if let Some(sent) = sent {
        *sent.lock().unwrap() = Some(Instant::now());
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("{e} after {} bytes", raw.len()))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete response ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head}"))?;
    let mut rest = raw[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        rest = dechunk(&rest).ok_or_else(|| "a cut chunked body".to_string())?;
    } else if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        && rest.len() < len
    {
        return Err(format!("a cut body: {} of {len} bytes", rest.len()));
    }
    Ok((status, serde_json::from_slice(&rest).unwrap_or(Value::Null)))
}
