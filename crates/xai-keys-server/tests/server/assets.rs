//! The operator assets under `deploy/` (Prometheus alert rules, the Grafana dashboard) against
//! what the gateway exports: [`asset_refs`] lists every `xai_*` metric, label matcher and label
//! name the assets rely on, and [`check_against_scrape`] reports each one that a `GET /metrics`
//! scrape cannot satisfy (a renamed metric or label, a label value the gateway never emits).
//!
//! Rule files are read as text (every `expr:` value: plain, quoted, or `|`/`>` blocks, plus the
//! `$labels.x` used in the rule's annotations and labels); dashboards are parsed as JSON (every
//! `"expr"` string outside a Loki datasource, its `legendFormat` `{{x}}`, and `label_values(…)`
//! variable queries). PromQL is tokenised, not parsed: enough to find `xai_*` selectors with their
//! `{…}` matchers, and the label names of `by`/`without` (scoped to the aggregation's argument)
//! and `on`/`ignoring`/`group_left`/`group_right` (scoped to the enclosing parentheses).
//! Limitation: it does not work out which labels survive an aggregation, so a template label that
//! exists on the metric but was aggregated away is not caught (promtool's unit tests catch those).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `(label, op, value)`.
pub type Matcher = (String, String, String);

/// One metric reference of an asset.
///
/// `matchers` holds `(label, op, value)`: the selector's own matchers (`op` one of `=`, `!=`,
/// `=~`, `!~`) and the label names the asset relies on the metric carrying, with the place they
/// come from as `op` and an empty value: `by`, `without`, `on`, `ignoring`, `group_left`,
/// `group_right`, `$labels` (alert annotations and labels), `legend` (Grafana `legendFormat`),
/// `label_values` (a dashboard variable).
///
/// When such a label name applies to an expression part with several metrics (for example
/// `on (instance, sink) group_left (host)` between two of them), the reference names the first
/// as `metric` and the others in `also`, and the label is satisfied when any of them carries it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AssetRef {
    /// Path relative to the repository root (`deploy/prometheus/alerts/….yml`).
    pub file: String,
    /// `alert NAME`, `record NAME`, `panel "TITLE"`, `annotation "NAME"`, `variable "NAME"`.
    pub context: String,
    /// The whole expression the reference comes from.
    pub expr: String,
    /// The sample name as written (`xai_api_auth_decision_seconds_bucket`).
    pub metric: String,
    pub matchers: Vec<Matcher>,
    /// Other metrics that may satisfy this reference's label names (empty for a selector).
    pub also: Vec<String>,
}

/// Every `xai_*` reference in the rule files under `deploy/prometheus/` (`*.yml`, `*.yaml`,
/// except promtool unit tests `*_test.yml`) and the dashboards under `deploy/grafana/` (`*.json`).
///
/// Panics when a file cannot be read or a dashboard is not JSON: this is a test helper.
pub fn asset_refs(repo_root: &Path) -> Vec<AssetRef> {
    let mut out = Vec::new();
    for path in files_under(&repo_root.join("deploy/prometheus"), &["yml", "yaml"]) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with("_test.yml") || name.ends_with("_test.yaml") {
            continue;
        }
        let text = read(&path);
        out.extend(rule_file_refs(&rel(repo_root, &path), &text));
    }
    for path in files_under(&repo_root.join("deploy/grafana"), &["json"]) {
        let text = read(&path);
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        out.extend(dashboard_refs(&rel(repo_root, &path), &json));
    }
    out
}

/// The repository root: the nearest ancestor of this crate's directory holding
/// `deploy/prometheus`.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("deploy/prometheus").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("no deploy/prometheus above {}", here.display()))
}

/// One problem string per reference that `scrape` (Prometheus text format) cannot satisfy: the
/// metric is not exported (sample names: `_total`, `_bucket`, `_sum`, `_count` are looked up as
/// written, and a histogram or summary queried by its family name is flagged), a label is never
/// exported on it, or an `=` matcher's value never appears. `job` and `instance` (added by
/// Prometheus) and `__name__` are not checked; `le` is checked like any label, so it passes on
/// `_bucket` samples only. `=~`/`!~` only need the label to exist, `=""` needs a series
/// without it, and values holding a Grafana variable (`$x`) are not compared.
pub fn check_against_scrape(refs: &[AssetRef], scrape: &str) -> Vec<String> {
    let scrape = Scrape::parse(scrape);
    let mut problems = Vec::new();
    for r in refs {
        if let Some(p) = check_ref(r, &scrape) {
            problems.push(p);
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Files

fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| exts.contains(&x))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

// ---------------------------------------------------------------------------------------------
// Rule files (YAML read as text)

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The column where a line's mapping key starts, and the key's text (after an optional `- `).
fn key_at(line: &str) -> (usize, &str) {
    let ind = indent_of(line);
    let mut rest = &line[ind..];
    let mut col = ind;
    while let Some(r) = rest.strip_prefix("- ") {
        let r2 = r.trim_start_matches(' ');
        col += 2 + (r.len() - r2.len());
        rest = r2;
    }
    (col, rest)
}

/// `Some(value text after the colon)` when `text` starts with mapping key `key`.
fn key_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let r = text.strip_prefix(key)?;
    let r = r.strip_prefix(':')?;
    (r.is_empty() || r.starts_with(' ') || r.starts_with('\t')).then_some(r.trim_start())
}

/// Rule file text → references of every `expr:` (with the `$labels.x` of its rule item).
fn rule_file_refs(file: &str, text: &str) -> Vec<AssetRef> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (k, line) in lines.iter().enumerate() {
        if is_blank_or_comment(line) {
            continue;
        }
        let (col, key_text) = key_at(line);
        let Some(value) = key_value(key_text, "expr") else {
            continue;
        };
        let expr = yaml_scalar(&lines, k, col, value);
        let (start, end) = rule_item(&lines, k, col);
        let item = &lines[start..end];
        let mut context = String::from("rule");
        let mut templates = BTreeSet::new();
        for l in item {
            if is_blank_or_comment(l) {
                continue;
            }
            let (c, t) = key_at(l);
            if c == col {
                for kind in ["alert", "record"] {
                    if let Some(v) = key_value(t, kind) {
                        context = format!("{kind} {}", unquote(v));
                    }
                }
            }
            templates.extend(template_labels(l));
        }
        let uses: Vec<(String, String)> = templates
            .into_iter()
            .map(|l| (l, "$labels".to_string()))
            .collect();
        out.extend(expr_refs(file, &context, &expr, &uses));
    }
    dedup(out)
}

