//! Rendering: aligned tables for people, JSON for automation. Plaintext keys are written to
//! stdout only, once, by `issue` and `rotate`; nothing here logs.

use std::borrow::Cow;
use std::io::Write;

use anyhow::Result;
use serde_json::Value;
// Characters that act on a terminal instead of showing: C0/C1 controls (newline, ESC) and the
// Unicode bidirectional controls (which can reorder what follows them on the line). The set is
// the core's, which refuses the same characters in new labels and reasons.
use xai_keys_core::ops::is_unsafe_text_char;

/// Formats epoch seconds as RFC 3339 UTC (to the second); `never` for none.
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

/// Untrusted text (labels, reasons, actors from a store or log that another tool may have
/// written) made safe for a terminal: such characters are shown as `\u{…}` escapes, so a label
/// can neither inject escape sequences nor forge table rows with a newline.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_text_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_text_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Prints rows as an aligned table. Cells are [`clean`]ed; put free-text columns (labels) last,
/// as column widths count characters, not terminal cells.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
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
        line(render(r))?;
    }
    Ok(())
}

/// Prints `warning: …` lines on stderr.
pub fn warnings(ws: &[String]) {
    for w in ws {
        eprintln!("warning: {w}");
    }
}
