//! docs/runbook.md, executed: every `sh` code block, in order, as one bash script
//! (`set -euo pipefail`) against a scratch store, a running `xai-keys serve`, a stand-in node
//! behind it and a stand-in SOC webhook, with the settings the runbook documents at its top
//! (`XAI_API_KEY_STORE`, `GATEWAY`, `ADMIN_KEY`, `WEBHOOK_URL`, `BACKUP_DIR`, `PEER_KEYRING`,
//! `PEER_EGRESS`). A step that stops working makes this test fail and prints the block, its
//! line in the runbook and its output.
//!
//! The gateway is a validator's: its peer key ring comes from a keyring file (a fresh key as
//! `XAI_PEER_API_KEY`, as a Vault agent would render it) that the runbook's peer-key rotations
//! rewrite while it runs, and it serves the peer egress proxy on a fixed loopback port.
//!
//! Also checked: the runbook's CLI steps reach the SOC (the webhook receives the `revoke`
//! audit event), the runbook really rotated the peer key (the ring no longer holds the first
//! key, and neither the script's output nor the gateway's log ever shows it), and every
//! `runbook:` link in the alert rules names a heading of the runbook.
//!
//! Both helper servers are plain `std::net` threads on 127.0.0.1: nothing leaves loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use xai_keys_core::peer::{KeyRing, PeerKey};

use crate::common::*;

/// The runbook, relative to this crate.
const RUNBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/runbook.md");
/// Alert rules whose `runbook:` annotations must resolve to a heading of the runbook.
const RULE_FILES: &[&str] = &[
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus/alerts/security_operations.yml"
    ),
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus/alerts/security_operations_test.yml"
    ),
];
/// Fewer runnable blocks than this means the extraction (or the runbook) is broken.
const MIN_BLOCKS: usize = 15;
/// The whole script must finish within this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the webhook may take to receive an event after the script ended.
const DELIVERY: Duration = Duration::from_secs(10);
/// The admin secret the test's gateway bootstraps (`XAI_BOOTSTRAP_ADMIN_KEY`, ≥ 32 characters).
const ADMIN_SECRET: &str = "runbook-test-admin-secret-0f3c9a7e5d1b2468ace0";
/// The node id the gateway's egress proxy signs as (`XAI_PEER_NODE_ID`).
const NODE_ID: &str = "runbook-validator-1";

/// The validator's peer key ring as a Vault agent renders it: `XAI_PEER_API_KEY=<key>` in a
/// 0600 file inside a 0700 directory. Returns the file and the key.
fn write_keyring(dir: &Path) -> (PathBuf, PeerKey) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
    let key = PeerKey::generate().unwrap();
    let file = dir.join("keyring.env");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .unwrap();
    writeln!(f, "XAI_PEER_API_KEY={}", key.expose()).unwrap();
    (file, key)
}

/// A loopback port free right now (bound, read, released) for the egress proxy, whose address
/// the runbook's blocks need before the gateway starts.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Extraction

/// One runnable block: its first line's number in the runbook (1-based) and its text.
#[derive(Debug)]
struct Block {
    line: usize,
    text: String,
}

/// The `sh` code blocks of a Markdown document, in order. Other fenced blocks (`text`, `ini`,
/// …) are skipped, and so is anything inside them. A fence is a line of three backticks and an
/// info string without backticks (CommonMark), so inline code such as ```` ```sh ```` at the
/// start of a prose line does not open one.
fn sh_blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    // The open fence's info string and the block collected so far.
    let mut open: Option<(String, Block)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let t = line.trim();
        match open.take() {
            None => {
                if let Some(info) = fence_info(t) {
                    let block = Block {
                        line: i + 2,
                        text: String::new(),
                    };
                    open = Some((info.trim().to_string(), block));
                }
            }
            Some((info, block)) if t == "```" => {
                if info == "sh" {
                    out.push(block);
                }
            }
            Some((info, mut block)) => {
                block.text.push_str(line);
                block.text.push('\n');
                open = Some((info, block));
            }
        }
    }
    assert!(open.is_none(), "the runbook ends inside a code block");
    out
}

/// The info string if `line` (trimmed) opens a backtick fence.
fn fence_info(line: &str) -> Option<&str> {
    line.strip_prefix("```").filter(|info| !info.contains('`'))
}