/// The lines `[start, end)` of the list item (a rule) holding the key at line `k`, column `col`.
fn rule_item(lines: &[&str], k: usize, col: usize) -> (usize, usize) {
    let mut start = k;
    let mut dash_col = None;
    for i in (0..=k).rev() {
        let l = lines[i];
        if is_blank_or_comment(l) {
            continue;
        }
        let ind = indent_of(l);
        if l[ind..].starts_with("- ") && ind < col {
            start = i;
            dash_col = Some(ind);
            break;
        }
        if ind < col && i != k {
            // Left the mapping without finding its dash: not in a list.
            start = i + 1;
            break;
        }
    }
    let limit = dash_col.unwrap_or(col.saturating_sub(1));
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(k + 1) {
        if is_blank_or_comment(l) {
            continue;
        }
        if indent_of(l) <= limit {
            end = i;
            break;
        }
    }
    (start, end)
}

/// The scalar value of the key at line `k`, column `col`, whose text after the colon is `first`.
fn yaml_scalar(lines: &[&str], k: usize, col: usize, first: &str) -> String {
    let following = &lines[k + 1..];
    if first.starts_with('|') || first.starts_with('>') {
        let mut body: Vec<&str> = Vec::new();
        let mut content_indent = None;
        for l in following {
            if l.trim().is_empty() {
                body.push("");
                continue;
            }
            let ind = indent_of(l);
            if ind <= col {
                break;
            }
            let ci = *content_indent.get_or_insert(ind);
            body.push(l.get(ci.min(ind)..).unwrap_or(""));
        }
        while body.last().is_some_and(|l| l.is_empty()) {
            body.pop();
        }
        // Lines stay lines for `>` too: PromQL ignores the difference, but `#` comments end there.
        return body.join("\n");
    }
    if let Some(rest) = first.strip_prefix('"') {
        return quoted(rest, following, '"');
    }
    if let Some(rest) = first.strip_prefix('\'') {
        return quoted(rest, following, '\'');
    }
    let mut parts = vec![strip_comment(first).to_string()];
    for l in following {
        if l.trim().is_empty() || indent_of(l) <= col || l.trim_start().starts_with('#') {
            break;
        }
        parts.push(strip_comment(l.trim()).to_string());
    }
    parts.join(" ").trim().to_string()
}

fn strip_comment(s: &str) -> &str {
    match s.find(" #") {
        Some(i) => &s[..i],
        None => s,
    }
    .trim_end()
}

/// A YAML quoted scalar starting after its opening quote; it may continue on `following` lines
/// (a line break folds to a space).
fn quoted(first: &str, following: &[&str], q: char) -> String {
    let mut out = String::new();
    let segs = std::iter::once(first).chain(following.iter().map(|l| l.trim()));
    for (seg_no, seg) in segs.enumerate() {
        if seg_no > 0 {
            out.push(' ');
        }
        let mut chars = seg.chars().peekable();
        while let Some(c) = chars.next() {
            if c == q {
                if q == '\'' && chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push('\'');
                    continue;
                }
                return out;
            }
            if q == '"' && c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => {}
                }
                continue;
            }
            out.push(c);
        }
    }
    out
}

fn unquote(v: &str) -> String {
    let v = strip_comment(v).trim();
    if let Some(r) = v.strip_prefix('"') {
        return quoted(r, &[], '"');
    }
    if let Some(r) = v.strip_prefix('\'') {
        return quoted(r, &[], '\'');
    }
    v.to_string()
}

