//! `POST /admin/api-keys` under concurrent admin clients, then a check that every key the
//! gateway handed out is on disk and audited exactly once (`bench/run-gateway`, issue 3).
//!
//!     admin_issue --gateway 127.0.0.1:PORT --admin-key KEY --store STORE \
//!                 [--clients 32] [--requests 20]
//!
//! `--clients` threads, each with its own keep-alive connection, start together (a barrier) and
//! send `--requests` issue requests each, back to back, timing each one. Afterwards:
//! * every `key_id` returned with a 201 must appear exactly once in the store file (counted both
//!   in the parsed object and as the literal `"<key_id>":` in the file's text, so a duplicated
//!   JSON member cannot hide), and
//! * in exactly one `issue` line of the audit log `<store>.log` (JSON lines with `action` and
//!   `key_id`).
//!
//! Prints one JSON object on stdout; exits 1 if any check fails.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use support::{Conn, Error, arg, pct, required};

struct Reply {
    status: u16,
    ms: f64,
    key_id: Option<String>,
    error: Option<String>,
}

fn main() -> Result<(), Error> {
    let gw = required("--gateway")?;
    let admin_key = required("--admin-key")?;
    let store = required("--store")?;
    let clients: usize = arg("--clients").map_or(Ok(32), |s| s.parse())?;
    let per_client: usize = arg("--requests").map_or(Ok(20), |s| s.parse())?;

    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for c in 0..clients {
        let (gw, key, barrier) = (gw.clone(), admin_key.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || -> Vec<Reply> {
            let mut conn = Conn::new(&gw);
            let mut out = Vec::with_capacity(per_client);
            barrier.wait();
            for r in 0..per_client {
                let body = format!(r#"{{"label":"bench-admin-{c:02}-{r:03}","scope":"user"}}"#);
                let t = Instant::now();
                let res = conn.request(
                    "POST",
                    "/admin/api-keys",
                    &[
                        ("X-Admin-Token", key.as_str()),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                );
                let ms = t.elapsed().as_secs_f64() * 1e3;
                out.push(match res {
                    Ok((status, body)) => {
                        let v: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
                        let field = |f: &str| {
                            v.as_ref()
                                .and_then(|v| v.get(f))
                                .and_then(|x| x.as_str())
                                .map(str::to_string)
                        };
                        Reply {
                            status,
                            ms,
                            key_id: field("key_id"),
                            error: if status == 201 { None } else { field("code") },
                        }
                    }
                    Err(e) => Reply {
                        status: 0,
                        ms,
                        key_id: None,
                        error: Some(e.to_string()),
                    },
                });
            }
            out
        }));
    }
    barrier.wait();
    let started = Instant::now();
    let mut replies = Vec::new();
    for h in handles {
        replies.extend(h.join().map_err(|_| "a client thread panicked")?);
    }
    let wall = started.elapsed().as_secs_f64();

    let mut by_status: HashMap<u16, usize> = HashMap::new();
    let mut errors: HashMap<String, usize> = HashMap::new();
    for r in &replies {
        *by_status.entry(r.status).or_default() += 1;
        if let Some(e) = &r.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let created: Vec<&str> = replies
        .iter()
        .filter(|r| r.status == 201)
        .filter_map(|r| r.key_id.as_deref())
        .collect();
    let created_201 = by_status.get(&201).copied().unwrap_or(0);
    let mut lat: Vec<f64> = replies.iter().map(|r| r.ms).collect();
    lat.sort_by(f64::total_cmp);

    // On disk: the store file and the audit log.
    let text = std::fs::read_to_string(&store)?;
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)?;
    let mut issue_lines: HashMap<String, usize> = HashMap::new();
    let log = std::fs::read_to_string(format!("{store}.log"))?;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v.get("action").and_then(|a| a.as_str()) == Some("issue")
            && let Some(k) = v.get("key_id").and_then(|k| k.as_str())
        {
            *issue_lines.entry(k.to_string()).or_default() += 1;
        }
    }
    let mut distinct = created.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mut not_in_store = 0;
    let mut not_once_in_text = 0;
    let mut not_once_audited = 0;
    for k in &created {
        if !parsed.contains_key(*k) {
            not_in_store += 1;
        }
        if text.matches(&format!("\"{k}\":")).count() != 1 {
            not_once_in_text += 1;
        }
        if issue_lines.get(*k).copied().unwrap_or(0) != 1 {
            not_once_audited += 1;
        }
    }
    let ok = created.len() == created_201
        && distinct.len() == created.len()
        && not_in_store == 0
        && not_once_in_text == 0
        && not_once_audited == 0;
    let out = serde_json::json!({
        "clients": clients,
        "requests": replies.len(),
        "created_201": created_201,
        "non_201": replies.len() - created_201,
        "status_counts": by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<HashMap<_, _>>(),
        "error_codes": errors,
        "wall_s": wall,
        "issues_per_s": created_201 as f64 / wall,
        "p50_ms": pct(&lat, 0.5),
        "p90_ms": pct(&lat, 0.9),
        "p99_ms": pct(&lat, 0.99),
        "max_ms": lat.last().copied().unwrap_or(f64::NAN),
        "store_keys_after": parsed.len(),
        "distinct_key_ids": distinct.len(),
        "missing_from_store": not_in_store,
        "not_exactly_once_in_store_text": not_once_in_text,
        "not_exactly_one_issue_line": not_once_audited,
        "verified": ok,
    });
    println!("{out}");
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
