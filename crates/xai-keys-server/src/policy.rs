//! The route policy: which credential each method and path needs.
//!
//! A policy is an ordered list of rules (first match wins) plus a default for reads and one for
//! writes. Paths are matched after [`normalize_path`], which decodes percent-escapes, strips the
//! reference's API-version prefixes (`/api/v2/send` is `/send`) and refuses anything ambiguous
//! (`..`, `//`, an encoded `/`), so the path the policy judges is the path the node routes.
//! The built-in default follows the runbook; operators replace it with a TOML file.

use std::fmt;
use std::sync::Arc;

use axum::http::Method;
use serde::Deserialize;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Anyone.
    Public,
    /// A user key (or operator/admin; auditor only for reads).
    User,
    /// An operator or admin key.
    Operator,
    /// An auditor, operator or admin key; auditors only on reads.
    Auditor,
    /// An admin key.
    Admin,
    /// The peer key (node-to-node gossip).
    Peer,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::User => "user",
            Access::Operator => "operator",
            Access::Auditor => "auditor",
            Access::Admin => "admin",
            Access::Peer => "peer",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Access::Public,
            Access::User,
            Access::Operator,
            Access::Auditor,
            Access::Admin,
            Access::Peer,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Methods that never change state: auditors may use them.
pub fn is_read_method(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// `{name}`: one segment.
    Param,
    /// `*` as the last segment: zero or more segments.
    Rest,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `None` = every method.
    methods: Option<Vec<Method>>,
    segs: Vec<Seg>,
    pub access: Access,
    /// The pattern as written, used as the route's name in limits and logs.
    pub template: Arc<str>,
}

impl Rule {
    fn matches(&self, method: &Method, segs: &[&str]) -> bool {
        if let Some(ms) = &self.methods {
            let head_as_get = *method == Method::HEAD && ms.contains(&Method::GET);
            if !ms.contains(method) && !head_as_get {
                return false;
            }
        }
        let mut i = 0;
        for s in &self.segs {
            match s {
                Seg::Rest => return true,
                Seg::Param => {
                    if i >= segs.len() {
                        return false;
                    }
                }
                Seg::Lit(l) => {
                    if segs.get(i) != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == segs.len()
    }
}

/// The policy's decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub access: Access,
    /// The matching rule's pattern, or `default:read` / `default:write`.
    pub template: Arc<str>,
}

/// An ordered rule list with defaults.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    rules: Vec<Rule>,
    default_read: Access,
    default_write: Access,
    read_name: Arc<str>,
    write_name: Arc<str>,
    /// Where it came from (a file path or "built-in").
    pub source: String,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("route policy {source_name}: {problem}")]
pub struct PolicyError {
    pub source_name: String,
    pub problem: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default_read: Option<String>,
    default_write: Option<String>,
    #[serde(default, rename = "route")]
    routes: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    path: String,
    #[serde(default)]
    methods: Option<Vec<String>>,
    access: String,
}

/// The built-in policy, in the file format (also the documented example).
pub const DEFAULT_POLICY_TOML: &str = r#"# xai-keys route policy: first matching rule wins.
# access: public | user | operator | auditor | admin | peer
# path: exact ("/send"), one-segment parameters ("/mempool/{txid}"), or a trailing "*"
#       ("/wallet/*" matches "/wallet" and everything below it).
# methods: optional list; HEAD follows GET. Without it, every method.
default_read = "public"
default_write = "user"

[[route]]
path = "/health"
methods = ["GET"]
access = "public"

[[route]]
path = "/metrics"
methods = ["GET"]
access = "public"

# Node-to-node gossip: the peer key.
[[route]]
path = "/transaction/receive"
access = "peer"
[[route]]
path = "/block/receive"
access = "peer"
[[route]]
path = "/sync"
access = "peer"
[[route]]
path = "/finality/vote"
access = "peer"

# User routes.
[[route]]
path = "/send"
access = "user"
[[route]]
path = "/wallet/*"
access = "user"
[[route]]
path = "/peers/*"
methods = ["POST", "PUT", "PATCH", "DELETE"]
access = "user"

# The node's admin routes (reference section 5.5), by the scopes that may call them.
[[route]]
path = "/admin/withdrawals/status"
methods = ["GET"]
access = "auditor"
[[route]]
path = "/admin/emergency/status"
methods = ["GET"]
access = "auditor"
[[route]]
path = "/admin/mining/status"
methods = ["GET"]
access = "auditor"
[[route]]
path = "/admin/peers"
methods = ["GET"]
access = "auditor"
[[route]]
path = "/admin/withdrawals/telemetry"
access = "operator"
[[route]]
path = "/admin/emergency/pause"
access = "operator"
[[route]]
path = "/admin/emergency/unpause"
access = "operator"
[[route]]
path = "/admin/mining/enable"
access = "operator"
[[route]]
path = "/admin/mining/disable"
access = "operator"
[[route]]
path = "/admin/peers/disconnect"
access = "operator"
[[route]]
path = "/admin/peers/ban"
access = "operator"
[[route]]
path = "/admin/peers/unban"
access = "operator"
[[route]]
path = "/admin/profiling/status"
access = "operator"
[[route]]
path = "/admin/profiling/memory/snapshot"
access = "operator"
[[route]]
path = "/admin/profiling/cpu/hotspots"
access = "operator"
[[route]]
path = "/admin/*"
access = "admin"
[[route]]
path = "/mempool/{txid}"
methods = ["DELETE"]
access = "admin"
"#;

impl RoutePolicy {
    /// The built-in policy.
    pub fn builtin() -> Self {
        match Self::parse(DEFAULT_POLICY_TOML, "built-in") {
            Ok(p) => p,
            // The built-in text is tested; this arm only keeps the code panic-free.
            Err(_) => RoutePolicy {
                rules: vec![],
                default_read: Access::Admin,
                default_write: Access::Admin,
                read_name: Arc::from("default:read"),
                write_name: Arc::from("default:write"),
                source: "built-in (fallback: everything admin)".into(),
            },
        }
    }