/// Label names in `$labels.x` (alert templates).
fn template_labels(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("$labels.") {
        rest = &rest[i + "$labels.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// Label names in a Grafana legend (`{{event_type}} {{ scope }}`).
fn legend_labels(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        rest = &rest[i + 2..];
        let Some(j) = rest.find("}}") else { break };
        let name = rest[..j].trim();
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
        {
            out.push(name.to_string());
        }
        rest = &rest[j + 2..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Dashboards (JSON)

fn is_loki(ds: Option<&serde_json::Value>) -> bool {
    match ds {
        Some(serde_json::Value::Object(o)) => {
            let field = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            field("type").to_ascii_lowercase().contains("loki")
                || field("uid").to_ascii_uppercase().contains("LOKI")
        }
        Some(serde_json::Value::String(s)) => s.to_ascii_lowercase().contains("loki"),
        _ => false,
    }
}

fn dashboard_refs(file: &str, json: &serde_json::Value) -> Vec<AssetRef> {
    let mut out = Vec::new();
    walk_json(file, json, "dashboard", false, &mut out);
    dedup(out)
}

fn walk_json(
    file: &str,
    v: &serde_json::Value,
    context: &str,
    under_loki: bool,
    out: &mut Vec<AssetRef>,
) {
    match v {
        serde_json::Value::Object(o) => {
            let under_loki = under_loki || is_loki(o.get("datasource"));
            let title = o
                .get("title")
                .and_then(|t| t.as_str())
                .map(|t| format!("panel {t:?}"));
            let name = o.get("name").and_then(|t| t.as_str());
            let context = if let Some(t) = title {
                t
            } else if let (Some(n), true) = (name, o.contains_key("expr")) {
                format!("annotation {n:?}")
            } else {
                context.to_string()
            };
            if !under_loki {
                if let Some(expr) = o.get("expr").and_then(|e| e.as_str()) {
                    let legend = o.get("legendFormat").and_then(|l| l.as_str()).unwrap_or("");
                    let uses: Vec<(String, String)> = legend_labels(legend)
                        .into_iter()
                        .map(|l| (l, "legend".to_string()))
                        .collect();
                    out.extend(expr_refs(file, &context, expr, &uses));
                }
                if o.get("type").and_then(|t| t.as_str()) == Some("query") {
                    let query = match o.get("query") {
                        Some(serde_json::Value::String(s)) => Some(s.as_str()),
                        Some(serde_json::Value::Object(q)) => {
                            q.get("query").and_then(|s| s.as_str())
                        }
                        _ => None,
                    };
                    if let Some((sel, label)) = query.and_then(label_values) {
                        let ctx = format!("variable {:?}", name.unwrap_or(""));
                        let uses = [(label, "label_values".to_string())];
                        out.extend(expr_refs(file, &ctx, &sel, &uses));
                    }
                }
            }
            for x in o.values() {
                walk_json(file, x, &context, under_loki, out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                walk_json(file, x, context, under_loki, out);
            }
        }
        _ => {}
    }
}

/// `label_values(selector, label)` → `(selector, label)`.
fn label_values(q: &str) -> Option<(String, String)> {
    let inner = q.trim().strip_prefix("label_values")?.trim_start();
    let inner = inner.strip_prefix('(')?.trim_end().strip_suffix(')')?;
    let (sel, label) = inner.rsplit_once(',')?;
    Some((sel.trim().to_string(), label.trim().to_string()))
}

// ---------------------------------------------------------------------------------------------
// PromQL tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// Numbers and durations (`5m`, `1e3`): never a metric.
    Num,
    /// A Grafana variable outside a string (`$instance`).
    Var,
    /// `[…]`: a range or subquery.
    Range,
    Punct(String),
}

fn tokenize(s: &str) -> Vec<Tok> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '"' || ch == '\'' || ch == '`' {
            let mut v = String::new();
            i += 1;
            while i < c.len() && c[i] != ch {
                if c[i] == '\\' && ch != '`' && i + 1 < c.len() {
                    i += 1;
                    v.push(match c[i] {
                        'n' => '\n',
                        't' => '\t',
                        x => x,
                    });
                } else {
                    v.push(c[i]);
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(v));
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let st = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            out.push(Tok::Ident(c[st..i].iter().collect()));
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Num);
        } else if ch == '$' {
            i += 1;
            if c.get(i) == Some(&'{') {
                while i < c.len() && c[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
            out.push(Tok::Var);
        } else if ch == '[' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '[' {
                    depth += 1;
                } else if c[i] == ']' {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Range);
        } else {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            if ["==", "!=", "<=", ">=", "=~", "!~"].contains(&two.as_str()) {
                out.push(Tok::Punct(two));
                i += 2;
            } else {
                out.push(Tok::Punct(ch.to_string()));
                i += 1;
            }
        }
    }
    out
}

fn is_punct(t: Option<&Tok>, p: &str) -> bool {
    matches!(t, Some(Tok::Punct(x)) if x == p)
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(x)) => Some(x.as_str()),
        _ => None,
    }
}

/// Index of the token closing the bracket opened at `open` (`(` or `{`).
fn closing(toks: &[Tok], open: usize) -> usize {
    let (o, cl) = match &toks[open] {
        Tok::Punct(p) if p == "{" => ("{", "}"),
        _ => ("(", ")"),
    };
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        if is_punct(Some(t), o) {
            depth += 1;
        } else if is_punct(Some(t), cl) {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return i;
            }
        }
    }
    toks.len()
}

