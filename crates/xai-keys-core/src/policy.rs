//! Expiry policy and configuration parsing shared by the CLI and the gateway.
//!
//! The policy is resolved once from the environment (through a lookup function, so tests never
//! touch the process environment) and then passed around; nothing here reads the clock.

use crate::error::{Error, Result};

/// Seconds in a day.
pub const DAY: f64 = 86_400.0;

/// TTL rules for new keys (`XAI_API_KEY_DEFAULT_TTL_DAYS`, `XAI_API_KEY_MAX_TTL_DAYS`,
/// `XAI_API_KEY_ALLOW_PERMANENT`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TtlPolicy {
    /// Lifetime of a key issued without an explicit TTL, in seconds.
    pub default_ttl_secs: f64,
    /// Longest lifetime any key may get, in seconds (never below the default).
    pub max_ttl_secs: f64,
    /// Whether non-expiring keys may be issued.
    pub allow_permanent: bool,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        TtlPolicy {
            default_ttl_secs: 90.0 * DAY,
            max_ttl_secs: 365.0 * DAY,
            allow_permanent: false,
        }
    }
}

/// The lifetime a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TtlRequest {
    /// Use the policy default.
    Default,
    /// An explicit lifetime in seconds (must be positive).
    Seconds(f64),
    /// Never expires (only if the policy allows).
    Permanent,
}

/// The expiry a key gets: `None` means permanent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expiry {
    pub expires_at: Option<f64>,
    /// True when the requested TTL was longer than the maximum and was shortened.
    pub clamped: bool,
}

impl TtlPolicy {
    /// Resolves the policy from environment variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let d = TtlPolicy::default();
        let default_days = parse_positive_days(&lookup, "XAI_API_KEY_DEFAULT_TTL_DAYS", 90.0)?;
        let max_days = parse_positive_days(&lookup, "XAI_API_KEY_MAX_TTL_DAYS", 365.0)?;
        let allow_permanent = match lookup("XAI_API_KEY_ALLOW_PERMANENT") {
            Some(v) => parse_bool("XAI_API_KEY_ALLOW_PERMANENT", &v)?,
            None => d.allow_permanent,
        };
        Ok(TtlPolicy {
            default_ttl_secs: default_days * DAY,
            max_ttl_secs: max_days.max(default_days) * DAY,
            allow_permanent,
        })
    }

    /// Computes the expiry for a key created at `created` (epoch seconds).
    pub fn expiry(&self, created: f64, req: TtlRequest) -> Result<Expiry> {
        let secs = match req {
            TtlRequest::Permanent => {
                if !self.allow_permanent {
                    return Err(Error::PermanentDisabled);
                }
                return Ok(Expiry {
                    expires_at: None,
                    clamped: false,
                });
            }
            TtlRequest::Default => self.default_ttl_secs,
            TtlRequest::Seconds(s) => {
                if !s.is_finite() || s <= 0.0 {
                    return Err(Error::InvalidTtl(format!(
                        "TTL must be a positive duration, got {s} seconds"
                    )));
                }
                s
            }
        };
        let clamped = secs > self.max_ttl_secs;
        let at = created + secs.min(self.max_ttl_secs);
        // JSON has no infinity: an infinite expiry would be stored as `null`, i.e. permanent.
        if !at.is_finite() {
            return Err(Error::InvalidTtl(format!(
                "an expiry {secs} seconds after {created} is out of range"
            )));
        }
        Ok(Expiry {
            expires_at: Some(at),
            clamped,
        })
    }
}

fn parse_positive_days(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &str,
    default: f64,
) -> Result<f64> {
    let Some(raw) = lookup(var) else {
        return Ok(default);
    };
    let v: f64 = raw.trim().parse().map_err(|_| Error::InvalidConfig {
        var: var.into(),
        value: raw.clone(),
        reason: "expected a number of days".into(),
    })?;
    if !v.is_finite() || v <= 0.0 || !(v * DAY).is_finite() {
        return Err(Error::InvalidConfig {
            var: var.into(),
            value: raw,
            reason: "must be a positive number of days (small enough to count in seconds)".into(),
        });
    }
    Ok(v)
}

