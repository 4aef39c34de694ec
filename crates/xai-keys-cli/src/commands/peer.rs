//! `peer keygen|fingerprint|sign`: the validators' shared peer key ring (issue 5), over
//! [`xai_keys_core::peer`]. Only `keygen` ever prints a key, once.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};
use xai_keys_core::now_epoch;
use xai_keys_core::peer::{
    KeyRing, MAX_NODE_ID_CHARS, PeerKey, RequestParts, VAR_CURRENT, VAR_NEXT, VAR_PREVIOUS,
    sign_peer_request,
};

use crate::CliError;
use crate::args::{PeerCommand, PeerFingerprintArgs, PeerSignArgs};
use crate::config::Config;
use crate::output;

/// Names a file holding the ring instead of the three key variables.
pub use xai_keys_core::peer::VAR_KEYRING_FILE;
/// This node's id in the requests it signs (default: the host name).
pub const VAR_NODE_ID: &str = "XAI_PEER_NODE_ID";

pub fn peer(cmd: PeerCommand, cfg: &Config) -> Result<bool> {
    let env = |k: &str| std::env::var(k).ok();
    match cmd {
        PeerCommand::Keygen => keygen(cfg)?,
        PeerCommand::Fingerprint(a) => fingerprint(a, cfg, &env)?,
        PeerCommand::Status => status(cfg, &env)?,
        PeerCommand::Sign(a) => sign(a, cfg, &env)?,
    }
    Ok(true)
}

/// Where the configured ring came from, for messages.
#[derive(Debug, Clone)]
pub enum RingSource {
    /// `XAI_PEER_API_KEY`, `…_NEXT`, `…_PREVIOUS`.
    Variables,
    /// The file named by `XAI_PEER_KEYRING_FILE`.
    File(PathBuf),
}

impl std::fmt::Display for RingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingSource::Variables => write!(f, "the environment ({VAR_CURRENT}[_NEXT|_PREVIOUS])"),
            RingSource::File(p) => write!(f, "{VAR_KEYRING_FILE}={}", p.display()),
        }
    }
}

/// The peer key ring of this node's environment and where it came from.
#[derive(Debug)]
pub struct EnvRing {
    pub ring: KeyRing,
    pub source: RingSource,
}

impl EnvRing {
    /// The error for a ring without keys: names the variables (and the file, if one was read).
    fn not_configured(&self, lead: &str) -> anyhow::Error {
        let message = match &self.source {
            RingSource::Variables => format!(
                "{lead}: set {VAR_CURRENT} (and, during a rotation, {VAR_NEXT} or {VAR_PREVIOUS}), or {VAR_KEYRING_FILE} to a file with those NAME=value lines; generate a key with `xai-keys peer keygen`"
            ),
            RingSource::File(p) => format!(
                "{lead}: the keyring file {} ({VAR_KEYRING_FILE}) holds no {VAR_CURRENT} line; add `{VAR_CURRENT}=<key>` (generate one with `xai-keys peer keygen`)",
                p.display()
            ),
        };
        CliError {
            code: "no_peer_key",
            message,
        }
        .into()
    }
}

/// Resolves the peer key ring from the environment, as the gateway does: the file named by
/// `XAI_PEER_KEYRING_FILE`, or else the three key variables. Setting both is an error (the
/// operator could not tell which one the node uses). Empty values count as unset. The ring may
/// be empty (nothing configured); errors never contain a key.
pub fn ring_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<EnvRing> {
    // The core resolves it as the gateway does; its errors name the file or variables, never a key.
    let (ring, file) = KeyRing::resolve(env)?;
    Ok(EnvRing {
        ring,
        source: match file {
            Some(p) => RingSource::File(p),
            None => RingSource::Variables,
        },
    })
}