/// Label names of a `( a, b, "c" )` list opened at `open`.
fn label_list(toks: &[Tok], open: usize, close: usize) -> Vec<String> {
    toks[open + 1..close.min(toks.len())]
        .iter()
        .filter_map(|t| match t {
            Tok::Ident(x) | Tok::Str(x) => Some(x.clone()),
            _ => None,
        })
        .collect()
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &["by", "without"];
const MATCHING: &[&str] = &["on", "ignoring", "group_left", "group_right"];
const UNCHECKED: &[&str] = &["job", "instance", "__name__"];

struct Selector {
    pos: usize,
    metric: String,
    matchers: Vec<Matcher>,
}

/// A label name used over the metrics of token range `[from, to]`.
struct Use {
    from: usize,
    to: usize,
    label: String,
    op: String,
}

/// References of one expression; `uses` are label names it relies on as a whole
/// (`(label, op)`: alert templates, legends).
fn expr_refs(file: &str, context: &str, expr: &str, uses: &[(String, String)]) -> Vec<AssetRef> {
    let toks = tokenize(expr);
    let mut sels: Vec<Selector> = Vec::new();
    let mut label_uses: Vec<Use> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(w) if GROUPING.contains(&w.as_str()) && is_punct(toks.get(i + 1), "(") => {
                // Handled with its aggregation below; skip the list.
                i = closing(&toks, i + 1) + 1;
            }
            Tok::Ident(w) if MATCHING.contains(&w.as_str()) && is_punct(toks.get(i + 1), "(") => {
                let close = closing(&toks, i + 1);
                let (from, to) = enclosing_parens(&toks, i);
                for label in label_list(&toks, i + 1, close) {
                    label_uses.push(Use {
                        from,
                        to,
                        label,
                        op: w.clone(),
                    });
                }
                i = close + 1;
            }
            Tok::Ident(w) if w.starts_with("xai_") && !is_punct(toks.get(i + 1), "(") => {
                let mut matchers = Vec::new();
                let mut next = i + 1;
                if is_punct(toks.get(i + 1), "{") {
                    let close = closing(&toks, i + 1);
                    matchers = parse_matchers(&toks[i + 2..close.min(toks.len())]);
                    next = close + 1;
                }
                sels.push(Selector {
                    pos: i,
                    metric: w.clone(),
                    matchers,
                });
                i = next;
            }
            Tok::Punct(p) if p == "{" => {
                // A selector by `{__name__="xai_…"}` only.
                let close = closing(&toks, i);
                let ms = parse_matchers(&toks[i + 1..close.min(toks.len())]);
                let name = ms
                    .iter()
                    .find(|(l, op, v)| l == "__name__" && op == "=" && v.starts_with("xai_"))
                    .map(|(_, _, v)| v.clone());
                if let Some(metric) = name {
                    let matchers = ms.into_iter().filter(|(l, _, _)| l != "__name__").collect();
                    sels.push(Selector {
                        pos: i,
                        metric,
                        matchers,
                    });
                }
                i = close + 1;
            }
            _ => i += 1,
        }
    }
    // Aggregations: `agg by (l) (arg)` or `agg (arg) by (l)`.
    for (i, t) in toks.iter().enumerate() {
        let Tok::Ident(w) = t else { continue };
        if !AGGREGATIONS.contains(&w.as_str()) {
            continue;
        }
        let (labels, op, arg_open) = match ident(toks.get(i + 1)) {
            Some(g) if GROUPING.contains(&g) && is_punct(toks.get(i + 2), "(") => {
                let close = closing(&toks, i + 2);
                (label_list(&toks, i + 2, close), g.to_string(), close + 1)
            }
            _ => (Vec::new(), String::new(), i + 1),
        };
        if !is_punct(toks.get(arg_open), "(") {
            continue;
        }
        let arg_close = closing(&toks, arg_open);
        let (labels, op) = if labels.is_empty() {
            match ident(toks.get(arg_close + 1)) {
                Some(g) if GROUPING.contains(&g) && is_punct(toks.get(arg_close + 2), "(") => {
                    let close = closing(&toks, arg_close + 2);
                    (label_list(&toks, arg_close + 2, close), g.to_string())
                }
                _ => (labels, op),
            }
        } else {
            (labels, op)
        };
        for label in labels {
            label_uses.push(Use {
                from: arg_open,
                to: arg_close,
                label,
                op: op.clone(),
            });
        }
    }
    for (label, op) in uses {
        label_uses.push(Use {
            from: 0,
            to: toks.len(),
            label: label.clone(),
            op: op.clone(),
        });
    }

    let mut refs: Vec<AssetRef> = sels
        .iter()
        .map(|s| AssetRef {
            file: file.to_string(),
            context: context.to_string(),
            expr: expr.to_string(),
            metric: s.metric.clone(),
            matchers: s.matchers.clone(),
            also: Vec::new(),
        })
        .collect();
    // Label names: onto the selector when one metric is in scope, else a reference of their own
    // per set of candidate metrics.
    let mut shared: BTreeMap<Vec<String>, Vec<Matcher>> = BTreeMap::new();
    for u in label_uses {
        if UNCHECKED.contains(&u.label.as_str()) {
            continue;
        }
        let mut metrics: Vec<String> = Vec::new();
        let mut first_sel = None;
        for (n, s) in sels.iter().enumerate() {
            if s.pos >= u.from && s.pos <= u.to && !metrics.contains(&s.metric) {
                metrics.push(s.metric.clone());
                first_sel.get_or_insert(n);
            }
        }
        let m = (u.label, u.op, String::new());
        match (metrics.len(), first_sel) {
            (0, _) | (_, None) => {}
            (1, Some(n)) => {
                if !refs[n].matchers.contains(&m) {
                    refs[n].matchers.push(m);
                }
            }
            _ => {
                let e = shared.entry(metrics).or_default();
                if !e.contains(&m) {
                    e.push(m);
                }
            }
        }
    }
    for (metrics, matchers) in shared {
        refs.push(AssetRef {
            file: file.to_string(),
            context: context.to_string(),
            expr: expr.to_string(),
            metric: metrics[0].clone(),
            matchers,
            also: metrics[1..].to_vec(),
        });
    }
    refs
}

/// Token range of the innermost parentheses around token `at` (the whole expression if none).
fn enclosing_parens(toks: &[Tok], at: usize) -> (usize, usize) {
    let mut depth = 0usize;
    for j in (0..at).rev() {
        if is_punct(toks.get(j), ")") {
            depth += 1;
        } else if is_punct(toks.get(j), "(") {
            if depth == 0 {
                return (j, closing(toks, j));
            }
            depth -= 1;
        }
    }
    (0, toks.len())
}

fn parse_matchers(toks: &[Tok]) -> Vec<Matcher> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 3 <= toks.len() {
        let label = match &toks[i] {
            Tok::Ident(x) | Tok::Str(x) => x.clone(),
            _ => {
                i += 1;
                continue;
            }
        };
        let op = match &toks[i + 1] {
            Tok::Punct(p) if ["=", "!=", "=~", "!~"].contains(&p.as_str()) => p.clone(),
            _ => {
                i += 1;
                continue;
            }
        };
        let value = match &toks[i + 2] {
            Tok::Str(v) => v.clone(),
            _ => {
                i += 1;
                continue;
            }
        };
        out.push((label, op, value));
        i += 3;
    }
    out
}

fn dedup(mut refs: Vec<AssetRef>) -> Vec<AssetRef> {
    let mut seen = BTreeSet::new();
    refs.retain(|r| seen.insert(r.clone()));
    refs
}

// ---------------------------------------------------------------------------------------------
// Scrape

#[derive(Default)]
struct Series {
    count: usize,
    /// label → values seen
    labels: BTreeMap<String, BTreeSet<String>>,
    /// label → number of series carrying it (non-empty)
    carried: BTreeMap<String, usize>,
}

