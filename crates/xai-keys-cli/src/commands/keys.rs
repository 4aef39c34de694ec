//! `list`, `issue`, `import`, `revoke`, `disable`, `enable`, `rotate`, `bootstrap-admin`.

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use xai_keys_core::audit::Actor;
use xai_keys_core::ops::{
    IssueRequest, IssuedKey, KeyInfo, KeyManager, ListFilter, RotateRequest, listing_json,
    listing_json_with_usage,
};
use xai_keys_core::store::KeyStore;
use xai_keys_core::{PlainToken, now_epoch};

use crate::CliError;
use crate::args::{
    BootstrapArgs, ImportArgs, ImportEnvArgs, IssueArgs, KeyArg, ListArgs, RevokeArgs, RotateArgs,
};
use crate::config::{Config, parse_duration, ttl_given, ttl_request};
use crate::output::{self, clean, fmt_ago, fmt_time};
use xai_keys_core::envkeys::{self, EnvKey};
use xai_keys_core::record::KeyState;

fn issued_json(k: &IssuedKey) -> Value {
    let r = &k.info.record;
    json!({
        "api_key": k.plaintext.expose(),
        "key_id": k.info.key_id.as_str(),
        "scope": r.scope.as_str(),
        "label": r.label,
        "expires_at": r.expires_at,
        "permanent": r.permanent,
        "created": r.created,
        "fingerprint": k.info.key_id.fingerprint(),
    })
}

fn print_issued(cfg: &Config, k: &IssuedKey, extra: Option<(&str, Value)>) -> Result<()> {
    if k.clamped {
        eprintln!(
            "warning: the requested lifetime exceeds XAI_API_KEY_MAX_TTL_DAYS; the key expires at {}",
            fmt_time(k.info.record.expires_at)
        );
    }
    if cfg.json {
        let mut v = issued_json(k);
        if let (Some((name, val)), Some(obj)) = (extra, v.as_object_mut()) {
            obj.insert(name.into(), val);
        }
        return output::json(&v);
    }
    let r = &k.info.record;
    output::line(format!("api_key:    {}", k.plaintext.expose()))?;
    output::line(format!("key_id:     {}", k.info.key_id))?;
    output::line(format!("scope:      {}", r.scope))?;
    output::line(format!("label:      {}", clean(&r.label)))?;
    output::line(format!("expires_at: {}", fmt_time(r.expires_at)))?;
    if let Some((name, val)) = extra {
        output::line(format!(
            "{name}: {}",
            val.as_str().map_or_else(|| val.to_string(), str::to_string)
        ))?;
    }
    cfg.announce_store();
    eprintln!("Store the api_key now: it is not kept and cannot be shown again.");
    Ok(())
}

fn print_info(cfg: &Config, verb: &str, k: &KeyInfo, now: f64) -> Result<()> {
    if cfg.json {
        let mut v = listing_json(k, now);
        if let Some(o) = v.as_object_mut() {
            o.insert("key_id".into(), k.key_id.as_str().into());
            o.insert(verb.into(), true.into());
            if verb == "revoked" {
                // The record is as it was before its deletion; the key itself is gone.
                o.insert("state".into(), "revoked".into());
            }
        }
        return output::json_line(&v);
    }
    output::line(format!(
        "{verb} {} ({}, {}, label {:?})",
        k.key_id, k.record.scope, k.state, k.record.label
    ))?;
    cfg.announce_store();
    Ok(())
}