    /// Parses a policy file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, PolicyError> {
        let err = |problem: String| PolicyError {
            source_name: source.to_string(),
            problem,
        };
        let file: PolicyFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let access = |s: &str, what: &str| {
            Access::parse(s.trim()).ok_or_else(|| {
                err(format!(
                    "{what}: unknown access {s:?}; use public, user, operator, auditor, admin or peer"
                ))
            })
        };
        let default_read = access(
            file.default_read.as_deref().unwrap_or("public"),
            "default_read",
        )?;
        let default_write = access(
            file.default_write.as_deref().unwrap_or("user"),
            "default_write",
        )?;
        if default_write == Access::Public {
            tracing::warn!(source, "route policy makes every unlisted write public");
        }
        let mut rules = Vec::with_capacity(file.routes.len());
        for (n, r) in file.routes.iter().enumerate() {
            let what = format!("route #{} ({:?})", n + 1, r.path);
            let a = access(&r.access, &what)?;
            let segs = parse_pattern(&r.path).map_err(|p| err(format!("{what}: {p}")))?;
            if matches!(segs.first(), Some(Seg::Lit(l)) if l == "admin")
                && matches!(a, Access::Public | Access::User | Access::Peer)
            {
                return Err(err(format!(
                    "{what}: routes under /admin need operator, auditor or admin access, not {a}"
                )));
            }
            let methods = match &r.methods {
                None => None,
                Some(ms) if ms.is_empty() => {
                    return Err(err(format!(
                        "{what}: methods is empty; leave it out to match every method"
                    )));
                }
                Some(ms) => Some(
                    ms.iter()
                        .map(|m| {
                            let up = m.trim().to_ascii_uppercase();
                            match up.as_str() {
                                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE"
                                | "OPTIONS" => Method::from_bytes(up.as_bytes())
                                    .map_err(|_| err(format!("{what}: bad method {m:?}"))),
                                _ => Err(err(format!(
                                    "{what}: unknown method {m:?}; use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS"
                                ))),
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            rules.push(Rule {
                methods,
                segs,
                access: a,
                template: Arc::from(r.path.trim()),
            });
        }
        Ok(RoutePolicy {
            rules,
            default_read,
            default_write,
            read_name: Arc::from("default:read"),
            write_name: Arc::from("default:write"),
            source: source.to_string(),
        })
    }

    /// Reads and parses a policy file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, PolicyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            source_name: name.clone(),
            problem: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, &name)
    }

    /// What `method` on the normalised `path` requires.
    ///
    /// Nothing under `/admin` is public, user or peer, whatever the file says: `parse` refuses
    /// such a rule written for `/admin`, and here a broader rule (`/*`, `/{any}/…`) that would
    /// open an `/admin` path is passed over, and a default that would is raised to admin (as
    /// the built-in `/admin/*` rule has it).
    pub fn classify(&self, method: &Method, path: &str) -> Route {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let under_admin = segs.first() == Some(&"admin");
        let too_open =
            |a: Access| under_admin && matches!(a, Access::Public | Access::User | Access::Peer);
        for r in &self.rules {
            if !too_open(r.access) && r.matches(method, &segs) {
                return Route {
                    access: r.access,
                    template: r.template.clone(),
                };
            }
        }
        let (access, template) = if is_read_method(method) {
            (self.default_read, &self.read_name)
        } else {
            (self.default_write, &self.write_name)
        };
        Route {
            access: if too_open(access) {
                Access::Admin
            } else {
                access
            },
            template: template.clone(),
        }
    }

    /// Number of rules (for the startup log).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn parse_pattern(p: &str) -> Result<Vec<Seg>, String> {
    let p = p.trim();
    if !p.starts_with('/') {
        return Err("a path must start with '/'".into());
    }
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    let mut segs = Vec::with_capacity(parts.len());
    for (i, s) in parts.iter().enumerate() {
        if *s == "*" {
            if i + 1 != parts.len() {
                return Err("'*' may only be the last segment".into());
            }
            segs.push(Seg::Rest);
        } else if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
            segs.push(Seg::Param);
        } else if s.contains(['*', '{', '}', '?', '#', '%']) || *s == "." || *s == ".." {
            return Err(format!(
                "segment {s:?} is not a literal, a {{param}} or a trailing '*'"
            ));
        } else {
            segs.push(Seg::Lit((*s).to_string()));
        }
    }
    Ok(segs)
}

/// Why a request path is refused before any policy decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// Decodes and canonicalises a request path for matching: percent-escapes decoded (an encoded
/// `/`, a NUL or invalid UTF-8 refused), empty and `.`/`..` segments refused, one trailing `/`
/// ignored, and the reference's version prefixes (`/api/vN`, `/vN`) removed.
pub fn normalize_path(raw: &str) -> Result<String, BadPath> {
    normalize_path_with(raw, &[])
}

/// [`normalize_path`], also removing the node's configured API versions (`XAI_API_VERSIONS`,
/// e.g. `beta`) as prefixes. Prefixes are removed repeatedly (`/v1/v2/admin` is judged as
/// `/admin`): the gateway may be stricter than the node's routing, never looser.
pub fn normalize_path_with(raw: &str, versions: &[String]) -> Result<String, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath("the path must start with '/'"));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadPath("malformed percent-escape in the path"));
            };
            let v = (h * 16 + l) as u8;
            if v == b'/' || v == b'\\' {
                return Err(BadPath("an encoded '/' or '\\' in the path"));
            }
            if v == 0 {
                return Err(BadPath("an encoded NUL in the path"));
            }
            out.push(v);
            i += 3;
        } else {
            if b == b'\\' {
                return Err(BadPath("a '\\' in the path"));
            }
            out.push(b);
            i += 1;
        }
    }
    let Ok(decoded) = String::from_utf8(out) else {
        return Err(BadPath("the path is not valid UTF-8 once decoded"));
    };
    let trimmed = if decoded.len() > 1 {
        decoded.strip_suffix('/').unwrap_or(&decoded)
    } else {
        &decoded
    };
    let mut segs: Vec<&str> = Vec::new();
    for (n, s) in trimmed.split('/').enumerate() {
        if n == 0 {
            continue;
        }
        if s.is_empty() && trimmed != "/" {
            return Err(BadPath("an empty segment ('//') in the path"));
        }
        if s == "." || s == ".." {
            return Err(BadPath("a '.' or '..' segment in the path"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(BadPath("a control character in the path"));
        }
        segs.push(s);
    }
    let is_version = |s: &str| {
        (s.len() > 1 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit()))
            || versions.iter().any(|v| v == s)
    };
    let mut rest: &[&str] = &segs;
    loop {
        rest = match rest {
            ["api", v, tail @ ..] if is_version(v) => tail,
            [v, tail @ ..] if is_version(v) => tail,
            _ => break,
        };
    }
    let mut norm = String::with_capacity(trimmed.len());
    for s in rest {
        if s.is_empty() {
            continue;
        }
        norm.push('/');
        norm.push_str(s);
    }
    if norm.is_empty() {
        norm.push('/');
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(p: &RoutePolicy, m: Method, path: &str) -> Access {
        p.classify(&m, &normalize_path(path).unwrap()).access
    }

    #[test]
    fn builtin_policy_follows_the_runbook() {
        let p = RoutePolicy::builtin();
        assert!(p.len() > 10, "built-in policy parsed");
        assert_eq!(access(&p, Method::POST, "/send"), Access::User);
        assert_eq!(access(&p, Method::GET, "/wallet/abc/balance"), Access::User);
        assert_eq!(access(&p, Method::GET, "/wallet"), Access::User);
        assert_eq!(access(&p, Method::POST, "/peers/add"), Access::User);
        assert_eq!(access(&p, Method::GET, "/peers"), Access::Public);
        assert_eq!(
            access(&p, Method::POST, "/transaction/receive"),
            Access::Peer
        );
        assert_eq!(access(&p, Method::POST, "/sync"), Access::Peer);
        assert_eq!(access(&p, Method::GET, "/admin/anything"), Access::Admin);
        assert_eq!(access(&p, Method::GET, "/admin/peers"), Access::Auditor);
        assert_eq!(
            access(&p, Method::POST, "/admin/peers/ban"),
            Access::Operator
        );
        assert_eq!(access(&p, Method::GET, "/health"), Access::Public);
        assert_eq!(access(&p, Method::HEAD, "/health"), Access::Public);
        assert_eq!(access(&p, Method::GET, "/blocks"), Access::Public);
        assert_eq!(access(&p, Method::POST, "/contracts/call"), Access::User);
        assert_eq!(access(&p, Method::DELETE, "/mempool/abc"), Access::Admin);
    }

    #[test]
    fn version_prefixes_and_encodings_cannot_dodge_the_policy() {
        let p = RoutePolicy::builtin();
        assert_eq!(access(&p, Method::GET, "/api/v2/admin/x"), Access::Admin);
        assert_eq!(access(&p, Method::GET, "/v1/admin/x"), Access::Admin);
        assert_eq!(access(&p, Method::GET, "/%61dmin/x"), Access::Admin);
        assert_eq!(access(&p, Method::POST, "/send/"), Access::User);
        assert!(normalize_path("/admin/../send").is_err());
        assert!(normalize_path("//admin/x").is_err());
        assert!(normalize_path("/admin%2fx").is_err());
        assert!(normalize_path("/a%zz").is_err());
        assert!(normalize_path("/a%00").is_err());
        assert!(normalize_path("/a%ff").is_err());
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("/api/v1").unwrap(), "/");
        assert_eq!(normalize_path("/version/x").unwrap(), "/version/x");
        assert_eq!(normalize_path("/v1/v2/admin/x").unwrap(), "/admin/x");
        assert_eq!(normalize_path("/api/v1/v2/admin").unwrap(), "/admin");
        let beta = ["beta".to_string()];
        assert_eq!(
            normalize_path_with("/beta/admin/x", &beta).unwrap(),
            "/admin/x"
        );
        assert_eq!(normalize_path("/beta/admin/x").unwrap(), "/beta/admin/x");
    }

    /// Found by the `route_policy` fuzz target (fuzz/corpus/route_policy/
    /// admin-opened-by-default-or-broad-rule.txt): a policy file whose default or broad rule
    /// (`/*`, `/{any}/…`) is public, user or peer made the node's `/admin` routes just as open,
    /// although `parse` refuses such a rule written for `/admin` itself.
    #[test]
    fn fuzz_regression_admin_paths_are_never_opened_by_defaults_or_broad_rules() {
        let p = RoutePolicy::parse(
            "default_read = \"public\"\ndefault_write = \"user\"\n\
             [[route]]\npath = \"/{section}/status\"\naccess = \"public\"\n\
             [[route]]\npath = \"/admin/reports\"\nmethods = [\"GET\"]\naccess = \"auditor\"\n\
             [[route]]\npath = \"/*\"\nmethods = [\"POST\"]\naccess = \"peer\"\n",
            "t",
        )
        .unwrap();
        for (m, path, want) in [
            (Method::GET, "/admin/withdrawals/status", Access::Admin),
            (Method::GET, "/admin/status", Access::Admin),
            (Method::GET, "/admin", Access::Admin),
            (Method::POST, "/admin/emergency/pause", Access::Admin),
            (Method::DELETE, "/admin/x", Access::Admin),
            (Method::GET, "/admin/reports", Access::Auditor),
            // Outside /admin the file is followed as written.
            (Method::GET, "/mining/status", Access::Public),
            (Method::GET, "/blocks", Access::Public),
            (Method::POST, "/sync", Access::Peer),
            (Method::PUT, "/x", Access::User),
        ] {
            assert_eq!(p.classify(&m, path).access, want, "{m} {path}");
        }
        assert_eq!(
            p.classify(&Method::GET, "/admin/x").template.as_ref(),
            "default:read"
        );
    }

    #[test]
    fn policy_files_are_validated() {
        let ok = RoutePolicy::parse(
            "default_read = \"user\"\n[[route]]\npath = \"/x/{id}\"\nmethods = [\"get\"]\naccess = \"auditor\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(ok.classify(&Method::GET, "/x/1").access, Access::Auditor);
        assert_eq!(ok.classify(&Method::GET, "/x/1/2").access, Access::User);
        for bad in [
            "[[route]]\npath = \"/x\"\naccess = \"root\"\n",
            "[[route]]\npath = \"x\"\naccess = \"user\"\n",
            "[[route]]\npath = \"/a/*/b\"\naccess = \"user\"\n",
            "[[route]]\npath = \"/admin/x\"\naccess = \"public\"\n",
            "[[route]]\npath = \"/x\"\nmethods = []\naccess = \"user\"\n",
            "[[route]]\npath = \"/x\"\nmethods = [\"BREW\"]\naccess = \"user\"\n",
            "[[route]]\npath = \"/x\"\naccess = \"user\"\ntypo = 1\n",
            "default_write = \"nobody\"\n",
        ] {
            let e = RoutePolicy::parse(bad, "t").unwrap_err();
            assert!(e.to_string().starts_with("route policy t: "), "{e}");
        }
    }
}
