//! Test-only helpers for xai-keys: a real etcd cluster on loopback.
//!
//! [`EtcdCluster::start`] launches 1 or 3 `etcd` (3.4) processes on free `127.0.0.1` ports, each
//! with its own data dir under a fresh temp dir, and waits until every member reports healthy.
//! Tests can then kill, pause, restart and compact members to exercise failover. Dropping the
//! cluster kills every member and removes the data dirs (set `XAI_TEST_ETCD_KEEP=1` to keep them,
//! with each member's `etcd.log`, for debugging).
//!
//! The binaries come from Debian's `etcd-server` (`/usr/bin/etcd`) and `etcd-client`
//! (`/usr/bin/etcdctl`) packages; override them with `XAI_TEST_ETCD_BIN` and
//! `XAI_TEST_ETCDCTL_BIN`. A system etcd on the default ports 2379/2380 is neither used nor
//! disturbed: members only ever listen on ports picked by [`free_port`].

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a start or restart waits for the members to report healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// Whole-cluster start attempts (fresh ports each time) before giving up.
const START_ATTEMPTS: usize = 3;
/// Lines of each member's log quoted in error messages.
const LOG_TAIL_LINES: usize = 15;
/// The default etcd ports, which a system etcd may hold; never handed out.
const RESERVED_PORTS: [u16; 2] = [2379, 2380];

/// Ports handed out by [`free_port`] in this process, never handed out twice.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Makes cluster tokens unique within the process.
static CLUSTER_SEQ: AtomicU64 = AtomicU64::new(0);

/// A free loopback TCP port (binds `127.0.0.1:0`, reads the port, drops the listener).
///
/// Never returns 2379/2380 nor a port it already returned in this process. Another process may
/// still grab the port before it is used; [`EtcdCluster::start`] retries with new ports.
///
/// # Panics
///
/// If no loopback port can be bound at all (the test cannot run then).
#[must_use]
#[expect(
    clippy::panic,
    reason = "test helper: without a loopback port no test can run"
)]
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("{e}"),
    }
}

fn try_free_port() -> Result<u16, String> {
    let mut last_err = String::from("no attempt made");
    for _ in 0..200 {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(l) => l,
            Err(e) => {
                last_err = format!("cannot bind 127.0.0.1:0: {e}");
                continue;
            }
        };
        let port = match listener.local_addr() {
            Ok(addr) => addr.port(),
            Err(e) => {
                last_err = format!("cannot read the bound port: {e}");
                continue;
            }
        };
        if RESERVED_PORTS.contains(&port) {
            continue;
        }
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed.insert(port) {
            return Ok(port);
        }
        last_err = String::from("every port the kernel offered was already handed out");
    }
    Err(format!("no free loopback port: {last_err}"))
}

/// One etcd process of the cluster.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    /// The running process, `None` once killed.
    child: Mutex<Option<Child>>,
    /// Stopped with SIGSTOP and not yet continued.
    paused: bool,
}

impl Member {
    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn client_url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// `Some(pid)` while the process is alive (reaps it if it exited).
    fn running_pid(&self) -> Option<u32> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            Ok(Some(_)) | Err(_) => {
                *guard = None;
                None
            }
        }
    }

    /// The exit status if the process has exited since it was spawned.
    fn exited(&self) -> Option<String> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            None => Some(String::from("not running")),
            Some(child) => match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(format!("exited ({status})")),
                Err(e) => Some(format!("cannot be waited for: {e}")),
            },
        }
    }

    /// SIGKILLs the process and reaps it; a no-op if it is not running.
    fn kill(&mut self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            // Errors mean it already exited; wait() then reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }

    /// Whether `GET /health` answers `"health":"true"`.
    fn healthy(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let request = format!(
            "GET /health HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.client_port
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = Vec::new();
        // A timeout or reset mid-body just leaves a partial response, checked below.
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response);
        response.starts_with("HTTP/1.") && response.contains("\"health\":\"true\"")
    }
}