/// Parses a boolean setting: `1/0/true/false/yes/no/on/off`, case-insensitive. Anything else is
/// an error naming the variable (the reference crashed on `true`).
pub fn parse_bool(var: &str, raw: &str) -> Result<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::InvalidConfig {
            var: var.into(),
            value: raw.into(),
            reason: "expected one of 1/0/true/false/yes/no".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_and_clamp() {
        let p = TtlPolicy::from_lookup(env(&[])).unwrap();
        assert_eq!(p, TtlPolicy::default());
        let e = p.expiry(100.0, TtlRequest::Seconds(1000.0 * DAY)).unwrap();
        assert!(e.clamped);
        assert_eq!(e.expires_at, Some(100.0 + 365.0 * DAY));
        assert_eq!(
            p.expiry(0.0, TtlRequest::Default).unwrap().expires_at,
            Some(90.0 * DAY)
        );
    }

    #[test]
    fn zero_or_negative_ttl_is_an_error_not_a_one_second_key() {
        let p = TtlPolicy::default();
        assert!(matches!(
            p.expiry(0.0, TtlRequest::Seconds(0.0)),
            Err(Error::InvalidTtl(_))
        ));
        assert!(matches!(
            p.expiry(0.0, TtlRequest::Seconds(-5.0)),
            Err(Error::InvalidTtl(_))
        ));
        assert!(matches!(
            p.expiry(0.0, TtlRequest::Seconds(f64::NAN)),
            Err(Error::InvalidTtl(_))
        ));
    }

    /// Days that overflow to an infinite number of seconds used to give keys an infinite
    /// `expires_at`, which JSON stores as `null`: reloaded, the key was permanent although
    /// permanent keys were not allowed.
    #[test]
    fn ttl_days_too_large_for_seconds_are_refused_and_expiry_stays_finite() {
        for var in ["XAI_API_KEY_DEFAULT_TTL_DAYS", "XAI_API_KEY_MAX_TTL_DAYS"] {
            let err = TtlPolicy::from_lookup(env(&[(var, "1e307")])).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
        let p = TtlPolicy {
            default_ttl_secs: f64::MAX,
            max_ttl_secs: f64::MAX,
            allow_permanent: false,
        };
        assert!(matches!(
            p.expiry(f64::MAX, TtlRequest::Default),
            Err(Error::InvalidTtl(_))
        ));
    }

    #[test]
    fn permanent_needs_opt_in_and_booleans_accept_usual_spellings() {
        assert!(matches!(
            TtlPolicy::default().expiry(0.0, TtlRequest::Permanent),
            Err(Error::PermanentDisabled)
        ));
        for yes in ["1", "true", "YES", "on"] {
            let p = TtlPolicy::from_lookup(env(&[("XAI_API_KEY_ALLOW_PERMANENT", yes)])).unwrap();
            assert_eq!(
                p.expiry(0.0, TtlRequest::Permanent).unwrap().expires_at,
                None
            );
        }
        let err = TtlPolicy::from_lookup(env(&[("XAI_API_KEY_ALLOW_PERMANENT", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("XAI_API_KEY_ALLOW_PERMANENT"), "{err}");
        assert!(TtlPolicy::from_lookup(env(&[("XAI_API_KEY_DEFAULT_TTL_DAYS", "0")])).is_err());
        let p = TtlPolicy::from_lookup(env(&[
            ("XAI_API_KEY_DEFAULT_TTL_DAYS", "400"),
            ("XAI_API_KEY_MAX_TTL_DAYS", "30"),
        ]))
        .unwrap();
        assert_eq!(p.max_ttl_secs, 400.0 * DAY);
    }
}