/// The script bash runs: strict mode, then each block preceded by a marker line that the
/// failure report splits the output on.
fn script(blocks: &[Block]) -> String {
    let mut s = String::from(
        "set -euo pipefail\n\
         exec 2>&1\n\
         trap 'rc=$?; echo \"### runbook script failed (exit $rc) at: $BASH_COMMAND\"' ERR\n",
    );
    for (n, b) in blocks.iter().enumerate() {
        // On a line of its own even when the previous command's output lacks a final newline.
        s.push_str(&format!(
            "printf '\\n### block {} (docs/runbook.md line {})\\n'\n",
            n + 1,
            b.line
        ));
        s.push_str(&b.text);
    }
    s.push_str("printf '\\n### runbook script finished\\n'\n");
    s
}

/// The output of the last block that started, with its source: what a failure report shows.
fn failing_block_report(blocks: &[Block], output: &str) -> String {
    let mut last = None;
    let mut start = 0;
    for (pos, _) in output.match_indices("### block ") {
        let rest = &output[pos + "### block ".len()..];
        if let Some(n) = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<usize>().ok())
        {
            last = Some(n);
            start = pos;
        }
    }
    match last {
        Some(n) if n >= 1 && n <= blocks.len() => format!(
            "block {n} of {} (docs/runbook.md line {}):\n----- source -----\n{}----- output -----\n{}",
            blocks.len(),
            blocks[n - 1].line,
            blocks[n - 1].text,
            &output[start..]
        ),
        _ => format!("no block started; output:\n{output}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server: the stand-in node and the stand-in SOC webhook

/// Requests a [`TestServer`] received: (method, path, body).
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Answers every request with `200 {"success": true}` and records it. One thread per
/// connection; each connection serves one request (`Connection: close`).
struct TestServer {
    addr: SocketAddr,
    received: Received,
}

impl TestServer {
    fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Received = Arc::default();
        let sink = Arc::clone(&received);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &sink);
                });
            }
        });
        TestServer { addr, received }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The JSON bodies received so far (others skipped).
    fn json_bodies(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, _, b)| serde_json::from_slice(b).ok())
            .collect()
    }
}

fn serve_one(conn: TcpStream, sink: &Received) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut request_line = String::new();
    r.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse().unwrap_or(0);
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        r.read_exact(&mut body)?;
    }
    sink.lock().unwrap().push((method, path, body));
    let reply = "{\"success\": true}";
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    w.flush()
}

// ---------------------------------------------------------------------------------------------
// Running the script

/// Runs `script` with bash in `cwd` and the given environment (every other XAI_* removed);
/// returns (exit code, None if killed after the timeout; combined output).
fn run_bash(script_path: &Path, cwd: &Path, vars: &[(&str, String)]) -> (Option<i32>, String) {
    let out_path = cwd.join("runbook-output.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut c = Command::new("bash");
    c.arg("--noprofile").arg("--norc").arg(script_path);
    for (k, _) in std::env::vars() {
        if k.starts_with("XAI_") {
            c.env_remove(k);
        }
    }
    for (k, v) in vars {
        c.env(k, v);
    }
    c.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // Its own process group, so that a timeout kills what the script started too.
    {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
    }
    let mut child = c.spawn().unwrap();
    let started = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(format!("-{}", child.id()))
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(&out_path).unwrap_or_default())
}

fn bin_dir() -> PathBuf {
    Path::new(BIN).parent().unwrap().to_path_buf()
}

