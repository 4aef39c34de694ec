//! Who may reach what beyond keys: the admin network allow-list and the emergency lockdown.
//!
//! `XAI_ADMIN_ALLOWED_NETWORKS` fences `/admin/*` to client networks (the runbook's "firewall
//! `/admin/*` to VPN networks"), judged on the socket address unless the request came through a
//! trusted proxy ([`crate::credentials::client_addr`]). Given as a CIDR list it is fixed for the
//! process; given as a file path (`/etc/xai-keys/admin-networks`, one network per line or
//! comma-separated, `#` comments) it is re-read when the file changes and on SIGHUP, and a file
//! that cannot be used keeps the previous list in force.
//!
//! Lockdown ([`xai_keys_core::lockdown`]) is read from the store every poll, so every gateway
//! on the store follows `xai-keys lockdown on|off` within one poll interval. While it is on,
//! keys are required on every non-public route and `/admin/*` is limited to the lockdown's
//! networks (loopback unless it names others), whatever the allow-list says. A lockdown file
//! that cannot be parsed counts as a lockdown to loopback (fail closed); one that cannot be read
//! at all (an I/O error) keeps the last state seen.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde_json::{Value, json};
use xai_keys_core::error::Error as CoreError;
use xai_keys_core::lockdown::Lockdown;
use xai_keys_core::store::KeyStore;

use crate::credentials::{canonical, parse_networks};
use crate::relock;

/// The variable naming the admin allow-list.
pub const ADMIN_NETWORKS_VAR: &str = "XAI_ADMIN_ALLOWED_NETWORKS";
/// Largest allow-list file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Where the admin allow-list comes from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum AdminNetworksSource {
    /// Unset: `/admin/*` is reachable from anywhere (keys still required).
    #[default]
    Anywhere,
    /// A CIDR list given in the variable.
    List(Vec<IpNet>),
    /// A file of networks, re-read on change and on SIGHUP.
    File(PathBuf),
}

impl AdminNetworksSource {
    /// Reads `XAI_ADMIN_ALLOWED_NETWORKS`: a value starting with `/` is a file (checked now, so
    /// a bad file stops the start instead of opening the admin API), anything else a list.
    pub fn from_value(raw: Option<&str>) -> Result<Self, String> {
        let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(AdminNetworksSource::Anywhere);
        };
        if raw.starts_with('/') {
            let path = PathBuf::from(raw);
            read_networks_file(&path)?;
            return Ok(AdminNetworksSource::File(path));
        }
        let nets = parse_networks(ADMIN_NETWORKS_VAR, raw)?;
        if nets.is_empty() {
            return Err(format!(
                "{ADMIN_NETWORKS_VAR}={raw:?} names no network; unset it to allow any client, or give CIDR networks such as 10.8.0.0/16,fd00:8::/48"
            ));
        }
        Ok(AdminNetworksSource::List(nets))
    }
}

/// Parses an allow-list file: networks separated by commas or lines, `#` starts a comment. An
/// empty file allows no client at all (fail closed), which the gateway reports.
pub fn read_networks_file(path: &Path) -> Result<Vec<IpNet>, String> {
    let bytes = xai_keys_core::store::read_small_regular_file(path, MAX_FILE_BYTES)
        .map_err(|e| format!("{ADMIN_NETWORKS_VAR}: {e}"))?
        .ok_or_else(|| {
            format!(
                "{ADMIN_NETWORKS_VAR}: {} does not exist (create it with one CIDR network per line)",
                path.display()
            )
        })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{ADMIN_NETWORKS_VAR}: {} is not UTF-8 text", path.display()))?;
    let joined: Vec<&str> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    parse_networks(
        &format!("{ADMIN_NETWORKS_VAR} ({})", path.display()),
        &joined.join(","),
    )
}

/// The admin networks in force.
#[derive(Debug, Clone, PartialEq)]
struct Fence {
    /// `None`: anywhere.
    allowed: Option<Vec<IpNet>>,
}