/// Runs one lifecycle operation on the configured store as the current OS user, and shows the
/// store's warnings (readable files, a completed interrupted change) whether it succeeds or not.
fn manage<T>(
    cfg: &Config,
    now: f64,
    op: impl FnOnce(&KeyManager<'_>, &Actor, f64) -> xai_keys_core::Result<T>,
) -> Result<T> {
    let store = cfg.open_store()?;
    let mgr = KeyManager::new(&*store, cfg.policy);
    let res = op(&mgr, &Actor::current_cli_user(), now);
    output::warnings(&mgr.take_warnings());
    let res = res?;
    if cfg.require_change_window && mgr.lines_written() > 0 {
        crate::commands::window::warn_if_outside(&*store, now);
    }
    Ok(res)
}

pub fn list(a: ListArgs, cfg: &Config) -> Result<bool> {
    let now = now_epoch();
    let store = cfg.open_store()?;
    let filter = ListFilter {
        scope: a.scope,
        state: a.state.as_deref().map(str::parse).transpose()?,
        expiring_within: a
            .expiring_within
            .as_deref()
            .map(|s| parse_duration("--expiring-within", s).map(|d| d.as_secs_f64()))
            .transpose()?,
    };
    let (keys, warnings, exists) = KeyManager::new(&*store, cfg.policy).list(&filter, now)?;
    output::warnings(&warnings);
    if !exists {
        eprintln!(
            "note: store {} does not exist yet (no keys)",
            cfg.store_label
        );
    }
    // Last-use statistics are a courtesy: the listing works without them.
    let usage = store.usage().unwrap_or_else(|e| {
        output::warnings(&[format!("last-use statistics not shown: {e}")]);
        Default::default()
    });
    // Keys from this process's environment (XAI_API_KEYS …) that the store does not manage:
    // active, never expiring, listed by hash with `source: env`.
    let env_keys: Vec<EnvKey> = unmanaged_env_keys(&*store, now)?
        .into_iter()
        .filter(|k| a.scope.is_none_or(|s| s == k.scope))
        .filter(|_| filter.expiring_within.is_none())
        .filter(|_| filter.state.is_none_or(|s| s == KeyState::Active))
        .collect();
    if let Some(w) = envkeys::warning(&env_keys) {
        output::warnings(&[w]);
    }
    if cfg.json {
        let mut m: serde_json::Map<String, Value> = keys
            .iter()
            .map(|k| {
                let u = usage.get(k.key_id.as_str());
                (k.key_id.to_string(), listing_json_with_usage(k, u, now))
            })
            .collect();
        for k in &env_keys {
            let j = envkeys::listing_json(k.scope, k.var, &k.label(), usage.get(k.key_id.as_str()));
            m.insert(k.key_id.to_string(), j);
        }
        return output::json(&Value::Object(m)).map(|()| true);
    }
    let env_rows = env_keys.iter().map(|k| {
        vec![
            k.key_id.fingerprint().to_string(),
            k.scope.to_string(),
            "active".to_string(),
            "-".to_string(),
            "never".to_string(),
            fmt_ago(usage.get(k.key_id.as_str()).map(|u| u.last_used), now),
            String::new(),
            format!("{} (environment)", k.label()),
        ]
    });
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let r = &k.record;
            vec![
                k.key_id.fingerprint().to_string(),
                r.scope.to_string(),
                k.state.to_string(),
                fmt_time(Some(r.created)),
                fmt_time(r.expires_at),
                fmt_ago(usage.get(k.key_id.as_str()).map(|u| u.last_used), now),
                r.replaced_by.as_deref().map_or(String::new(), |s| {
                    format!("→{}", xai_keys_core::token::short(s))
                }),
                r.label.clone(),
            ]
        })
        .chain(env_rows)
        .collect();
    output::table(
        &[
            "KEY_ID",
            "SCOPE",
            "STATE",
            "CREATED",
            "EXPIRES",
            "LAST USED",
            "ROTATED",
            "LABEL",
        ],
        &rows,
    )?;
    eprintln!("{} key(s) in {}", keys.len(), cfg.store_label);
    if !env_keys.is_empty() {
        eprintln!("{} key(s) from the environment", env_keys.len());
    }
    Ok(true)
}

/// The keys of this process's environment that the store does not manage (absent from it and
/// from its audit log).
fn unmanaged_env_keys(store: &dyn KeyStore, now: f64) -> Result<Vec<EnvKey>> {
    let env = envkeys::from_lookup(&|k| std::env::var(k).ok())?;
    if env.is_empty() {
        return Ok(env);
    }
    let present = store.load(now)?.keys;
    let mut out = Vec::new();
    for k in env {
        if !present.contains_key(&k.key_id) && !envkeys::has_history(store, &k.key_id)? {
            out.push(k);
        }
    }
    Ok(out)
}