#[derive(Default)]
struct Scrape {
    samples: BTreeMap<String, Series>,
    /// `# TYPE` family name → type
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    s.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, labels)) = parse_sample(line) else {
                continue;
            };
            let e = s.samples.entry(name).or_default();
            e.count += 1;
            for (l, v) in labels {
                if !v.is_empty() {
                    *e.carried.entry(l.clone()).or_default() += 1;
                }
                e.labels.entry(l).or_default().insert(v);
            }
        }
        s
    }

    /// Why `metric` has no samples, given the declared families.
    fn missing(&self, metric: &str) -> String {
        if let Some(kind) = self.types.get(metric) {
            if kind == "histogram" || kind == "summary" {
                return format!(
                    "{metric} is a {kind}: query {metric}_count, {metric}_sum{}",
                    if kind == "histogram" {
                        format!(" or {metric}_bucket")
                    } else {
                        String::new()
                    }
                );
            }
            return format!("{metric} is declared ({kind}) but has no series in the scrape");
        }
        for (suffix, kinds) in [
            ("_total", &["counter"][..]),
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ] {
            if let Some(base) = metric.strip_suffix(suffix)
                && let Some(kind) = self.types.get(base)
            {
                if kinds.contains(&kind.as_str()) {
                    return format!(
                        "{metric}: family {base} ({kind}) is declared but has no series in the scrape"
                    );
                }
                return format!("{metric}: {base} is a {kind}, which has no {suffix} series");
            }
        }
        let total = format!("{metric}_total");
        if self.samples.contains_key(&total) {
            return format!(
                "{metric} is not exported ({total} is: counters are queried with _total)"
            );
        }
        format!("{metric} is not exported")
    }
}

/// `name{a="x",b="y"} value [ts]` → name and labels.
fn parse_sample(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = line[..name_end].to_string();
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    let rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let c: Vec<char> = body.chars().collect();
        let mut i = 0;
        loop {
            while i < c.len() && (c[i] == ',' || c[i].is_whitespace()) {
                i += 1;
            }
            if i >= c.len() || c[i] == '}' {
                break;
            }
            let st = i;
            while i < c.len() && c[i] != '=' {
                i += 1;
            }
            let label: String = c[st..i].iter().collect::<String>().trim().to_string();
            i += 1; // '='
            if c.get(i) != Some(&'"') {
                return None;
            }
            i += 1;
            let mut v = String::new();
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    i += 1;
                    v.push(if c[i] == 'n' { '\n' } else { c[i] });
                } else {
                    v.push(c[i]);
                }
                i += 1;
            }
            i += 1;
            labels.push((label.trim_matches('"').to_string(), v));
        }
    }
    Some((name, labels))
}