#[test]
fn runbook_sh_blocks_run_top_to_bottom_against_a_live_gateway() {
    let markdown = std::fs::read_to_string(RUNBOOK).unwrap();
    let blocks = sh_blocks(&markdown);
    assert!(
        blocks.len() >= MIN_BLOCKS,
        "docs/runbook.md has {} ```sh blocks; expected at least {MIN_BLOCKS}",
        blocks.len()
    );

    // The runbook documents a file-store deployment (`ls -l` of the store's directory, …).
    let Some(env) = Env::file_only() else { return };
    let node = TestServer::start();
    let soc = TestServer::start();
    let events_log = env.dir.path().join("security-events.ndjson");
    let events_log_s = events_log.to_string_lossy().into_owned();
    let upstream = node.url("");
    let webhook = soc.url("/xai-security");
    let (keyring, first_peer_key) = write_keyring(&env.dir.path().join("peer"));
    let keyring_s = keyring.to_string_lossy().into_owned();
    let egress = format!("127.0.0.1:{}", free_port());
    let gateway_vars: Vec<(&str, &str)> = vec![
        ("XAI_BOOTSTRAP_ADMIN_KEY", ADMIN_SECRET),
        ("XAI_UPSTREAM_URL", &upstream),
        ("XAI_SECURITY_WEBHOOK_URL", &webhook),
        ("XAI_SECURITY_EVENT_LOG", &events_log_s),
        ("XAI_REQUIRE_CHANGE_WINDOW", "1"),
        // Flush last-use data often, so `list` and `peer status` show it within the script's
        // pace.
        ("XAI_USAGE_FLUSH_SECS", "0.2"),
        // Production limits (serve_cmd turns them off for the other tests): the runbook must
        // work within them.
        ("XAI_RATE_LIMIT_ENABLED", "1"),
        // A validator's gateway: the peer key ring from a file the runbook rewrites, and the
        // egress proxy for a node that cannot sign, allowed to reach loopback peers only.
        ("XAI_PEER_KEYRING_FILE", &keyring_s),
        ("XAI_PEER_ALLOWLIST", "127.0.0.0/8"),
        ("XAI_PEER_NODE_ID", NODE_ID),
    ];
    let gw = env.serve(
        &["--no-auto-bootstrap", "--peer-egress", &egress],
        &gateway_vars,
    );

    let work = env.dir.path().join("work");
    let backups = env.dir.path().join("backups");
    // The drills' `mktemp -d` directories, removed with the test's even if a block fails.
    let tmp = env.dir.path().join("tmp");
    for d in [&work, &backups, &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }
    let script_path = env.dir.path().join("runbook.sh");
    std::fs::write(&script_path, script(&blocks)).unwrap();

    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let vars = vec![
        ("PATH", path),
        (
            "XAI_API_KEY_STORE",
            env.store.to_string_lossy().into_owned(),
        ),
        ("XAI_REQUIRE_CHANGE_WINDOW", "1".to_string()),
        ("GATEWAY", format!("http://{}", gw.addr)),
        ("ADMIN_KEY", ADMIN_SECRET.to_string()),
        ("WEBHOOK_URL", webhook.clone()),
        ("BACKUP_DIR", backups.to_string_lossy().into_owned()),
        ("PEER_KEYRING", keyring_s.clone()),
        ("PEER_EGRESS", format!("http://{egress}")),
        ("TMPDIR", tmp.to_string_lossy().into_owned()),
    ];
    let started = Instant::now();
    let (code, output) = run_bash(&script_path, &work, &vars);
    let took = started.elapsed();
    if code != Some(0) {
        panic!(
            "the runbook script {} after {took:?}\n{}\n----- gateway stderr (tail) -----\n{}",
            match code {
                Some(c) => format!("exited with {c}"),
                None => format!("was killed after {SCRIPT_TIMEOUT:?}"),
            },
            failing_block_report(&blocks, &output),
            tail(&gw.stderr(), 40)
        );
    }
    assert!(
        output.contains("### runbook script finished"),
        "the script exited 0 without reaching its end:\n{output}"
    );
    eprintln!("runbook: {} sh blocks ran in {took:?}", blocks.len());

    // The runbook's CLI revocations reach the SOC: the webhook receives the audit event.
    let revoke = poll(DELIVERY, || {
        soc.json_bodies()
            .into_iter()
            .find(|v| v["event_type"] == "api_key_audit" && v["details"]["action"] == "revoke")
    });
    let revoke = revoke.unwrap_or_else(|| {
        panic!(
            "the webhook received no api_key_audit revoke event within {DELIVERY:?}; it received:\n{}\n----- security event log -----\n{}\n----- gateway stderr (tail) -----\n{}",
            soc.json_bodies()
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            std::fs::read_to_string(&events_log).unwrap_or_default(),
            tail(&gw.stderr(), 40)
        )
    });
    assert!(
        revoke["details"]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("cli:")),
        "the revoke the webhook received should be the runbook's CLI revoke: {revoke}"
    );
    assert!(revoke["event_id"].as_str().is_some(), "{revoke}");

    // The runbook rotated the peer key: the ring it leaves holds neither the first key nor
    // anything but a current key, and no key ever reached the script's output or the log.
    let ring = KeyRing::from_file(&keyring).unwrap();
    let fps: Vec<(&str, &str)> = ring.keys().map(|(r, k)| (r, k.fingerprint())).collect();
    assert!(
        ring.by_fingerprint(first_peer_key.fingerprint()).is_none()
            && fps.len() == 1
            && fps[0].0 == "current",
        "after the runbook the ring should hold only a new current key; it holds {fps:?} (first key {})",
        first_peer_key.fingerprint()
    );
    let secret = first_peer_key.expose();
    assert!(
        !output.contains(secret),
        "the runbook script printed the peer key"
    );
    assert!(
        !gw.stderr().contains(secret),
        "the gateway logged the peer key"
    );
    // Gossip reached the node: signed requests from the peers and through the egress proxy.
    let gossip = node
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/block/receive")
        .count();
    assert!(
        gossip > 0,
        "the stand-in node received no /block/receive gossip"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Alert rules link to headings that exist

/// GitHub's anchor for a Markdown heading: lower case; letters, digits, `-` and `_` kept;
/// spaces become `-`; everything else dropped.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of every heading outside code blocks, with GitHub's `-1`, `-2` suffixes for
/// repeats.
fn anchors(markdown: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut repeats: std::collections::HashMap<String, usize> = Default::default();
    let mut in_code = false;
    for line in markdown.lines() {
        let t = line.trim();
        if (in_code && t == "```") || (!in_code && fence_info(t).is_some()) {
            in_code = !in_code;
            continue;
        }
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let text = rest.trim_start_matches('#');
        if in_code || !text.starts_with(' ') {
            continue;
        }
        let base = github_anchor(text);
        let n = repeats.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn runbook_headings_resolve_every_alert_rule_runbook_link_and_internal_link() {
    let markdown = std::fs::read_to_string(RUNBOOK).unwrap();
    let have = anchors(&markdown);
    for required in [
        "4-standard-rotation-workflow",
        "5-emergency-rotation-compromise-response",
        "8-monitoring-and-alerts",
        "9-change-windows",
        "10-webhooks",
        "11-store-health",
    ] {
        assert!(
            have.iter().any(|a| a == required),
            "docs/runbook.md has no heading with anchor #{required}; anchors: {have:?}"
        );
    }
    // Links inside the runbook itself.
    for (n, line) in markdown.lines().enumerate() {
        for (pos, _) in line.match_indices("](#") {
            let anchor: String = line[pos + 3..].chars().take_while(|c| *c != ')').collect();
            assert!(
                have.contains(&anchor),
                "docs/runbook.md line {}: link #{anchor} names no heading; anchors: {have:?}",
                n + 1
            );
        }
    }
    let mut checked = 0;
    for file in RULE_FILES {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let Some(pos) = line.find("docs/runbook.md#") else {
                continue;
            };
            let anchor: String = line[pos + "docs/runbook.md#".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            assert!(
                have.contains(&anchor),
                "{file} line {}: runbook link #{anchor} names no heading of docs/runbook.md; anchors: {have:?}",
                n + 1
            );
            checked += 1;
        }
    }
    eprintln!("runbook: {checked} alert-rule runbook links resolve");
}

#[test]
fn runbook_extraction_keeps_sh_blocks_only() {
    let md = "# T\n\n```sh\necho one\n```\n\n```text\necho never\n```\n\n  ```sh\n  echo two\n  ```\n```toml\n[x]\n```\n```` ```sh ```` is inline\n";
    let b = sh_blocks(md);
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0].text, "echo one\n");
    assert_eq!(b[0].line, 4);
    assert_eq!(b[1].text, "  echo two\n");
    assert_eq!(
        github_anchor("5. Emergency rotation (compromise response)"),
        "5-emergency-rotation-compromise-response"
    );
    assert_eq!(github_anchor("10. Webhooks"), "10-webhooks");
    assert_eq!(
        anchors("## A\n## A\n```sh\n# not a heading\n```\n"),
        vec!["a", "a-1"]
    );
}
