//! `verify`: the runbook's "confirm integrity" step.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use xai_keys_core::audit::Actor;
use xai_keys_core::now_epoch;
use xai_keys_core::store::{Check, VerifyOptions};
use xai_keys_core::volume;

use crate::args::VerifyArgs;
use crate::config::Config;
use crate::output;

pub fn verify(a: VerifyArgs, cfg: &Config) -> Result<bool> {
    let store = cfg.open_store()?;
    let mut rep = store.verify(
        &Actor::current_cli_user(),
        now_epoch(),
        VerifyOptions { adopt: a.adopt },
    )?;
    // Runbook §1: the store MUST reside on an encrypted volume. On etcd, the volumes are the
    // members': xai-keys can check only that the way there is encrypted.
    let vol = volume::inspect(&cfg.store_path, &ZfsCommand::from_env());
    let (status, detail) = match (&cfg.etcd, &vol) {
        (Some(u), _) if u.tls => (
            "ok",
            "the store is in etcd over TLS (etcds://); the members' data directories must be on encrypted volumes (not visible from here: check each member)".to_string(),
        ),
        (Some(_), _) => (
            if a.require_encrypted { "fail" } else { "warn" },
            "the store is in etcd over plain etcd:// (keys' hashes and the audit log cross the network unencrypted): use etcds:// with XAI_ETCD_CA_FILE, and encrypted volumes on every member".to_string(),
        ),
        (None, vol) => match vol {
        Ok(v) if v.encryption.is_encrypted() => ("ok", v.summary()),
        Ok(v) => (
            if a.require_encrypted { "fail" } else { "warn" },
            format!(
                "{}; the runbook requires an encrypted volume: move the store onto LUKS/dm-crypt, \
                 an encrypted ZFS dataset (or a Vault Agent tmpfs) and set XAI_API_KEY_STORE",
                v.summary()
            ),
        ),
        Err(e) => (
            if a.require_encrypted { "fail" } else { "warn" },
            format!("cannot tell what storage holds the store: {e}"),
        ),
        },
    };
    rep.checks.push(Check {
        name: "encrypted_volume".to_string(),
        status,
        detail,
    });
    if status == "fail" {
        rep.ok = false;
    }
    if cfg.json {
        let mut v = serde_json::to_value(&rep)?;
        if let (Some(obj), Ok(report), None) = (v.as_object_mut(), &vol, &cfg.etcd) {
            obj.insert("volume".to_string(), serde_json::to_value(report)?);
        }
        output::json(&v)?;
    } else {
        output::line(format!("store: {}", rep.store))?;
        output::line(format!("log:   {}", rep.log))?;
        let rows: Vec<Vec<String>> = rep
            .checks
            .iter()
            .map(|c| vec![c.status.to_uppercase(), c.name.clone(), c.detail.clone()])
            .collect();
        output::table(&["STATUS", "CHECK", "DETAIL"], &rows)?;
        output::line(if rep.ok {
            "integrity: OK"
        } else {
            "integrity: FAILED"
        })?;
    }
    if !rep.ok {
        let failed: Vec<&str> = rep
            .checks
            .iter()
            .filter(|c| c.status == "fail")
            .map(|c| c.name.as_str())
            .collect();
        let message = format!(
            "integrity check failed ({}): fix what each failing check names (a damaged store: `xai-keys restore BACKUP`)",
            failed.join(", ")
        );
        if cfg.json {
            // With -o json every error on stderr is one JSON object.
            let v = serde_json::json!({
                "error": "integrity_failed",
                "message": message,
                "store": rep.store,
            });
            eprintln!("{v}");
        } else {
            eprintln!("error: {message}");
        }
    }
    Ok(rep.ok)
}

/// Asks the `zfs` binary about a dataset for the encrypted-volume check: found by absolute path
/// in `PATH` (relative entries skipped), then in the sbin directories where it lives when an
/// operator's `PATH` lacks them; run with `LC_ALL=C`, no stdin, and killed after `timeout`.
struct ZfsCommand {
    search: Vec<PathBuf>,
    timeout: Duration,
}