fn check_ref(r: &AssetRef, scrape: &Scrape) -> Option<String> {
    let candidates: Vec<&String> = std::iter::once(&r.metric).chain(r.also.iter()).collect();
    let exported: Vec<(&String, &Series)> = candidates
        .iter()
        .filter_map(|m| scrape.samples.get(m.as_str()).map(|s| (*m, s)))
        .collect();
    let mut issues: Vec<String> = Vec::new();
    if exported.is_empty() {
        if r.also.is_empty() {
            issues.push(scrape.missing(&r.metric));
        } else {
            let names: Vec<&str> = candidates.iter().map(|m| m.as_str()).collect();
            issues.push(format!("none of {} is exported", names.join(", ")));
        }
    } else {
        for (label, op, value) in &r.matchers {
            if UNCHECKED.contains(&label.as_str()) {
                continue;
            }
            let has = |s: &Series| s.labels.contains_key(label);
            match op.as_str() {
                "=" if value.is_empty() => {
                    // Matches series without the label: fine unless every series carries it.
                    if exported
                        .iter()
                        .all(|(_, s)| s.carried.get(label).copied().unwrap_or(0) >= s.count)
                    {
                        issues.push(format!(
                            "{label}=\"\" matches nothing: every series carries {label}"
                        ));
                    }
                }
                "=" => {
                    if !exported.iter().any(|(_, s)| has(s)) {
                        issues.push(format!("label {label} (used in =) is never exported"));
                    } else if !value.contains('$')
                        && !exported
                            .iter()
                            .any(|(_, s)| s.labels.get(label).is_some_and(|vs| vs.contains(value)))
                    {
                        let seen: BTreeSet<&String> = exported
                            .iter()
                            .filter_map(|(_, s)| s.labels.get(label))
                            .flatten()
                            .collect();
                        let seen: Vec<&str> = seen.into_iter().map(|s| s.as_str()).collect();
                        issues.push(format!(
                            "{label}=\"{value}\" never seen (seen: {})",
                            seen.join(", ")
                        ));
                    }
                }
                _ => {
                    if !exported.iter().any(|(_, s)| has(s)) {
                        let on = if r.also.is_empty() {
                            String::new()
                        } else {
                            let names = |ms: Vec<&str>| ms.join(", ");
                            let present: Vec<&str> =
                                exported.iter().map(|(m, _)| m.as_str()).collect();
                            let absent: Vec<&str> = candidates
                                .iter()
                                .map(|m| m.as_str())
                                .filter(|m| !present.contains(m))
                                .collect();
                            if absent.is_empty() {
                                format!(" on any of {}", names(present))
                            } else {
                                format!(
                                    " on any of {} ({} not exported)",
                                    names(present),
                                    names(absent)
                                )
                            }
                        };
                        issues.push(format!(
                            "label {label} (used in {op}) is never exported{on}"
                        ));
                    }
                }
            }
        }
    }
    if issues.is_empty() {
        return None;
    }
    let expr = r.expr.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(format!(
        "{}: {}: {}: {} [expr: {expr}]",
        r.file,
        r.context,
        r.metric,
        issues.join("; ")
    ))
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn m(l: &str, op: &str, v: &str) -> Matcher {
        (l.into(), op.into(), v.into())
    }

    fn refs_of(expr: &str) -> Vec<AssetRef> {
        expr_refs("f", "c", expr, &[])
    }

    #[test]
    fn selectors_with_matchers_and_aggregation_labels() {
        let r = refs_of(
            r#"sum by (event_type, instance) (increase(xai_a_total{x="1", y=~"a|b", z!="q\"r"}[5m])) > 0"#,
        );
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0].metric, "xai_a_total");
        assert_eq!(
            r[0].matchers,
            vec![
                m("x", "=", "1"),
                m("y", "=~", "a|b"),
                m("z", "!=", "q\"r"),
                m("event_type", "by", "")
            ]
        );
        // `by` after the argument, `without`, nested aggregations each scoped to their argument.
        let r = refs_of("max without (scope) (sum(xai_b) by (result)) or xai_c");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].metric, "xai_b");
        assert_eq!(
            r[0].matchers,
            vec![m("scope", "without", ""), m("result", "by", "")]
        );
        assert_eq!(r[1].metric, "xai_c");
        assert!(r[1].matchers.is_empty());
    }

    #[test]
    fn labels_over_several_metrics_become_a_shared_reference() {
        let r = refs_of(
            "max by (instance, sink) (xai_age) * on (instance, sink) group_left (host) max by (instance, sink, host) (xai_info)",
        );
        assert_eq!(r.len(), 3, "{r:#?}");
        assert_eq!(
            (r[0].metric.as_str(), r[0].matchers.clone()),
            ("xai_age", vec![m("sink", "by", "")])
        );
        assert_eq!(
            (r[1].metric.as_str(), r[1].matchers.clone()),
            ("xai_info", vec![m("sink", "by", ""), m("host", "by", "")])
        );
        assert_eq!(r[2].metric, "xai_age");
        assert_eq!(r[2].also, vec!["xai_info".to_string()]);
        assert_eq!(
            r[2].matchers,
            vec![m("sink", "on", ""), m("host", "group_left", "")]
        );
        // `on` inside parentheses only covers what they hold.
        let r = refs_of("(xai_a and on (x) xai_b) or xai_c");
        let shared: Vec<_> = r.iter().filter(|r| !r.also.is_empty()).collect();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].also, vec!["xai_b".to_string()]);
    }

    #[test]
    fn strings_comments_functions_ranges_and_variables_are_not_metrics() {
        let r = refs_of(
            "# xai_in_comment\nlabel_replace(xai_a{job=~\"$job\"}[$__rate_interval] offset 5m, \"xai_dst\", \"$1\", \"src\", \"(.*)\") \
             + on() group_left() histogram_quantile(0.99, sum by (le) (rate(xai_h_bucket[${__range}])))  # xai_trailing",
        );
        let names: Vec<&str> = r.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(names, vec!["xai_a", "xai_h_bucket"], "{r:#?}");
        assert_eq!(r[0].matchers, vec![m("job", "=~", "$job")]);
        assert_eq!(r[1].matchers, vec![m("le", "by", "")]);
        // A name-matcher selector.
        let r = refs_of(r#"{__name__="xai_z", a="b"}"#);
        assert_eq!(r[0].metric, "xai_z");
        assert_eq!(r[0].matchers, vec![m("a", "=", "b")]);
    }

    #[test]
    fn rule_file_exprs_in_every_yaml_form_with_template_labels() {
        let yaml = r#"groups:
  - name: g
    rules:
      # expr: xai_commented_out
      - alert: Block
        expr: |
          sum by (instance, action) (
            increase(xai_a_total{event_type="api_key_audit"}[5m])  # a PromQL comment xai_nope
          ) > 0
        labels:
          severity: warning
        annotations:
          summary: '{{ $labels.action }} on {{ $labels.instance }}'
      - alert: Double
        expr: "xai_b{l=\"v\"} > 0 and
          xai_c"
        annotations:
          description: "{{ $labels.l }}"
      - alert: Single
        expr: 'xai_d{l=''v''} == 1'
      - record: plain:rule
        expr: xai_e{a="b"}
          > 0 # trailing comment xai_nope
      - expr: xai_f
        alert: KeyAfterExpr
      - alert: Folded
        expr: >-
          xai_g
          or xai_h
"#;
        let r = rule_file_refs("rules.yml", yaml);
        let got: Vec<(String, String, Vec<Matcher>)> = r
            .iter()
            .map(|r| (r.context.clone(), r.metric.clone(), r.matchers.clone()))
            .collect();
        let want = vec![
            (
                "alert Block".to_string(),
                "xai_a_total".to_string(),
                vec![
                    m("event_type", "=", "api_key_audit"),
                    m("action", "by", ""),
                    m("action", "$labels", ""),
                ],
            ),
            (
                "alert Double".into(),
                "xai_b".into(),
                vec![m("l", "=", "v")],
            ),
            ("alert Double".into(), "xai_c".into(), vec![]),
            // `l` via $labels applies to both metrics of the expression.
            (
                "alert Double".into(),
                "xai_b".into(),
                vec![m("l", "$labels", "")],
            ),
            (
                "alert Single".into(),
                "xai_d".into(),
                vec![m("l", "=", "v")],
            ),
            (
                "record plain:rule".into(),
                "xai_e".into(),
                vec![m("a", "=", "b")],
            ),
            ("alert KeyAfterExpr".into(), "xai_f".into(), vec![]),
            ("alert Folded".into(), "xai_g".into(), vec![]),
            ("alert Folded".into(), "xai_h".into(), vec![]),
        ];
        assert_eq!(got, want, "{r:#?}");
        assert_eq!(r[3].also, vec!["xai_c".to_string()]);
        assert!(r[0].expr.contains("increase(xai_a_total"), "{}", r[0].expr);
    }

    #[test]
    fn dashboard_targets_legends_variables_and_loki_skipped() {
        let json: serde_json::Value = serde_json::json!({
            "templating": {"list": [
                {"name": "instance", "type": "query",
                 "query": {"query": "label_values(xai_up{x=\"1\"}, instance)"}},
                {"name": "scope", "type": "query", "query": "label_values(xai_keys, scope)"},
                {"name": "ds", "type": "datasource", "query": "prometheus"}
            ]},
            "annotations": {"list": [
                {"name": "audit", "datasource": {"type": "loki", "uid": "${DS_LOKI}"},
                 "expr": "{job=\"xai-keys\"} | json | event_type=\"api_key_audit\""}
            ]},
            "panels": [
                {"type": "row", "title": "Row", "panels": [
                    {"title": "Nested", "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
                     "targets": [{"expr": "sum by (event_type) (increase(xai_ev_total[5m]))",
                                  "legendFormat": "{{event_type}} / {{ action }} {{__name__}}"}]}
                ]},
                {"title": "Logs", "datasource": {"type": "loki", "uid": "${DS_LOKI}"},
                 "targets": [{"expr": "{job=\"xai-keys\"} | json | xai_field=\"x\""}]},
                {"title": "Loki by uid", "targets": [{"datasource": {"uid": "${DS_LOKI}"}, "expr": "xai_should_not_appear"}]}
            ]
        });
        let r = dashboard_refs("d.json", &json);
        let got: Vec<(String, String, Vec<Matcher>)> = r
            .iter()
            .map(|r| (r.context.clone(), r.metric.clone(), r.matchers.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "variable \"instance\"".to_string(),
                    "xai_up".to_string(),
                    vec![m("x", "=", "1")]
                ),
                (
                    "variable \"scope\"".into(),
                    "xai_keys".into(),
                    vec![m("scope", "label_values", "")]
                ),
                (
                    "panel \"Nested\"".into(),
                    "xai_ev_total".into(),
                    vec![
                        m("event_type", "by", ""),
                        m("event_type", "legend", ""),
                        m("action", "legend", "")
                    ]
                ),
            ],
            "{r:#?}"
        );
    }

    const SCRAPE: &str = r#"# HELP xai_ev_total Events.