/// A real etcd cluster on loopback, owned by a test.
///
/// Dropping it kills every member (SIGKILL, then reaps it) and removes the temp dir.
pub struct EtcdCluster {
    members: Vec<Member>,
    token: String,
    etcd_bin: PathBuf,
    /// Holds the members' dirs; `None` only while dropping with `XAI_TEST_ETCD_KEEP` set.
    tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("token", &self.token)
            .field("dir", &self.dir())
            .finish()
    }
}

impl EtcdCluster {
    /// Starts `members` (1 or 3) etcd processes on free `127.0.0.1` ports and waits (at most
    /// ~20 s) until every member is healthy. Retries the whole start with new ports up to 3
    /// times, since a port found free may be taken by another test before etcd binds it.
    pub fn start(members: usize) -> Result<EtcdCluster, String> {
        if members == 0 {
            return Err(String::from("an etcd cluster needs at least one member"));
        }
        let etcd_bin = etcd_binary()?;
        let mut errors = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(members, &etcd_bin) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => errors.push(format!("attempt {attempt}: {e}")),
            }
        }
        Err(format!(
            "could not start a {members}-member etcd cluster ({}):\n{}",
            etcd_bin.display(),
            errors.join("\n")
        ))
    }

    fn try_start(count: usize, etcd_bin: &Path) -> Result<EtcdCluster, String> {
        let tmp = tempfile::Builder::new()
            .prefix("xai-etcd-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let mut members = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("m{i}");
            let dir = tmp.path().join(&name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            members.push(Member {
                name,
                client_port: try_free_port()?,
                peer_port: try_free_port()?,
                dir,
                child: Mutex::new(None),
                paused: false,
            });
        }
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let token = format!("xai-test-{}-{seq}-{nanos:x}", std::process::id());
        // From here on, Drop cleans up whatever was spawned.
        let mut cluster = EtcdCluster {
            members,
            token,
            etcd_bin: etcd_bin.to_path_buf(),
            tmp: Some(tmp),
        };
        for i in 0..count {
            cluster.spawn(i, "new")?;
        }
        let all: Vec<usize> = (0..count).collect();
        cluster.wait_members(&all)?;
        Ok(cluster)
    }

    /// Spawns member `i` (which must not be running) with `--initial-cluster-state <state>`.
    fn spawn(&mut self, i: usize, state: &str) -> Result<(), String> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = self
            .members
            .get(i)
            .ok_or_else(|| format!("no etcd member {i}"))?;
        let log_path = m.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let _ = writeln!(
            log,
            "=== xai-keys-testkit: starting {} (--initial-cluster-state {state}) ===",
            m.name
        );
        let stderr = log
            .try_clone()
            .map_err(|e| format!("cannot reopen {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&self.etcd_bin);
        // Keep the member hermetic: etcd reads any ETCD_* variable as a flag.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        let client_url = m.client_url();
        let peer_url = m.peer_url();
        let data_dir: OsString = m.data_dir().into_os_string();
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--max-txn-ops", "4096"])
            .args(["--max-request-bytes", "10485760"])
            .args(["--heartbeat-interval", "50"])
            .args(["--election-timeout", "500"])
            .args(["--snapshot-count", "10000"])
            .args(["--logger", "zap"])
            .args(["--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run {} for member {}: {e}",
                self.etcd_bin.display(),
                m.name
            )
        })?;
        *m.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// Waits until every member in `which` is healthy; fails early if one exits.
    fn wait_members(&self, which: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let mut pending: Vec<&Member> = which.iter().filter_map(|&i| self.members.get(i)).collect();
        loop {
            let mut still = Vec::with_capacity(pending.len());
            for m in pending {
                if let Some(why) = m.exited() {
                    return Err(format!(
                        "etcd member {} ({}) {why} before becoming healthy; {}:\n{}",
                        m.name,
                        m.endpoint(),
                        m.log_path().display(),
                        m.log_tail()
                    ));
                }
                if !m.healthy() {
                    still.push(m);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut msg = format!(
                    "etcd members not healthy after {}s:",
                    HEALTH_TIMEOUT.as_secs()
                );
                for m in &pending {
                    let _ = write!(
                        msg,
                        "\n--- {} ({}), {}:\n{}",
                        m.name,
                        m.endpoint(),
                        m.log_path().display(),
                        m.log_tail()
                    );
                }
                return Err(msg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most ~20 s) until every running, unpaused member is healthy. `/health` only
    /// answers true once a quorum read went through a live leader, so call this after
    /// [`EtcdCluster::kill`] or [`EtcdCluster::pause`] to wait for the survivors to elect a new
    /// leader (until then, a write may time out: its proposal went to the dead leader).
    pub fn wait_healthy(&self) -> Result<(), String> {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members.get(i).is_some_and(|m| !m.paused) && self.is_running(i))
            .collect();
        if live.is_empty() {
            return Err(String::from("no etcd member is running"));
        }
        self.wait_members(&live)
    }

    /// Number of members.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client endpoints `127.0.0.1:port`, in member order.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// `etcd://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/<prefix>` (leading slashes of `prefix`
    /// are dropped; exactly one slash separates it from the endpoints).
    #[must_use]
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "etcd://{}/{}",
            self.endpoints().join(","),
            prefix.trim_start_matches('/')
        )
    }

    /// The temp dir holding one sub-dir per member (`m0`, `m1`, ...: `data/` and `etcd.log`).
    #[must_use]
    pub fn dir(&self) -> Option<&Path> {
        self.tmp.as_ref().map(tempfile::TempDir::path)
    }

    /// Path of member `i`'s log (all its runs, appended), if `i` is a member.
    #[must_use]
    pub fn log_path(&self, i: usize) -> Option<PathBuf> {
        self.members.get(i).map(Member::log_path)
    }

    /// SIGKILL member `i` (0-based) and wait for it to exit. A no-op if it is not running or
    /// `i` is out of range.
    pub fn kill(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            m.kill();
        }
    }

    /// SIGSTOP member `i`: it keeps its ports but answers nothing (a hung member).
    pub fn pause(&mut self, i: usize) -> Result<(), String> {
        self.signal(i, "STOP")?;
        if let Some(m) = self.members.get_mut(i) {
            m.paused = true;
        }
        Ok(())
    }

    /// SIGCONT member `i` after [`EtcdCluster::pause`].
    pub fn resume(&mut self, i: usize) -> Result<(), String> {
        self.signal(i, "CONT")?;
        if let Some(m) = self.members.get_mut(i) {
            m.paused = false;
        }
        Ok(())
    }

    fn signal(&self, i: usize, sig: &str) -> Result<(), String> {
        let m = self
            .members
            .get(i)
            .ok_or_else(|| format!("no etcd member {i}"))?;
        let pid = m
            .running_pid()
            .ok_or_else(|| format!("etcd member {} is not running", m.name))?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run kill -{sig} {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{sig} {pid} failed: {status}"))
        }
    }

    /// Restart member `i` with the same data dir and ports and `--initial-cluster-state
    /// existing`, then wait until it is healthy (which needs a quorum of running members).
    /// A running member is killed first.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        if i >= self.members.len() {
            return Err(format!("no etcd member {i}"));
        }
        self.kill(i);
        self.spawn(i, "existing")?;
        self.wait_members(&[i])
    }

    /// Kill all members.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Restart every stopped member (all processes first, since one member alone has no
    /// quorum), then wait until every member of the cluster is healthy (a paused member must
    /// be resumed first).
    pub fn restart_all(&mut self) -> Result<(), String> {
        let stopped: Vec<usize> = (0..self.members.len())
            .filter(|&i| !self.is_running(i))
            .collect();
        for &i in &stopped {
            self.spawn(i, "existing")?;
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_members(&all)
    }

    /// Whether member `i` is running (a paused member counts as running).
    #[must_use]
    pub fn is_running(&self, i: usize) -> bool {
        self.members
            .get(i)
            .is_some_and(|m| m.running_pid().is_some())
    }

    /// Runs `etcdctl --endpoints=<running, unpaused members> <args>` with `ETCDCTL_API=3` and
    /// returns its stdout; an error carries the exit status and stderr.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| !m.paused && m.running_pid().is_some())
            .map(Member::endpoint)
            .collect();
        // With no live member, let etcdctl report the connection failure.
        let endpoints = if live.is_empty() {
            self.endpoints()
        } else {
            live
        };
        let bin = etcdctl_binary(&self.etcd_bin)?;
        let mut cmd = Command::new(&bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(key);
            }
        }
        let output = cmd
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "etcdctl {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end(),
                if stdout.is_empty() {
                    String::new()
                } else {
                    format!("\nstdout: {}", stdout.trim_end())
                }
            ))
        }
    }

    /// Compact the cluster's history up to the current revision (read from
    /// `etcdctl endpoint status -w json`, the highest of the live members); returns it.
    /// Compacting again at an already compacted revision is not an error.
    pub fn compact(&self) -> Result<i64, String> {
        let mut last_err = String::new();
        for _ in 0..20 {
            let status = self.etcdctl(&["endpoint", "status", "-w", "json"])?;
            let rev = header_revisions(&status).into_iter().max().ok_or_else(|| {
                format!("no revision in `etcdctl endpoint status -w json` output: {status}")
            })?;
            match self.etcdctl(&["compact", &rev.to_string()]) {
                Ok(_) => return Ok(rev),
                Err(e) if e.contains("has been compacted") => return Ok(rev),
                // A lagging member may report a revision the leader has not applied yet.
                Err(e) if e.contains("future revision") => {
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
        if std::env::var_os("XAI_TEST_ETCD_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
            && let Some(tmp) = self.tmp.take()
        {
            let kept = tmp.keep();
            eprintln!(
                "xai-keys-testkit: kept etcd dirs and logs in {}",
                kept.display()
            );
        }
        // Otherwise dropping the TempDir removes every member's dir.
    }
}

/// Every `"revision":N` in etcdctl's JSON output (one per endpoint, in the response header).
fn header_revisions(json: &str) -> Vec<i64> {
    let key = "\"revision\":";
    let mut out = Vec::new();
    let mut rest = json;
    while let Some(pos) = rest.find(key) {
        rest = &rest[pos + key.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

const INSTALL_HINT: &str = "install Debian's etcd-server (`apt-get install etcd-server`)";

/// The etcd binary: `XAI_TEST_ETCD_BIN`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
fn etcd_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("XAI_TEST_ETCD_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "XAI_TEST_ETCD_BIN={} is not a file; unset it or {INSTALL_HINT}",
                path.display()
            ))
        };
    }
    find_on_path("etcd")
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            format!(
                "etcd binary not found (not on PATH, no /usr/bin/etcd): {INSTALL_HINT} \
                 or set XAI_TEST_ETCD_BIN"
            )
        })
}

