//! Who may call what: bearer tokens for three roles, compared in constant
//! time.
//!
//! | role | routes | token variable |
//! | --- | --- | --- |
//! | client | `POST /v1/pipelines/{name}`, `GET /v1/requests/{id}`, `GET /v1/pipelines` | `STRATA_CLIENT_TOKEN` |
//! | reviewer | `/v1/tickets...` | `STRATA_REVIEWER_TOKEN` |
//! | admin | the admin listener; also accepted on every other route | `STRATA_ADMIN_TOKEN` |
//!
//! `/healthz` is open. A role without a configured token is open to
//! everyone for the client role, and to loopback callers only for the
//! reviewer and admin roles. A missing or unknown token is a 401; a valid
//! token of the wrong role is a 403.

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Application developers calling pipelines.
    Client,
    /// Humans answering escalated requests.
    Reviewer,
    /// Operators.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Client, Role::Reviewer, Role::Admin];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }

    /// The environment variable holding the role's token.
    pub fn token_variable(self) -> &'static str {
        match self {
            Role::Client => "STRATA_CLIENT_TOKEN",
            Role::Reviewer => "STRATA_REVIEWER_TOKEN",
            Role::Admin => "STRATA_ADMIN_TOKEN",
        }
    }
}

/// A configured token, kept as its SHA-256 so that comparisons take the same
/// time whatever the token's length and content.
#[derive(Clone)]
struct Secret {
    digest: [u8; 32],
}

impl Secret {
    fn new(token: &str) -> Secret {
        Secret {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    fn matches(&self, candidate: &[u8; 32]) -> bool {
        self.digest.ct_eq(candidate).into()
    }

    /// A short, non-reversible name for logs and the audit log.
    fn fingerprint(&self) -> String {
        hex::encode(&self.digest[..4])
    }
}

/// The tokens of every role.
#[derive(Clone, Default)]
pub struct Tokens {
    client: Option<Secret>,
    reviewer: Option<Secret>,
    admin: Option<Secret>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("client", &self.client.is_some())
            .field("reviewer", &self.reviewer.is_some())
            .field("admin", &self.admin.is_some())
            .finish()
    }
}

/// Who made a call, for logs and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No usable credentials: 401.
    Unauthenticated(String),
    /// Valid credentials, not for this: 403.
    Forbidden(String),
}

impl Tokens {
    /// Tokens from `STRATA_CLIENT_TOKEN`, `STRATA_REVIEWER_TOKEN` and
    /// `STRATA_ADMIN_TOKEN`; an empty variable counts as unset.
    pub fn from_env() -> Tokens {
        let read = |role: Role| {
            std::env::var(role.token_variable())
                .ok()
                .filter(|t| !t.is_empty())
        };
        Tokens::new(read(Role::Client), read(Role::Reviewer), read(Role::Admin))
    }

    /// Tokens given directly (tests, embedding).
    pub fn new(client: Option<String>, reviewer: Option<String>, admin: Option<String>) -> Tokens {
        Tokens {
            client: client.as_deref().map(Secret::new),
            reviewer: reviewer.as_deref().map(Secret::new),
            admin: admin.as_deref().map(Secret::new),
        }
    }

    fn secret(&self, role: Role) -> Option<&Secret> {
        match role {
            Role::Client => self.client.as_ref(),
            Role::Reviewer => self.reviewer.as_ref(),
            Role::Admin => self.admin.as_ref(),
        }
    }

    /// Whether `role` has a token.
    pub fn configured(&self, role: Role) -> bool {
        self.secret(role).is_some()
    }

    /// Decide whether a call needing `role`, with this `Authorization`
    /// header, from `peer`, may go ahead.
    pub fn authorize(
        &self,
        role: Role,
        authorization: Option<&[u8]>,
        peer: IpAddr,
    ) -> Result<Caller, Denied> {
        let presented = authorization.map(|header| {
            std::str::from_utf8(header)
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(|token| -> [u8; 32] { Sha256::digest(token.trim().as_bytes()).into() })
        });
        let Some(presented) = presented else {
            return match self.secret(role) {
                Some(_) => Err(Denied::Unauthenticated(format!(
                    "this route needs the {} bearer token",
                    role.as_str()
                ))),
                None => self.open(role, peer),
            };
        };
        let Some(digest) = presented else {
            return Err(Denied::Unauthenticated(
                "the Authorization header must be `Bearer <token>`".to_owned(),
            ));
        };
        // Check every role, so that time does not tell which one matched.
        let matched: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| self.secret(*r).is_some_and(|s| s.matches(&digest)))
            .collect();
        if matched.contains(&role) || matched.contains(&Role::Admin) {
            let by = if matched.contains(&role) {
                role
            } else {
                Role::Admin
            };
            let fingerprint = self.secret(by).map(Secret::fingerprint).unwrap_or_default();
            return Ok(Caller(format!("{}:{fingerprint}", by.as_str())));
        }
        match matched.first() {
            Some(other) => Err(Denied::Forbidden(format!(
                "the {} token may not call {} routes",
                other.as_str(),
                role.as_str()
            ))),
            None if self.secret(role).is_none() && authorization.is_some() => {
                // A token nobody configured, on a route with no token: treat
                // it as no token at all rather than guess.
                self.open(role, peer)
            }
            None => Err(Denied::Unauthenticated(
                "the bearer token is not valid".to_owned(),
            )),
        }
    }

    fn open(&self, role: Role, peer: IpAddr) -> Result<Caller, Denied> {
        match role {
            Role::Client => Ok(Caller("anonymous".to_owned())),
            _ if peer.is_loopback() => Ok(Caller(format!("loopback-{}", role.as_str()))),
            _ => Err(Denied::Forbidden(format!(
                "{} routes only accept callers on this machine until {} is set",
                role.as_str(),
                role.token_variable()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn tokens_are_checked_per_role() {
        let tokens = Tokens::new(Some("c".into()), Some("r".into()), Some("a".into()));
        let check =
            |role, header: Option<Vec<u8>>| tokens.authorize(role, header.as_deref(), REMOTE);
        assert!(check(Role::Client, Some(bearer("c"))).is_ok());
        assert!(check(Role::Reviewer, Some(bearer("r"))).is_ok());
        assert!(check(Role::Admin, Some(bearer("a"))).is_ok());
        // The admin token is accepted everywhere.
        assert_eq!(
            check(Role::Reviewer, Some(bearer("a"))).unwrap().0,
            format!("admin:{}", Secret::new("a").fingerprint())
        );
        assert!(matches!(
            check(Role::Admin, Some(bearer("r"))),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            check(Role::Reviewer, Some(bearer("c"))),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            check(Role::Client, None),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            check(Role::Client, Some(bearer("x"))),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            check(Role::Client, Some(b"Basic Yzpj".to_vec())),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn roles_without_tokens_are_loopback_only_except_clients() {
        let tokens = Tokens::default();
        assert!(tokens.authorize(Role::Client, None, REMOTE).is_ok());
        assert!(tokens.authorize(Role::Reviewer, None, LOOPBACK).is_ok());
        assert!(tokens.authorize(Role::Admin, None, LOOPBACK).is_ok());
        assert!(matches!(
            tokens.authorize(Role::Reviewer, None, REMOTE),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            tokens.authorize(Role::Admin, None, REMOTE),
            Err(Denied::Forbidden(_))
        ));
    }
}