/// `peer status`: per fingerprint, each sending node's last use, from `<store>.peer-usage`.
fn status(cfg: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let mut p = cfg.store_path.clone().into_os_string();
    p.push(".peer-usage");
    let path = PathBuf::from(p);
    let usage = xai_keys_server::peer::PeerUsage::read(&path)
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    // The ring is optional here: without one, roles are unknown.
    let ring = ring_from_env(env).ok().map(|r| r.ring);
    let role_of = |fp: &str| -> &'static str {
        ring.as_ref()
            .and_then(|r| {
                r.keys()
                    .find(|(_, k)| k.fingerprint() == fp)
                    .map(|(role, _)| role)
            })
            .unwrap_or("not in this ring")
    };
    let mut fps: Vec<String> = usage.keys.keys().cloned().collect();
    if let Some(r) = &ring {
        for (_, k) in r.keys() {
            if !fps.iter().any(|f| f == k.fingerprint()) {
                fps.push(k.fingerprint().to_string());
            }
        }
    }
    let now = now_epoch();
    if cfg.json {
        let arr: Vec<Value> = fps
            .iter()
            .map(|fp| {
                let peers: Vec<Value> = usage
                    .keys
                    .get(fp)
                    .map(|m| {
                        m.iter()
                            .map(|(node, u)| json!({"node": node, "last_used": u.last_used, "count": u.count}))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({"fingerprint": fp, "role": role_of(fp), "peers": peers})
            })
            .collect();
        return output::json(&Value::Array(arr));
    }
    let mut rows = Vec::new();
    for fp in &fps {
        match usage.keys.get(fp).filter(|m| !m.is_empty()) {
            None => rows.push(vec![
                fp.clone(),
                role_of(fp).to_string(),
                "-".into(),
                "never".into(),
                "0".into(),
            ]),
            Some(m) => {
                for (node, u) in m {
                    rows.push(vec![
                        fp.clone(),
                        role_of(fp).to_string(),
                        output::clean(node).into_owned(),
                        format!(
                            "{} ({})",
                            output::fmt_ago(Some(u.last_used), now),
                            output::fmt_time(Some(u.last_used))
                        ),
                        u.count.to_string(),
                    ]);
                }
            }
        }
    }
    output::table(&["FINGERPRINT", "ROLE", "PEER", "LAST USED", "USES"], &rows)?;
    if ring.is_none() {
        eprintln!(
            "note: no peer key ring in this environment ({VAR_CURRENT} or {VAR_KEYRING_FILE}): roles unknown"
        );
    }
    eprintln!(
        "from {} (written by the gateway every few seconds)",
        path.display()
    );
    Ok(())
}

fn keygen(cfg: &Config) -> Result<()> {
    let key = PeerKey::generate().context("cannot generate a peer key")?;
    if cfg.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            peer_key: &'a str,
            fingerprint: &'a str,
        }
        // Straight to stdout: no intermediate copy of the key in a JSON value.
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(
            &mut out,
            &Out {
                peer_key: key.expose(),
                fingerprint: key.fingerprint(),
            },
        )?;
        out.write_all(b"\n")?;
        out.flush()?;
    } else {
        output::line(key.expose())?;
        eprintln!("fingerprint: {}", key.fingerprint());
    }
    eprintln!(
        "Store the peer key now: it is not kept anywhere and cannot be shown again. To rotate, first put it into {VAR_NEXT} on every node; then switch the nodes to it as {VAR_CURRENT} one by one (the old key as {VAR_PREVIOUS}); drop the old key once no node uses it."
    );
    Ok(())
}

fn fingerprint(
    a: PeerFingerprintArgs,
    cfg: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    let rows: Vec<(&str, String)> = if a.stdin {
        let key = read_stdin_key()?;
        vec![("stdin", key.fingerprint().to_string())]
    } else {
        let r = ring_from_env(env)?;
        if !r.ring.is_configured() {
            return Err(r.not_configured("no peer key ring is configured"));
        }
        if !cfg.json {
            eprintln!("peer key ring: {}", r.source);
        }
        r.ring
            .keys()
            .map(|(role, k)| (role, k.fingerprint().to_string()))
            .collect()
    };
    if cfg.json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(role, fp)| json!({"role": role, "fingerprint": fp}))
            .collect();
        return output::json(&Value::Array(v));
    }
    for (role, fp) in rows {
        output::line(format!("{role:<8}  {fp}"))?;
    }
    Ok(())
}

/// One key from the first line of standard input (never a terminal: the key would show).
fn read_stdin_key() -> Result<PeerKey> {
    if std::io::stdin().is_terminal() {
        return Err(CliError {
            code: "stdin_is_terminal",
            message: "--stdin reads the peer key from standard input, which is a terminal: typing or pasting it would show it on screen. Pipe it in instead, e.g. `printf %s \"$KEY\" | xai-keys peer fingerprint --stdin`".into(),
        }
        .into());
    }
    let mut buf = Vec::new();
    let read = std::io::stdin()
        .take(64 * 1024)
        .read_to_end(&mut buf)
        .context("reading the peer key from standard input");
    let parsed = read.and_then(|_| {
        let text = std::str::from_utf8(&buf)
            .map_err(|_| anyhow::anyhow!("the peer key on standard input is not UTF-8 text"))?;
        let first = text.lines().next().unwrap_or("");
        Ok(PeerKey::parse(first, "standard input")?)
    });
    // The key now lives (zeroed on drop) in the PeerKey only.
    buf.fill(0);
    std::hint::black_box(&buf);
    parsed
}

