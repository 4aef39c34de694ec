//! Rendering: aligned tables for people, JSON for automation. Plaintext keys are written to
//! stdout only, once, by `issue` and `rotate`; nothing here logs.

use std::io::Write;

use anyhow::Result;
use serde_json::Value;

/// Formats epoch seconds as RFC 3339 UTC (to the second); `-` for none.
pub fn fmt_time(t: Option<f64>) -> String {
    match t {
        None => "never".into(),
        Some(v) => jiff::Timestamp::from_millisecond((v * 1000.0) as i64)
            .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|_| format!("{v}")),
    }
}

/// Writes a line to stdout; a closed pipe surfaces as an error `main` treats as success.
pub fn line(s: impl AsRef<str>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_ref().as_bytes())?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Pretty JSON (2-space indent, as the reference prints).
pub fn json(v: &Value) -> Result<()> {
    line(serde_json::to_string_pretty(v)?)
}

/// One-line JSON.
pub fn json_line(v: &Value) -> Result<()> {
    line(serde_json::to_string(v)?)
}

/// Prints rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let render = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    line(render(headers.iter().map(|h| h.to_string()).collect()))?;
    for r in rows {
        line(render(r.clone()))?;
    }
    Ok(())
}

/// Prints `warning: …` lines on stderr.
pub fn warnings(ws: &[String]) {
    for w in ws {
        eprintln!("warning: {w}");
    }
}