impl ZfsCommand {
    fn from_env() -> Self {
        Self::new(std::env::var_os("PATH"), Duration::from_secs(5))
    }

    fn new(path: Option<OsString>, timeout: Duration) -> Self {
        let mut search: Vec<PathBuf> = path
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        search.retain(|d| d.is_absolute());
        for d in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
            let d = PathBuf::from(d);
            if !search.contains(&d) {
                search.push(d);
            }
        }
        ZfsCommand { search, timeout }
    }

    fn binary(&self) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        self.search.iter().map(|d| d.join("zfs")).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }
}

impl volume::ZfsProperties for ZfsCommand {
    fn get(&self, dataset: &str) -> Result<String, String> {
        let Some(bin) = self.binary() else {
            return Err(
                "`zfs` not found (searched PATH, /usr/sbin, /sbin, /usr/local/sbin)".to_string(),
            );
        };
        let mut child = Command::new(&bin)
            .args(volume::ZFS_GET_ARGS)
            .arg(dataset)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        // Read both pipes while waiting, so a chatty child cannot block on a full pipe.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(p) = pipe {
                    let _ = p.take(1 << 20).read_to_end(&mut buf);
                }
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not answer within {} s",
                        bin.display(),
                        self.timeout.as_secs_f32()
                    ));
                }
                Err(e) => return Err(format!("cannot wait for {}: {e}", bin.display())),
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            let first = stderr.lines().next().unwrap_or("").trim();
            return Err(format!(
                "`{} get` failed ({status}): {first}",
                bin.display()
            ));
        }
        Ok(stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use volume::ZfsProperties;

    /// A directory holding an executable `zfs` script with `body`.
    fn fake_zfs(body: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("zfs");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn with_path(d: &std::path::Path, timeout: Duration) -> ZfsCommand {
        let mut z = ZfsCommand::new(Some(d.as_os_str().to_owned()), timeout);
        z.search.truncate(1); // not the real sbin directories of this machine
        z
    }

    #[test]
    fn zfs_is_run_with_the_get_arguments_and_its_output_returned() {
        let d = fake_zfs(
            r#"printf 'encryption\taes-256-gcm\nkeystatus\tavailable\nencryptionroot\t%s\n' "$7"; [ "$*" = "get -H -p -o property,value encryption,keystatus,encryptionroot tank/a b" ] || exit 3"#,
        );
        let z = with_path(d.path(), Duration::from_secs(10));
        let out = z.get("tank/a b").unwrap();
        assert_eq!(
            volume::parse_zfs_encryption("tank/a b", &out)
                .unwrap()
                .describe(),
            "ZFS native encryption (aes-256-gcm) on tank/a b"
        );
    }

    #[test]
    fn a_missing_failing_or_hanging_zfs_is_a_reason_not_an_answer() {
        let empty = tempfile::tempdir().unwrap();
        let e = with_path(empty.path(), Duration::from_secs(1))
            .get("tank")
            .unwrap_err();
        assert!(e.contains("`zfs` not found"), "{e}");

        let d = fake_zfs("echo \"cannot open 'tank': dataset does not exist\" >&2; exit 1");
        let e = with_path(d.path(), Duration::from_secs(10))
            .get("tank")
            .unwrap_err();
        assert!(
            e.contains("failed") && e.contains("dataset does not exist"),
            "{e}"
        );

        let d = fake_zfs("exec sleep 30");
        let start = Instant::now();
        let e = with_path(d.path(), Duration::from_millis(300))
            .get("tank")
            .unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));

        // Relative PATH entries are never searched.
        let z = ZfsCommand::new(
            Some(OsString::from("bin:/nonexistent")),
            Duration::from_secs(1),
        );
        assert!(z.search.iter().all(|p| p.is_absolute()));
    }
}