/// One key of `import-env`'s report: the key, the result, and label and expiry when imported.
type ImportRow = (EnvKey, &'static str, Option<(String, Option<f64>)>);

/// `import-env`: moves the environment's keys into the store (one audited commit).
pub fn import_env(a: ImportEnvArgs, cfg: &Config) -> Result<bool> {
    let now = now_epoch();
    let env = envkeys::from_lookup(&|k| std::env::var(k).ok())?;
    if env.is_empty() {
        return Err(CliError {
            code: "no_env_keys",
            message: "no key in XAI_API_KEYS, XAI_API_ADMIN_KEYS or XAI_API_ADMIN_TOKEN: run import-env with the gateway's environment (for example `set -a; . /etc/xai-keys/gateway.env; set +a`)".into(),
        }
        .into());
    }
    let ttl = ttl_request(&a.ttl)?;
    let store = cfg.open_store()?;
    let plan: Vec<ImportRow> = if a.dry_run {
        let present = store.load(now)?.keys;
        let mut plan = Vec::new();
        for k in env {
            let r = if present.contains_key(&k.key_id) {
                "already_in_store"
            } else if envkeys::has_history(&*store, &k.key_id)? {
                "retired"
            } else {
                "would_import"
            };
            plan.push((k, r, None));
        }
        plan
    } else {
        manage(cfg, now, |mgr, actor, now| {
            envkeys::import(mgr, &*store, &env, ttl, actor, now)
        })?
        .into_iter()
        .map(|(k, o)| match o {
            envkeys::Imported::Added(r) => (k, "imported", Some((r.label, r.expires_at))),
            envkeys::Imported::AlreadyInStore => (k, "already_in_store", None),
            envkeys::Imported::Retired => (k, "retired", None),
        })
        .collect()
    };
    if cfg.json {
        let items: Vec<Value> = plan
            .iter()
            .map(|(k, r, added)| {
                let mut v = json!({
                    "key_id": k.key_id.as_str(),
                    "variable": k.var,
                    "position": k.position,
                    "scope": k.scope.as_str(),
                    "result": r,
                });
                if let (Some((label, exp)), Some(m)) = (added, v.as_object_mut()) {
                    m.insert("label".into(), label.clone().into());
                    m.insert("expires_at".into(), (*exp).into());
                }
                v
            })
            .collect();
        output::json(&json!({ "keys": items, "dry_run": a.dry_run }))?;
    } else {
        let rows: Vec<Vec<String>> = plan
            .iter()
            .map(|(k, r, added)| {
                vec![
                    k.key_id.fingerprint().to_string(),
                    format!("{}#{}", k.var, k.position),
                    k.scope.to_string(),
                    (*r).to_string(),
                    added
                        .as_ref()
                        .map_or(String::new(), |(_, exp)| fmt_time(*exp)),
                ]
            })
            .collect();
        output::table(&["KEY_ID", "FROM", "SCOPE", "RESULT", "EXPIRES"], &rows)?;
    }
    let retired = plan.iter().filter(|(_, r, _)| *r == "retired").count();
    if retired > 0 {
        eprintln!(
            "warning: {retired} key(s) in the environment were revoked earlier and are not imported (gateways refuse them): remove them from the environment"
        );
    }
    if !a.dry_run {
        eprintln!(
            "next: remove these keys from the environment (XAI_API_KEYS, XAI_API_ADMIN_KEYS, XAI_API_ADMIN_TOKEN) and restart the gateways; from now on the store decides (expiry, revocation, audit)"
        );
    }
    Ok(true)
}

fn read_stdin_secret(flag: &str, what: &str) -> Result<PlainToken> {
    if std::io::stdin().is_terminal() {
        // Typing or pasting would show the secret on screen (and in the scrollback).
        return Err(CliError {
            code: "stdin_is_terminal",
            message: format!(
                "{flag} reads {what} from standard input, which is a terminal: typing or pasting it would show it on screen. Pipe it in instead, e.g. `printf %s \"$SECRET\" | xai-keys … {flag}`"
            ),
        }
        .into());
    }
    let mut s = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut s)
        .with_context(|| format!("reading {what} from standard input"))?;
    let secret = PlainToken::from_supplied(s.trim_end_matches(['\n', '\r']));
    s.clear();
    Ok(secret?)
}

pub fn issue(a: IssueArgs, cfg: &Config) -> Result<bool> {
    let now = now_epoch();
    let ttl = ttl_request(&a.ttl)?;
    let secret = if a.plaintext_stdin {
        Some(read_stdin_secret("--plaintext-stdin", "the key")?)
    } else {
        None
    };
    let supplied = secret.is_some();
    let k = manage(cfg, now, |mgr, actor, now| {
        mgr.issue(
            IssueRequest {
                scope: a.scope,
                label: a.label,
                ttl,
                secret,
            },
            actor,
            now,
        )
    })?;
    if supplied {
        // Never echo a caller's secret back: report the id only.
        let info = &k.info;
        if cfg.json {
            let mut v = issued_json(&k);
            if let Some(o) = v.as_object_mut() {
                o.shift_remove("api_key");
            }
            return output::json(&v).map(|()| true);
        }
        return print_info(cfg, "issued", info, now).map(|()| true);
    }
    print_issued(cfg, &k, None)?;
    Ok(true)
}

pub fn import(a: ImportArgs, cfg: &Config) -> Result<bool> {
    let now = now_epoch();
    let ttl = ttl_request(&a.ttl)?;
    let k = manage(cfg, now, |mgr, actor, now| {
        mgr.import(&a.key_id, a.scope, &a.label, ttl, actor, now)
    })?;
    print_info(cfg, "imported", &k, now)?;
    Ok(true)
}