/// The etcdctl binary: `XAI_TEST_ETCDCTL_BIN`, else next to etcd, else `etcdctl` on `PATH`.
fn etcdctl_binary(etcd_bin: &Path) -> Result<PathBuf, String> {
    let hint = "install Debian's etcd-client (`apt-get install etcd-client`) or set \
                XAI_TEST_ETCDCTL_BIN";
    if let Some(path) = std::env::var_os("XAI_TEST_ETCDCTL_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "XAI_TEST_ETCDCTL_BIN={} is not a file; {hint}",
                path.display()
            ))
        };
    }
    etcd_bin
        .parent()
        .map(|dir| dir.join("etcdctl"))
        .filter(|p| p.is_file())
        .or_else(|| find_on_path("etcdctl"))
        .ok_or_else(|| format!("etcdctl binary not found: {hint}"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_parsed_from_status_json() {
        let json = r#"[{"Endpoint":"127.0.0.1:1","Status":{"header":{"cluster_id":1,"member_id":2,"revision":17,"raft_term":3},"version":"3.4.23"}},{"Endpoint":"127.0.0.1:2","Status":{"header":{"revision": 18}}}]"#;
        assert_eq!(header_revisions(json), vec![17, 18]);
        assert!(header_revisions("[]").is_empty());
    }

    #[test]
    fn free_ports_are_distinct_and_not_etcd_defaults() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!(!RESERVED_PORTS.contains(&p));
        }
    }
}