# TYPE xai_ev_total counter
xai_ev_total{event_type="api_key_audit",action="revoke"} 1
xai_ev_total{event_type="api_auth_failure"} 4
# HELP xai_lat_seconds Latency.
# TYPE xai_lat_seconds histogram
xai_lat_seconds_sum 0.5
xai_lat_seconds_count 3
xai_lat_seconds_bucket{le="0.1"} 1
xai_lat_seconds_bucket{le="+Inf"} 3
# TYPE xai_info gauge
xai_info{sink="a1",host="h.example, \"quoted\" {x}"} 1
# TYPE xai_age gauge
xai_age{sink="a1"} 0
# TYPE xai_empty_total counter
# EOF
"#;

    fn r(metric: &str, matchers: Vec<Matcher>, also: &[&str]) -> AssetRef {
        AssetRef {
            file: "f".into(),
            context: "alert A".into(),
            expr: "e".into(),
            metric: metric.into(),
            matchers,
            also: also.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn satisfied_references_raise_nothing() {
        let refs = vec![
            r(
                "xai_ev_total",
                vec![m("event_type", "=", "api_key_audit"), m("action", "by", "")],
                &[],
            ),
            r("xai_ev_total", vec![m("action", "=", "")], &[]),
            r(
                "xai_ev_total",
                vec![m("event_type", "=~", "nothing.*"), m("action", "!=", "x")],
                &[],
            ),
            r(
                "xai_ev_total",
                vec![
                    m("event_type", "=", "$type"),
                    m("instance", "=", "gw1"),
                    m("job", "by", ""),
                ],
                &[],
            ),
            r("xai_lat_seconds_bucket", vec![m("le", "by", "")], &[]),
            r("xai_lat_seconds_sum", vec![], &[]),
            r("xai_lat_seconds_count", vec![m("__name__", "by", "")], &[]),
            r(
                "xai_age",
                vec![m("host", "group_left", ""), m("sink", "on", "")],
                &["xai_info"],
            ),
            r(
                "xai_info",
                vec![m("host", "=", "h.example, \"quoted\" {x}")],
                &[],
            ),
        ];
        assert_eq!(check_against_scrape(&refs, SCRAPE), Vec::<String>::new());
    }

    #[test]
    fn each_unsatisfied_reference_raises_one_problem() {
        let refs = vec![
            r("xai_gone_total", vec![], &[]),
            r("xai_lat_seconds", vec![], &[]),
            r("xai_ev", vec![], &[]),
            r("xai_empty_total", vec![m("a", "by", "")], &[]),
            r(
                "xai_ev_total",
                vec![m("kind", "by", ""), m("event_type", "=", "nope")],
                &[],
            ),
            r("xai_ev_total", vec![m("severity", "=~", "W.*")], &[]),
            r("xai_lat_seconds_sum", vec![m("le", "by", "")], &[]),
            r("xai_ev_total", vec![m("event_type", "=", "")], &[]),
            r(
                "xai_age",
                vec![m("hostname", "group_left", "")],
                &["xai_info"],
            ),
            r("xai_x", vec![m("a", "on", "")], &["xai_y"]),
            r("xai_gone", vec![m("host", "on", "")], &["xai_age"]),
        ];
        let p = check_against_scrape(&refs, SCRAPE);
        assert_eq!(p.len(), refs.len(), "{p:#?}");
        let expect = [
            "xai_gone_total is not exported",
            "xai_lat_seconds is a histogram: query xai_lat_seconds_count, xai_lat_seconds_sum or xai_lat_seconds_bucket",
            "xai_ev is not exported (xai_ev_total is",
            "xai_empty_total is declared (counter) but has no series",
            "label kind (used in by) is never exported; event_type=\"nope\" never seen (seen: api_auth_failure, api_key_audit)",
            "label severity (used in =~) is never exported",
            "label le (used in by) is never exported",
            "event_type=\"\" matches nothing",
            "label hostname (used in group_left) is never exported on any of xai_age, xai_info",
            "none of xai_x, xai_y is exported",
            "label host (used in on) is never exported on any of xai_age (xai_gone not exported)",
        ];
        for (got, want) in p.iter().zip(expect) {
            assert!(got.contains(want), "{got:?} should contain {want:?}");
            assert!(got.starts_with("f: alert A: "), "{got}");
        }
    }

    #[test]
    fn asset_refs_reads_rules_and_dashboards_under_deploy() {
        let dir = tempfile::tempdir().unwrap();
        let alerts = dir.path().join("deploy/prometheus/alerts");
        let grafana = dir.path().join("deploy/grafana");
        std::fs::create_dir_all(&alerts).unwrap();
        std::fs::create_dir_all(&grafana).unwrap();
        std::fs::write(
            alerts.join("a.yml"),
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: xai_a > 0\n",
        )
        .unwrap();
        // promtool unit tests are not rule files.
        std::fs::write(
            alerts.join("a_test.yml"),
            "tests:\n  - promql_expr_test:\n      - expr: xai_only_in_test\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("deploy/prometheus/prometheus.yml"),
            "rule_files:\n  - alerts/a.yml\n",
        )
        .unwrap();
        std::fs::write(
            grafana.join("d.json"),
            r#"{"panels": [{"title": "P", "targets": [{"expr": "xai_b", "legendFormat": "{{x}}"}]}]}"#,
        )
        .unwrap();
        let refs = asset_refs(dir.path());
        let got: Vec<(&str, &str, &str)> = refs
            .iter()
            .map(|r| (r.file.as_str(), r.context.as_str(), r.metric.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("deploy/prometheus/alerts/a.yml", "alert A", "xai_a"),
                ("deploy/grafana/d.json", "panel \"P\"", "xai_b"),
            ]
        );
        let problems = check_against_scrape(&refs, "xai_a 1\nxai_b{y=\"1\"} 2\n");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].contains("label x (used in legend) is never exported"),
            "{problems:?}"
        );
    }

    /// Guards the live check against passing vacuously: every alert/recording rule and every
    /// panel with a Prometheus query in deploy/ yields references.
    #[test]
    fn every_rule_and_prometheus_panel_in_deploy_yields_references() {
        let root = repo_root();
        let refs = asset_refs(&root);
        let contexts: BTreeSet<(&str, &str)> = refs
            .iter()
            .map(|r| (r.file.as_str(), r.context.as_str()))
            .collect();
        let mut expected = Vec::new();
        for path in files_under(&root.join("deploy/prometheus/alerts"), &["yml", "yaml"]) {
            let file = rel(&root, &path);
            if file.ends_with("_test.yml") || file.ends_with("_test.yaml") {
                continue;
            }
            for line in read(&path).lines().filter(|l| !is_blank_or_comment(l)) {
                let (_, t) = key_at(line);
                for kind in ["alert", "record"] {
                    if let Some(v) = key_value(t, kind) {
                        expected.push((file.clone(), format!("{kind} {}", unquote(v))));
                    }
                }
            }
        }
        for path in files_under(&root.join("deploy/grafana"), &["json"]) {
            let file = rel(&root, &path);
            let json: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
            let mut stack = vec![&json];
            while let Some(v) = stack.pop() {
                match v {
                    serde_json::Value::Object(o) => {
                        let queries =
                            o.get("targets")
                                .and_then(|t| t.as_array())
                                .is_some_and(|ts| {
                                    ts.iter().any(|t| {
                                        t.get("expr")
                                            .and_then(|e| e.as_str())
                                            .is_some_and(|e| e.contains("xai_"))
                                    })
                                });
                        if queries && !is_loki(o.get("datasource")) {
                            let title = o.get("title").and_then(|t| t.as_str()).unwrap_or("");
                            expected.push((file.clone(), format!("panel {title:?}")));
                        }
                        stack.extend(o.values());
                    }
                    serde_json::Value::Array(a) => stack.extend(a),
                    _ => {}
                }
            }
        }
        assert!(expected.len() > 10, "found only {expected:?}");
        for (file, context) in &expected {
            assert!(
                contexts.contains(&(file.as_str(), context.as_str())),
                "{file}: {context} yields no xai_* reference"
            );
        }
    }
}

