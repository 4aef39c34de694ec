//! Helpers shared by the fuzz targets: a plain-text request format, so that the seed corpora
//! are readable files (a request line, header lines, a blank line, a body) and mutations of
//! them stay close to real traffic.
//!
//! ```text
//! POST /admin/api-keys?x=1
//! content-type: application/json
//! x-forwarded-for: 203.0.113.9
//!
//! {"label": "svc"}
//! ```
//!
//! Nothing here panics on any input: lines that are not `name: value`, and names or values
//! that `http` refuses, are skipped.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// A request read from the text format.
#[derive(Debug, Clone)]
pub struct TextRequest<'a> {
    /// The first word of the first line (`GET` when the line has none).
    pub method: &'a str,
    /// The rest of the first line: path and query as sent.
    pub target: &'a str,
    /// Header lines, in order (names and values as bytes, the value's leading blanks removed).
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// Everything after the first blank line.
    pub body: &'a [u8],
}

impl TextRequest<'_> {
    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The query part of the target (after the first `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The headers `http` accepts, as a map (names lower-cased; repeated names kept).
    pub fn header_map(&self) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in &self.headers {
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(&n.to_ascii_lowercase()),
                HeaderValue::from_bytes(v),
            ) else {
                continue;
            };
            m.append(n, v);
        }
        m
    }

    /// The value of the first header line named `name` (case-insensitive), as text.
    pub fn header_text(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Splits `data` at the first `\n` (the line without its `\r\n` or `\n`, and the rest).
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let l = &data[..i];
            (l.strip_suffix(b"\r").unwrap_or(l), &data[i + 1..])
        }
        None => (data, &[]),
    }
}

/// Reads the text format. The request line and header lines must be UTF-8 for their text
/// accessors; a request line that is not is read as `GET /`.
pub fn parse_request(data: &[u8]) -> TextRequest<'_> {
    let (first, mut rest) = line(data);
    let first = std::str::from_utf8(first).unwrap_or("/");
    let (method, target) = match first.split_once(' ') {
        Some((m, t)) => (m, t.trim()),
        None => ("GET", first.trim()),
    };
    let mut headers = Vec::new();
    while !rest.is_empty() {
        let (l, r) = line(rest);
        rest = r;
        if l.is_empty() {
            break;
        }
        if let Some(i) = l.iter().position(|&b| b == b':') {
            let v = &l[i + 1..];
            let start = v.iter().position(|&b| b != b' ').unwrap_or(v.len());
            headers.push((&l[..i], &v[start..]));
        }
    }
    TextRequest {
        method,
        target,
        headers,
        body: rest,
    }
}

/// Splits `data` at the first line holding only `----` (the text before it, and after it).
pub fn split_section(data: &[u8]) -> Option<(&[u8], &[u8])> {
    const SEP: &[u8] = b"\n----\n";
    if let Some(rest) = data.strip_prefix(&SEP[1..]) {
        return Some((&[], rest));
    }
    data.windows(SEP.len())
        .position(|w| w == SEP)
        .map(|i| (&data[..i], &data[i + SEP.len()..]))
}

/// Files framed in one input (the `store_load` target's format): a section starts with a
/// marker line `#### NAME` at the start of the input or right after a `\n`, and holds every
/// byte after the marker line up to, not including, the `\n` before the next marker line (or
/// to the end of the input). So a file that ends with a newline is followed by an empty line
/// before the next marker, and one that does not (a torn log) is followed directly by it.
///
/// ```text
/// #### store
/// {
///   "5e88…": { … }
/// }
///
/// #### log
/// {"timestamp":…,"action":"issue",…}
///
/// #### pending
/// …
/// ```
///
/// Returns `(name, content)` for each section, in input order (bytes before the first marker
/// are ignored; a marker line without its `\n` at the end of the input opens an empty
/// section). Never panics.
pub fn split_files(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    const MARK: &[u8] = b"#### ";
    // (marker start, content start, name)
    let mut marks: Vec<(usize, usize, &[u8])> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (l, rest) = line(&data[at..]);
        let next = data.len() - rest.len();
        if let Some(name) = l.strip_prefix(MARK) {
            marks.push((at, next, name));
        }
        at = next;
    }
    let mut out = Vec::with_capacity(marks.len());
    for (i, &(_, start, name)) in marks.iter().enumerate() {
        let end = match marks.get(i + 1) {
            // The `\n` before the next marker belongs to the framing.
            Some(&(next, _, _)) => next.saturating_sub(1).max(start),
            None => data.len(),
        };
        out.push((name, &data[start..end]));
    }
    out
}

/// The inverse of [`split_files`], for seed generators: `files` in order, each framed.
pub fn frame_files(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, content)) in files.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(b"#### ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(content);
    }
    out
}
