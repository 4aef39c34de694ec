//! Revocation propagation CLI → running gateway (`bench/run-gateway`, issue 3).
//!
//!     propagation --gateway 127.0.0.1:PORT --cli target/release/xai-keys --store STORE \
//!                 [--trials 50] [--path /wallet/balance] [--timeout-ms 5000]
//!
//! Each trial: `xai-keys issue` (a separate process) creates a user key; the driver polls the
//! gateway with it until it is accepted (200 through the proxy: "issue propagation"), waits a
//! random 0–60 ms (so trials fall at every phase of the gateway's store poll), then runs
//! `xai-keys revoke` (a separate process) while polling the gateway in a tight loop over one
//! keep-alive connection until the key is refused (401). A thread blocked in `wait()` stamps the
//! revoke process's exit. Reported per trial: refusal time minus the revoke's exit (the primary
//! figure; it can be negative when the gateway refused before the CLI process finished exiting)
//! and minus the revoke's start (spawn). The poll resolution is one gateway round trip (about
//! 0.1–0.3 ms here). A trial whose key is not refused within `--timeout-ms` counts as a failure.
//!
//! Prints progress on stderr and one JSON object on stdout.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Conn, Error, arg, pct, required};

struct Gateway {
    conn: Conn,
    path: String,
}

impl Gateway {
    fn status(&mut self, key: &str) -> Result<u16, Error> {
        let (s, _) = self
            .conn
            .request("GET", &self.path, &[("X-API-Key", key)], b"")?;
        Ok(s)
    }
}

fn json_field(out: &[u8], field: &str) -> Result<String, Error> {
    let v: serde_json::Value = serde_json::from_slice(out)?;
    v.get(field)
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("no {field} in CLI output").into())
}

/// A small xorshift generator for the jitter (no dependency needed).
struct Jitter(u64);
impl Jitter {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % (max + 1)
    }
}

fn summary(v: &mut [f64]) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    serde_json::json!({
        "n": v.len(),
        "min_ms": pct(v, 0.0),
        "p50_ms": pct(v, 0.5),
        "p90_ms": pct(v, 0.9),
        "p99_ms": pct(v, 0.99),
        "max_ms": v.last().copied().unwrap_or(f64::NAN),
        "mean_ms": v.iter().sum::<f64>() / v.len().max(1) as f64,
    })
}

fn main() -> Result<(), Error> {
    let gw_addr = required("--gateway")?;
    let cli = required("--cli")?;
    let store = required("--store")?;
    let trials: usize = arg("--trials").map_or(Ok(50), |s| s.parse())?;
    let timeout = Duration::from_millis(arg("--timeout-ms").map_or(Ok(5000), |s| s.parse())?);
    let mut gw = Gateway {
        conn: Conn::new(&gw_addr),
        path: arg("--path").unwrap_or_else(|| "/wallet/balance".into()),
    };
    let mut jitter = Jitter(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64
            | 1,
    );

    let mut from_exit = Vec::new();
    let mut from_start = Vec::new();
    let mut revoke_cli = Vec::new();
    let mut issue_prop = Vec::new();
    let mut failures = Vec::new();
    let mut polls_total = 0u64;

    for i in 0..trials {
        // Issue with the CLI and wait until the gateway accepts the key.
        let out = Command::new(&cli)
            .args(["--store", &store, "-o", "json", "issue", "--scope", "user"])
            .args(["--label", &format!("propagation-{i}")])
            .stderr(Stdio::null())
            .output()?;
        let issued_at = Instant::now();
        if !out.status.success() {
            return Err(format!("xai-keys issue failed: {}", out.status).into());
        }
        let key = json_field(&out.stdout, "api_key")?;
        let key_id = json_field(&out.stdout, "key_id")?;
        loop {
            match gw.status(&key)? {
                200 => break,
                401 => {}
                s => return Err(format!("unexpected status {s} for a new key").into()),
            }
            if issued_at.elapsed() > timeout {
                return Err(
                    format!("trial {i}: issued key not accepted within {timeout:?}").into(),
                );
            }
        }
        issue_prop.push(issued_at.elapsed().as_secs_f64() * 1e3);

        std::thread::sleep(Duration::from_millis(jitter.next_ms(60)));
        if gw.status(&key)? != 200 {
            return Err(format!("trial {i}: key refused before the revoke").into());
        }

        // Revoke with the CLI; a thread stamps its exit; poll until refused.
        let started = Instant::now();
        let mut child = Command::new(&cli)
            .args(["--store", &store, "-o", "json", "revoke", &key_id])
            .args(["--reason", "propagation benchmark"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let st = child.wait();
            let _ = tx.send((Instant::now(), st.map(|s| s.success()).unwrap_or(false)));
        });
        let mut refused_at = None;
        let mut polls = 0u64;
        while refused_at.is_none() {
            let s = gw.status(&key)?;
            polls += 1;
            match s {
                401 => refused_at = Some(Instant::now()),
                200 => {}
                s => return Err(format!("trial {i}: unexpected status {s}").into()),
            }
            if started.elapsed() > timeout {
                break;
            }
        }
        polls_total += polls;
        let (exited_at, ok) = rx.recv().map_err(|_| "the revoke waiter thread vanished")?;
        let _ = waiter.join();
        if !ok {
            return Err(format!("trial {i}: xai-keys revoke failed").into());
        }
        revoke_cli.push((exited_at - started).as_secs_f64() * 1e3);
        match refused_at {
            Some(r) => {
                let ms = |a: Instant, b: Instant| {
                    if a >= b {
                        (a - b).as_secs_f64() * 1e3
                    } else {
                        -((b - a).as_secs_f64() * 1e3)
                    }
                };
                from_exit.push(ms(r, exited_at));
                from_start.push(ms(r, started));
                eprintln!(
                    "trial {:>3}: refused {:>7.2} ms after revoke exit ({:>7.2} ms after start; CLI ran {:>6.2} ms; {polls} polls); issue seen after {:>6.2} ms",
                    i + 1,
                    from_exit[from_exit.len() - 1],
                    from_start[from_start.len() - 1],
                    revoke_cli[revoke_cli.len() - 1],
                    issue_prop[issue_prop.len() - 1],
                );
            }
            None => {
                eprintln!("trial {:>3}: NOT refused within {timeout:?}", i + 1);
                failures.push(i);
            }
        }
    }

    let out = serde_json::json!({
        "trials": trials,
        "failures": failures.len(),
        "timeout_ms": timeout.as_secs_f64() * 1e3,
        "polls": polls_total,
        "revoke_exit_to_refused": summary(&mut from_exit),
        "revoke_start_to_refused": summary(&mut from_start),
        "revoke_cli_runtime": summary(&mut revoke_cli),
        "issue_exit_to_accepted": summary(&mut issue_prop),
    });
    println!("{out}");
    Ok(())
}