/// Every metric and label the alert rules and the dashboard use is exported by a running
/// gateway: a scrape taken after the traffic that creates every family (a webhook sink
/// configured, a proxied request without upstream, a rate-limited client, keys that expire).
#[tokio::test]
async fn every_metric_and_label_of_the_rules_and_dashboard_is_exported() {
    use crate::common::*;
    let h = Harness::with(|c| {
        c.telemetry.webhooks.sinks =
            xai_keys_server::webhook::parse_sinks("http://127.0.0.1:9/hook").unwrap();
        c.auth_failure_limit = xai_keys_server::ratelimit::Limit {
            max: 1,
            window_secs: 60.0,
        };
        c.peer.ring = xai_keys_core::peer::KeyRing {
            current: Some(xai_keys_core::peer::PeerKey::generate().unwrap()),
            ..Default::default()
        };
    });
    // A refused peer request: xai_peer_auth_total.
    h.send(post("/sync")).await;
    h.send(get("/blocks")).await; // no upstream: xai_gateway_upstream_requests_total
    h.issue_http(serde_json::json!({"label": "assets", "scope": "user"}))
        .await;
    for _ in 0..3 {
        h.send(post("/send").h("x-api-key", "not-a-key-for-assets"))
            .await;
    }
    let text = h.send(get("/metrics")).await.text();
    let refs = asset_refs(&repo_root());
    assert!(refs.len() > 50, "{} references only", refs.len());
    let problems = check_against_scrape(&refs, &text);
    assert!(
        problems.is_empty(),
        "assets use series the gateway does not export:\n{}\n\nscrape:\n{text}",
        problems.join("\n")
    );
}