fn sign(a: PeerSignArgs, cfg: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    check_method(&a.method)?;
    check_path(&a.path)?;
    let (node_id, node_source) = node_id(a.node_id, env)?;
    let r = ring_from_env(env)?;
    let Some(key) = r.ring.current.as_ref() else {
        return Err(r.not_configured("no current peer key to sign with"));
    };
    let body = match &a.body_file {
        None => Vec::new(),
        Some(p) => read_body(p)?,
    };
    let parts = RequestParts {
        method: &a.method,
        path_and_query: &a.path,
        body: &body,
    };
    let headers =
        sign_peer_request(key, &node_id, &parts, now_epoch()).context("cannot sign the request")?;
    if cfg.json {
        let map: Map<String, Value> = headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        return output::json(&Value::Object(map));
    }
    for (k, v) in &headers {
        output::line(format!("{k}: {v}"))?;
    }
    eprintln!(
        "signed {} {} ({} body bytes) as node {node_id} ({node_source}) with the current key {}; send it within XAI_PEER_MAX_SKEW_SECONDS of now, once",
        a.method.to_ascii_uppercase(),
        output::clean(&a.path),
        body.len(),
        key.fingerprint()
    );
    Ok(())
}

fn check_method(m: &str) -> Result<()> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if m.is_empty() || !m.chars().all(tchar) {
        return Err(CliError {
            code: "invalid_method",
            message: format!(
                "--method {:?} is not an HTTP method: give the method the request is sent with, such as POST",
                output::clean(m)
            ),
        }
        .into());
    }
    Ok(())
}

fn check_path(p: &str) -> Result<()> {
    let why = if !p.starts_with('/') {
        Some(if p.contains("://") {
            "is a URL"
        } else {
            "does not start with '/'"
        })
    } else if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains spaces or control characters (percent-encode them as the request does)")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CliError {
            code: "invalid_path",
            message: format!(
                "--path {:?} {why}: give the path and query exactly as sent, such as /block/receive or /sync?from=10",
                output::clean(p)
            ),
        }
        .into()),
    }
}

/// The node id and where it came from: `--node-id`, `XAI_PEER_NODE_ID`, else the host name
/// (sanitised). A given id is checked, not changed.
fn node_id(flag: Option<String>, env: &dyn Fn(&str) -> Option<String>) -> Result<(String, String)> {
    let given = match flag {
        Some(v) => Some((v, "--node-id".to_string())),
        None => env(VAR_NODE_ID)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v.trim().to_string(), VAR_NODE_ID.to_string())),
    };
    if let Some((id, source)) = given {
        if xai_keys_core::peer::check_node_id(&id).is_err() {
            return Err(CliError {
                code: "invalid_node_id",
                message: format!(
                    "{source} {:?} is not a valid node id: use 1 to {MAX_NODE_ID_CHARS} letters, digits, '-', '_', '.', ':' (the id this node's peers know it by)",
                    output::clean(&id.chars().take(40).collect::<String>())
                ),
            }
            .into());
        }
        return Ok((id, source));
    }
    let Some(id) = xai_keys_core::peer::host_node_id() else {
        return Err(CliError {
            code: "invalid_node_id",
            message: format!(
                "no node id: the host name is unknown; pass --node-id or set {VAR_NODE_ID}"
            ),
        }
        .into());
    };
    Ok((
        id,
        format!(
            "the host name (characters a node id cannot hold become '-'); set {VAR_NODE_ID} to choose"
        ),
    ))
}

/// The body, byte for byte: a file, or standard input for `-`.
fn read_body(p: &Path) -> Result<Vec<u8>> {
    if p == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("cannot read the request body from standard input (--body-file -)")?;
        return Ok(b);
    }
    std::fs::read(p).with_context(|| {
        format!(
            "cannot read the body file {} (--body-file: give a readable file, or `-` for standard input)",
            p.display()
        )
    })
}
