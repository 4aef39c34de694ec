//! Key scopes and what each one may do.
//!
//! Scopes are a closed set; anything else is refused with the list of valid scopes, so a typo
//! never silently creates a key that matches no route.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The privilege a key carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Public write routes (`/send`, `/wallet/*`, …).
    User,
    /// User routes plus the operator admin routes.
    Operator,
    /// Read-only: GET routes and the audit events.
    Auditor,
    /// Everything, including key management.
    Admin,
}

impl Scope {
    /// All scopes, in privilege order as listed to operators.
    pub const ALL: [Scope; 4] = [Scope::User, Scope::Operator, Scope::Auditor, Scope::Admin];

    /// The lower-case name used in the store, the log and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Operator => "operator",
            Scope::Auditor => "auditor",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = Error;

    /// Case-insensitive and trimmed, as the reference; anything else is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Scope::ALL
            .into_iter()
            .find(|sc| sc.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| Error::InvalidScope {
                given: s.to_string(),
            })
    }
}

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively_and_refuses_unknown() {
        assert_eq!("ADMIN".parse::<Scope>().unwrap(), Scope::Admin);
        assert_eq!(" auditor ".parse::<Scope>().unwrap(), Scope::Auditor);
        let err = "root".parse::<Scope>().unwrap_err().to_string();
        assert!(err.contains("user, operator, auditor, admin"), "{err}");
    }
}