pub fn revoke(a: RevokeArgs, cfg: &Config) -> Result<bool> {
    let now = now_epoch();
    let if_idle = a
        .if_idle
        .as_deref()
        .map(|s| parse_duration("--if-idle", s).map(|d| d.as_secs_f64()))
        .transpose()?;
    // The core checks `--reason` (before it writes anything) and names it in its error
    // (`invalid_reason`), and refuses a key used within `--if-idle` (`recently_used`).
    let k = manage(cfg, now, |mgr, actor, now| {
        mgr.revoke_guarded(&a.key_id, a.reason.as_deref(), if_idle, None, actor, now)
    });
    let k = match k {
        Err(e)
            if matches!(
                e.downcast_ref::<xai_keys_core::Error>(),
                Some(xai_keys_core::Error::NotFound(_))
            ) =>
        {
            // Not in the store: say so plainly if it is one of the environment's keys.
            let env = envkeys::from_lookup(&|k| std::env::var(k).ok()).unwrap_or_default();
            match env.iter().find(|k| {
                a.key_id.len() >= 12
                    && k.key_id
                        .as_str()
                        .starts_with(&a.key_id.to_ascii_lowercase())
            }) {
                Some(k) => {
                    return Err(CliError {
                        code: "env_key",
                        message: format!(
                            "key {} comes from {} (entry {}) in the environment, not from the store: it cannot be revoked. Remove it from the environment of every gateway and restart them (or `xai-keys import-env` first, then revoke it here)",
                            k.key_id.fingerprint(),
                            k.var,
                            k.position
                        ),
                    }
                    .into());
                }
                None => return Err(e),
            }
        }
        other => other?,
    };
    print_info(cfg, "revoked", &k, now)?;
    Ok(true)
}

pub fn set_disabled(a: KeyArg, disabled: bool, cfg: &Config) -> Result<bool> {
    let now = now_epoch();
    let k = manage(cfg, now, |mgr, actor, now| {
        mgr.set_disabled(&a.key_id, disabled, actor, now)
    })?;
    print_info(cfg, if disabled { "disabled" } else { "enabled" }, &k, now)?;
    Ok(true)
}

pub fn rotate(a: RotateArgs, cfg: &Config) -> Result<bool> {
    let now = now_epoch();
    let grace = parse_duration("--grace", &a.grace)?.as_secs_f64();
    let ttl = if ttl_given(&a.ttl) {
        Some(ttl_request(&a.ttl)?)
    } else {
        None
    };
    let r = manage(cfg, now, |mgr, actor, now| {
        mgr.rotate(
            &a.key_id,
            RotateRequest {
                grace_secs: grace,
                scope: a.scope,
                label: a.label,
                ttl,
            },
            actor,
            now,
        )
    })?;
    print_issued(
        cfg,
        &r.new,
        Some(("replaced", Value::from(r.old_key_id.as_str()))),
    )?;
    if grace > 0.0 {
        eprintln!(
            "old key {} keeps working until {}",
            r.old_key_id,
            fmt_time(Some(r.old_expires_at))
        );
    } else {
        eprintln!("old key {} revoked", r.old_key_id);
    }
    Ok(true)
}

pub fn bootstrap(a: BootstrapArgs, cfg: &Config) -> Result<bool> {
    let now = now_epoch();
    let ttl = ttl_request(&a.ttl)?;
    let secret = if a.secret_stdin {
        read_stdin_secret("--secret-stdin", "the bootstrap secret")?
    } else if let Some(s) = a.secret.as_deref() {
        eprintln!(
            "warning: --secret is visible in the process list; prefer --secret-stdin or XAI_BOOTSTRAP_ADMIN_KEY"
        );
        PlainToken::from_supplied(s)?
    } else {
        match std::env::var("XAI_BOOTSTRAP_ADMIN_KEY") {
            Ok(s) if !s.trim().is_empty() => PlainToken::from_supplied(&s)?,
            _ => {
                return Err(crate::CliError {
                    code: "missing_secret",
                    message: "missing_secret: provide --secret-stdin, --secret or XAI_BOOTSTRAP_ADMIN_KEY".into(),
                }
                .into());
            }
        }
    };
    let b = manage(cfg, now, |mgr, actor, now| {
        mgr.bootstrap_admin(&secret, &a.label, ttl, actor, now)
    })?;
    drop(secret);
    let r = &b.info.record;
    if cfg.json {
        output::json(&json!({
            "operation": "bootstrap_admin",
            "key_id": b.info.key_id.as_str(),
            "label": r.label,
            "fingerprint": b.info.key_id.fingerprint(),
            "scope": r.scope.as_str(),
            "expires_at": r.expires_at,
            "permanent": r.permanent,
            "created": b.created,
            "state": b.info.state.as_str(),
        }))?;
    } else {
        let what = if b.created {
            "registered admin key"
        } else {
            "admin key already registered"
        };
        output::line(format!(
            "{what}: key_id {} (fingerprint {}), {}, expires {}",
            b.info.key_id,
            b.info.key_id.fingerprint(),
            b.info.state,
            fmt_time(r.expires_at)
        ))?;
        cfg.announce_store();
    }
    Ok(true)
}
