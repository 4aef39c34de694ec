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

/// How long ago epoch time `t` was, compactly (`42s ago`, `3m ago`, `5h ago`, `12d ago`);
/// `never` for none, `just now` for a time not before `now` (a clock ahead of this one).
pub fn fmt_ago(t: Option<f64>, now: f64) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let d = now - t;
    if !d.is_finite() || d < 1.0 {
        return "just now".into();
    }
    let s = d as u64;
    match s {
        0..60 => format!("{s}s ago"),
        60..3_600 => format!("{}m ago", s / 60),
        3_600..86_400 => format!("{}h ago", s / 3_600),
        _ => format!("{}d ago", s / 86_400),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_compact() {
        let now = 1_800_000_000.0;
        assert_eq!(fmt_ago(None, now), "never");
        assert_eq!(fmt_ago(Some(now + 5.0), now), "just now");
        assert_eq!(fmt_ago(Some(now - 0.5), now), "just now");
        assert_eq!(fmt_ago(Some(now - 42.0), now), "42s ago");
        assert_eq!(fmt_ago(Some(now - 180.0), now), "3m ago");
        assert_eq!(fmt_ago(Some(now - 5.0 * 3_600.0), now), "5h ago");
        assert_eq!(fmt_ago(Some(now - 12.0 * 86_400.0), now), "12d ago");
    }
}