/// The lockdown as last read from the store.
#[derive(Debug, Clone, Default)]
struct LockdownSeen {
    lockdown: Option<Lockdown>,
    networks: Vec<IpNet>,
    /// Why the lockdown file could not be used (`Some` with `lockdown: None` never happens:
    /// an unusable file is a lockdown to loopback).
    problem: Option<String>,
}

impl LockdownSeen {
    fn active(&self) -> bool {
        self.lockdown.is_some() || self.problem.is_some()
    }
}

/// Why `/admin/*` was refused to a client.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRefusal {
    pub client: IpAddr,
    /// `lockdown` or `allow_list`.
    pub by: &'static str,
}

/// The allow-list and lockdown state of one gateway.
pub struct AccessControl {
    source: AdminNetworksSource,
    fence: ArcSwap<Fence>,
    lockdown: ArcSwap<LockdownSeen>,
    /// The allow-list file's identity when last read (to notice changes), and the last
    /// problem reading it.
    file_state: Mutex<(Option<FileStamp>, Option<String>)>,
}

type FileStamp = (u64, u64, i64, i64, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

fn loopback() -> Vec<IpNet> {
    xai_keys_core::lockdown::LOOPBACK
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

impl AccessControl {
    /// Starts with the configured allow-list (a file source is read now) and no lockdown; the
    /// first [`AccessControl::poll_lockdown`] reads the store's.
    pub fn new(source: AdminNetworksSource) -> Result<Self, String> {
        let (allowed, st) = match &source {
            AdminNetworksSource::Anywhere => (None, None),
            AdminNetworksSource::List(l) => (Some(l.clone()), None),
            AdminNetworksSource::File(p) => (Some(read_networks_file(p)?), stamp(p)),
        };
        Ok(AccessControl {
            source,
            fence: ArcSwap::from_pointee(Fence { allowed }),
            lockdown: ArcSwap::from_pointee(LockdownSeen::default()),
            file_state: Mutex::new((st, None)),
        })
    }

    /// Whether keys are required on every non-public route regardless of configuration.
    pub fn lockdown_active(&self) -> bool {
        self.lockdown.load().active()
    }

    /// Checks a client of `/admin/*` (its address as [`crate::credentials::client_addr`]
    /// judged it).
    pub fn check_admin_client(&self, client: IpAddr) -> Result<(), NetworkRefusal> {
        let client = canonical(client);
        let ld = self.lockdown.load();
        if ld.active() {
            return if ld.networks.iter().any(|n| n.contains(&client)) {
                Ok(())
            } else {
                Err(NetworkRefusal {
                    client,
                    by: "lockdown",
                })
            };
        }
        match &self.fence.load().allowed {
            None => Ok(()),
            Some(nets) if nets.iter().any(|n| n.contains(&client)) => Ok(()),
            Some(_) => Err(NetworkRefusal {
                client,
                by: "allow_list",
            }),
        }
    }

    /// Reads the store's lockdown; returns `Some(now_active)` when it changed.
    pub fn poll_lockdown(&self, store: &dyn KeyStore) -> Option<bool> {
        let before = self.lockdown.load_full();
        let seen = match store.lockdown() {
            Ok(None) => LockdownSeen::default(),
            Ok(Some(l)) => {
                let networks: Vec<IpNet> = l
                    .effective_networks()
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .collect();
                LockdownSeen {
                    lockdown: Some(l),
                    networks,
                    problem: None,
                }
            }
            Err(e @ CoreError::CorruptLockdown { .. }) => LockdownSeen {
                lockdown: None,
                networks: loopback(),
                problem: Some(e.to_string()),
            },
            Err(e) => {
                // Cannot read at all (permissions, I/O): keep what was last seen.
                let msg = e.to_string();
                if before.problem.as_deref() != Some(msg.as_str()) {
                    tracing::error!(problem = %msg, "cannot read the lockdown state; keeping the last state seen");
                }
                return None;
            }
        };
        let changed = before.active() != seen.active()
            || before.lockdown != seen.lockdown
            || before.problem != seen.problem;
        if !changed {
            return None;
        }
        let active = seen.active();
        match (&seen.lockdown, &seen.problem) {
            (_, Some(p)) => {
                tracing::error!(problem = %p, "lockdown file unusable: treated as a lockdown with /admin/* open to loopback only")
            }
            (Some(l), None) => tracing::warn!(
                reason = %l.reason,
                ticket = %l.ticket,
                admin_networks = ?l.effective_networks(),
                "LOCKDOWN ON: keys required on every non-public route; /admin/* limited to the lockdown networks"
            ),
            (None, None) => tracing::warn!("lockdown off: normal access rules restored"),
        }
        self.lockdown.store(Arc::new(seen));
        Some(active)
    }

    /// Re-reads the allow-list file (SIGHUP). `Ok(false)` when the list is not a file; on
    /// error the previous list stays in force.
    pub fn reload_networks(&self) -> Result<bool, String> {
        let AdminNetworksSource::File(path) = &self.source else {
            return Ok(false);
        };
        let mut st = relock(&self.file_state);
        let stamp_now = stamp(path);
        match read_networks_file(path) {
            Ok(nets) => {
                let n = nets.len();
                let new = Fence {
                    allowed: Some(nets),
                };
                if **self.fence.load() != new {
                    tracing::warn!(
                        file = %path.display(),
                        networks = n,
                        "admin network allow-list reloaded"
                    );
                    self.fence.store(Arc::new(new));
                }
                *st = (stamp_now, None);
                Ok(true)
            }
            Err(e) => {
                *st = (stamp_now, Some(e.clone()));
                Err(e)
            }
        }
    }

    /// Re-reads the allow-list file when it changed since the last read (the poller).
    pub fn poll_networks_file(&self) {
        let AdminNetworksSource::File(path) = &self.source else {
            return;
        };
        let changed = relock(&self.file_state).0 != stamp(path);
        if changed && let Err(e) = self.reload_networks() {
            tracing::error!(problem = %e, "admin network allow-list file unusable; the previous list stays in force");
        }
    }

    /// For `/health` and the admin API.
    pub fn status_json(&self) -> Value {
        let ld = self.lockdown.load();
        let lockdown = match (&ld.lockdown, &ld.problem) {
            (Some(l), _) => l.to_json(),
            (None, Some(p)) => json!({
                "active": true,
                "problem": p,
                "admin_networks": xai_keys_core::lockdown::LOOPBACK,
            }),
            (None, None) => json!({"active": false}),
        };
        let fence = self.fence.load();
        let allow = match (&self.source, &fence.allowed) {
            (_, None) => json!({"restricted": false}),
            (src, Some(nets)) => {
                let mut v = json!({
                    "restricted": true,
                    "networks": nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                });
                if let AdminNetworksSource::File(p) = src {
                    v["file"] = json!(p.display().to_string());
                    if let Some(problem) = &relock(&self.file_state).1 {
                        v["problem"] = json!(problem);
                    }
                }
                v
            }
        };
        json!({"lockdown": lockdown, "admin_allow_list": allow})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_allow_list_admits_its_networks_only() {
        let ac = AccessControl::new(
            AdminNetworksSource::from_value(Some("10.8.0.0/16, fd00:8::/48")).unwrap(),
        )
        .unwrap();
        assert!(ac.check_admin_client(ip("10.8.3.4")).is_ok());
        assert!(ac.check_admin_client(ip("fd00:8::99")).is_ok());
        // An IPv4-mapped IPv6 socket address is judged as IPv4.
        assert!(ac.check_admin_client(ip("::ffff:10.8.0.1")).is_ok());
        let r = ac.check_admin_client(ip("10.9.0.1")).unwrap_err();
        assert_eq!(r.by, "allow_list");
        assert!(ac.check_admin_client(ip("fd00:9::1")).is_err());
        assert!(!ac.lockdown_active());
    }

    #[test]
    fn unset_allows_anyone_and_an_empty_list_is_an_error() {
        let ac = AccessControl::new(AdminNetworksSource::from_value(None).unwrap()).unwrap();
        assert!(ac.check_admin_client(ip("203.0.113.9")).is_ok());
        let e = AdminNetworksSource::from_value(Some(" , ")).unwrap_err();
        assert!(e.contains(ADMIN_NETWORKS_VAR), "{e}");
        let e = AdminNetworksSource::from_value(Some("10.0.0.0/8,vpn")).unwrap_err();
        assert!(e.contains("vpn"), "{e}");
    }

    #[test]
    fn a_file_is_reread_and_a_bad_file_keeps_the_last_list() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("admin-networks");
        std::fs::write(&f, "# VPN\n10.8.0.0/16\n\n192.0.2.1 # bastion\n").unwrap();
        let src = AdminNetworksSource::from_value(Some(f.to_str().unwrap())).unwrap();
        let ac = AccessControl::new(src).unwrap();
        assert!(ac.check_admin_client(ip("192.0.2.1")).is_ok());
        assert!(ac.check_admin_client(ip("192.0.2.2")).is_err());
        std::fs::write(&f, "192.0.2.0/24\n").unwrap();
        assert_eq!(ac.reload_networks(), Ok(true));
        assert!(ac.check_admin_client(ip("192.0.2.2")).is_ok());
        assert!(ac.check_admin_client(ip("10.8.0.1")).is_err());
        // Half-written: refused, the last list stays, and the status says why.
        std::fs::write(&f, "192.0.2.0/2").unwrap();
        std::fs::write(&f, "192.0.2.0/24\n10.8.0.0/").unwrap();
        assert!(ac.reload_networks().is_err());
        assert!(ac.check_admin_client(ip("192.0.2.2")).is_ok());
        assert!(ac.status_json()["admin_allow_list"]["problem"].is_string());
        // A missing file at start stops the start.
        let e = AdminNetworksSource::from_value(Some("/nonexistent/xai-admin-nets")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn lockdown_overrides_the_allow_list_and_fails_closed() {
        use xai_keys_core::audit::Actor;
        use xai_keys_core::lockdown::{EngageLockdown, engage, release};
        use xai_keys_core::store::{Durability, FileStore, FileStoreOptions};
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("keys/api_keys.json");
        let store = FileStore::new(
            &path,
            FileStoreOptions {
                durability: Durability::UnsafeNoSync,
                ..Default::default()
            },
        )
        .unwrap();
        let actor = Actor::Cli {
            user: "t".into(),
            host: "h".into(),
        };
        let ac = AccessControl::new(AdminNetworksSource::Anywhere).unwrap();
        assert_eq!(ac.poll_lockdown(&store), None);
        engage(
            &store,
            &EngageLockdown {
                reason: "incident".into(),
                admin_networks: vec!["10.8.0.0/16".into()],
                ..Default::default()
            },
            &actor,
            1.0,
        )
        .unwrap();
        assert_eq!(ac.poll_lockdown(&store), Some(true));
        assert_eq!(ac.poll_lockdown(&store), None, "no change, no report");
        assert!(ac.lockdown_active());
        assert!(ac.check_admin_client(ip("10.8.1.1")).is_ok());
        assert_eq!(
            ac.check_admin_client(ip("203.0.113.9")).unwrap_err().by,
            "lockdown"
        );
        // Loopback is not implied when networks are given.
        assert!(ac.check_admin_client(ip("127.0.0.1")).is_err());
        release(&store, "over", &actor, 2.0).unwrap();
        assert_eq!(ac.poll_lockdown(&store), Some(false));
        assert!(ac.check_admin_client(ip("203.0.113.9")).is_ok());
        // A damaged file: a lockdown to loopback, reported.
        std::fs::write(t.path().join("keys/api_keys.json.lockdown"), "garbage").unwrap();
        assert_eq!(ac.poll_lockdown(&store), Some(true));
        assert!(ac.check_admin_client(ip("127.0.0.1")).is_ok());
        assert!(ac.check_admin_client(ip("::1")).is_ok());
        assert!(ac.check_admin_client(ip("10.8.1.1")).is_err());
        assert!(ac.status_json()["lockdown"]["problem"].is_string());
    }
}
