//! Who may call what: bearer tokens for three roles, compared in constant
//! time.
//!
//! | role | routes | token variable |
//! | --- | --- | --- |
//! | client | `POST /v1/pipelines/{name}`, `GET /v1/requests/{id}`, `GET /v1/pipelines` | `STRATA_CLIENT_TOKEN` |
//! | reviewer | `/v1/tickets...`, `GET /v1/feedback/export`; a correction sent to `/v1/feedback` with a reviewer token applies at once | `STRATA_REVIEWER_TOKEN`, or named ones in `STRATA_REVIEWER_TOKENS` (`sam=TOKEN,alex=TOKEN`) |
//! | admin | the admin listener; also accepted on every other route | `STRATA_ADMIN_TOKEN` |
//!
//! `/healthz` is open. A role without a configured token is open to
//! everyone for the client role, and to callers on this machine only for
//! the reviewer and admin roles: the connection must come from a loopback
//! address *and* its `Host` header must name `localhost` or a loopback
//! address. The second half keeps web pages out: a page the operator's
//! browser opens can make it connect to loopback, but under a name the page
//! controls (DNS rebinding), never with `Host: localhost`. A missing or
//! unknown token is a 401; a valid token of the wrong role is a 403.
//!
//! Who a caller is comes from the token, never from a request body: a named
//! reviewer token (`STRATA_REVIEWER_TOKENS`) is its name (`reviewer:sam`),
//! any other token its role and a fingerprint (`client:1a2b3c4d`). Only a
//! caller let in by the same-machine fallback, with no token at all, is
//! trusted to say who it is.

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
    /// Reviewer tokens that carry their holder's name.
    named_reviewers: Vec<(String, Secret)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("client", &self.client.is_some())
            .field("reviewer", &self.reviewer.is_some())
            .field("admin", &self.admin.is_some())
            .field(
                "named_reviewers",
                &self
                    .named_reviewers
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Who made a call, for logs, tickets and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `reviewer:sam` (a named token), `admin:1a2b3c4d` (a token's role and
    /// fingerprint), `loopback-reviewer` or `anonymous` (no token).
    pub id: String,
    /// The role whose token the caller presented; `None` when no token was
    /// needed (the client role without a token, or the loopback fallback).
    pub token: Option<Role>,
}

impl Caller {
    fn open(id: String) -> Caller {
        Caller { id, token: None }
    }

    /// A caller of a route that needs no role.
    pub fn anonymous() -> Caller {
        Caller::open("anonymous".to_owned())
    }

    /// Whether the caller proved a reviewer's (or an admin's) token.
    pub fn is_reviewer(&self) -> bool {
        matches!(self.token, Some(Role::Reviewer | Role::Admin))
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No usable credentials: 401.
    Unauthenticated(String),
    /// Valid credentials, not for this: 403.
    Forbidden(String),
}

impl Tokens {
    /// Tokens from `STRATA_CLIENT_TOKEN`, `STRATA_REVIEWER_TOKEN`,
    /// `STRATA_REVIEWER_TOKENS` and `STRATA_ADMIN_TOKEN`; an empty variable
    /// counts as unset. A malformed `STRATA_REVIEWER_TOKENS` is an error.
    pub fn from_env() -> Result<Tokens, String> {
        let read = |role: Role| {
            std::env::var(role.token_variable())
                .ok()
                .filter(|t| !t.is_empty())
        };
        let mut tokens = Tokens::new(read(Role::Client), read(Role::Reviewer), read(Role::Admin));
        if let Ok(named) = std::env::var(NAMED_REVIEWERS) {
            tokens = tokens.with_named_reviewers(parse_named(&named)?);
        }
        Ok(tokens)
    }

    /// Add reviewer tokens that carry their holder's name.
    pub fn with_named_reviewers(mut self, named: Vec<(String, String)>) -> Tokens {
        self.named_reviewers = named
            .into_iter()
            .map(|(name, token)| (name, Secret::new(&token)))
            .collect();
        self
    }

    /// Tokens given directly (tests, embedding).
    pub fn new(client: Option<String>, reviewer: Option<String>, admin: Option<String>) -> Tokens {
        Tokens {
            client: client.as_deref().map(Secret::new),
            reviewer: reviewer.as_deref().map(Secret::new),
            admin: admin.as_deref().map(Secret::new),
            named_reviewers: Vec::new(),
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
        self.secret(role).is_some() || (role == Role::Reviewer && !self.named_reviewers.is_empty())
    }

    /// Decide whether a call needing `role`, with this `Authorization`
    /// header, from `peer`, addressed to `host` (the `Host` header), may go
    /// ahead.
    pub fn authorize(
        &self,
        role: Role,
        authorization: Option<&[u8]>,
        peer: IpAddr,
        host: Option<&[u8]>,
    ) -> Result<Caller, Denied> {
        let presented = authorization.map(|header| {
            std::str::from_utf8(header)
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(|token| -> [u8; 32] { Sha256::digest(token.trim().as_bytes()).into() })
        });
        let Some(presented) = presented else {
            return match self.configured(role) {
                true => Err(Denied::Unauthenticated(format!(
                    "this route needs the {} bearer token",
                    role.as_str()
                ))),
                false => self.open(role, peer, host),
            };
        };
        let Some(digest) = presented else {
            return Err(Denied::Unauthenticated(
                "the Authorization header must be `Bearer <token>`".to_owned(),
            ));
        };
        // Check every token, so that time does not tell which one matched.
        let mut matched: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| self.secret(*r).is_some_and(|s| s.matches(&digest)))
            .collect();
        let mut reviewer_name = None;
        for (name, secret) in &self.named_reviewers {
            if secret.matches(&digest) {
                reviewer_name = Some(name.clone());
            }
        }
        if reviewer_name.is_some() && !matched.contains(&Role::Reviewer) {
            matched.push(Role::Reviewer);
        }
        if matched.contains(&role) || matched.contains(&Role::Admin) {
            let by = if matched.contains(&role) {
                role
            } else {
                Role::Admin
            };
            let id = match (&reviewer_name, by) {
                (Some(name), Role::Reviewer) => format!("reviewer:{name}"),
                _ => format!(
                    "{}:{}",
                    by.as_str(),
                    self.secret(by).map(Secret::fingerprint).unwrap_or_default()
                ),
            };
            return Ok(Caller {
                id,
                token: Some(by),
            });
        }
        match matched.first() {
            Some(other) => Err(Denied::Forbidden(format!(
                "the {} token may not call {} routes",
                other.as_str(),
                role.as_str()
            ))),
            None if !self.configured(role) && authorization.is_some() => {
                // A token nobody configured, on a route with no token: treat
                // it as no token at all rather than guess.
                self.open(role, peer, host)
            }
            None => Err(Denied::Unauthenticated(
                "the bearer token is not valid".to_owned(),
            )),
        }
    }

    fn open(&self, role: Role, peer: IpAddr, host: Option<&[u8]>) -> Result<Caller, Denied> {
        match role {
            Role::Client => Ok(Caller::open("anonymous".to_owned())),
            _ if !peer.to_canonical().is_loopback() => Err(Denied::Forbidden(format!(
                "{} routes only accept callers on this machine until {} is set",
                role.as_str(),
                role.token_variable()
            ))),
            _ if !host.is_some_and(names_loopback) => Err(Denied::Forbidden(format!(
                "{} routes trust callers on this machine only when they address it as localhost \
                 or a loopback address, not as {}; set {} to call it by another name",
                role.as_str(),
                host.map_or("nothing (no Host header)".to_owned(), |h| format!(
                    "\"{}\"",
                    String::from_utf8_lossy(h)
                )),
                role.token_variable()
            ))),
            _ => Ok(Caller::open(format!("loopback-{}", role.as_str()))),
        }
    }
}

/// The environment variable holding named reviewer tokens.
pub const NAMED_REVIEWERS: &str = "STRATA_REVIEWER_TOKENS";

/// Parse `name=token` pairs separated by commas or white space.
pub fn parse_named(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut named = Vec::new();
    for entry in text.split([',', ' ', '\n', '\t']).filter(|e| !e.is_empty()) {
        let Some((name, token)) = entry.split_once('=') else {
            return Err(format!(
                "an entry has no '=' (entries are name=token); entry {} of {}",
                named.len() + 1,
                NAMED_REVIEWERS
            ));
        };
        let valid_name = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_name {
            return Err(format!(
                "reviewer name \"{name}\" must be 1 to 64 letters, digits, '-', '_' or '.'"
            ));
        }
        if token.len() < 8 {
            return Err(format!(
                "the token of reviewer \"{name}\" is shorter than 8 characters"
            ));
        }
        if named.iter().any(|(n, _): &(String, String)| n == name) {
            return Err(format!("reviewer \"{name}\" is named twice"));
        }
        named.push((name.to_owned(), token.to_owned()));
    }
    Ok(named)
}

/// Whether a `Host` header names this machine: `localhost` or a loopback
/// address, with or without a port.
fn names_loopback(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [::1] or [::1]:9090
        Some(rest) => match rest.split_once(']') {
            Some((address, "")) => address,
            Some((address, port)) if port.strip_prefix(':').is_some_and(valid_port) => address,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|address| address.to_canonical().is_loopback())
}

fn valid_port(port: &str) -> bool {
    port.parse::<u16>().is_ok()
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
        let check = |role, header: Option<Vec<u8>>| {
            tokens.authorize(
                role,
                header.as_deref(),
                REMOTE,
                Some(b"gateway.example.com"),
            )
        };
        assert!(check(Role::Client, Some(bearer("c"))).is_ok());
        assert!(check(Role::Reviewer, Some(bearer("r"))).is_ok());
        assert!(check(Role::Admin, Some(bearer("a"))).is_ok());
        // The admin token is accepted everywhere.
        assert_eq!(
            check(Role::Reviewer, Some(bearer("a"))).unwrap().id,
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
        let local = Some(&b"127.0.0.1:9090"[..]);
        assert!(tokens.authorize(Role::Client, None, REMOTE, None).is_ok());
        assert!(
            tokens
                .authorize(Role::Reviewer, None, LOOPBACK, local)
                .is_ok()
        );
        assert!(tokens.authorize(Role::Admin, None, LOOPBACK, local).is_ok());
        assert!(matches!(
            tokens.authorize(Role::Reviewer, None, REMOTE, local),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            tokens.authorize(Role::Admin, None, REMOTE, local),
            Err(Denied::Forbidden(_))
        ));
    }

    #[test]
    fn a_named_reviewer_token_carries_its_name() {
        let tokens = Tokens::new(None, None, Some("admin-token".into()))
            .with_named_reviewers(parse_named("sam=token-of-sam, alex=token-of-alex").unwrap());
        let caller = tokens
            .authorize(Role::Reviewer, Some(&bearer("token-of-alex")), REMOTE, None)
            .unwrap();
        assert_eq!(caller.id, "reviewer:alex");
        assert!(caller.is_reviewer());
        // A reviewer role with only named tokens is not open on loopback.
        assert!(matches!(
            tokens.authorize(Role::Reviewer, None, LOOPBACK, Some(b"localhost")),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            tokens.authorize(Role::Admin, Some(&bearer("token-of-sam")), REMOTE, None),
            Err(Denied::Forbidden(_))
        ));
        let open = Tokens::default()
            .authorize(Role::Reviewer, None, LOOPBACK, Some(b"localhost"))
            .unwrap();
        assert!(!open.is_reviewer(), "the loopback fallback proves nothing");
    }

    #[test]
    fn named_reviewer_tokens_are_checked() {
        assert!(parse_named("sam").unwrap_err().contains("no '='"));
        assert!(parse_named("s am=12345678").is_err());
        assert!(parse_named("sam=short").unwrap_err().contains("shorter"));
        assert!(
            parse_named("sam=12345678,sam=87654321")
                .unwrap_err()
                .contains("twice")
        );
        assert_eq!(parse_named("").unwrap(), vec![]);
    }

    #[test]
    fn same_machine_trust_needs_a_local_host_header() {
        let tokens = Tokens::default();
        for (host, trusted) in [
            ("localhost", true),
            ("LOCALHOST:9090", true),
            ("localhost.:9090", true),
            ("127.0.0.1:9090", true),
            ("127.8.9.10", true),
            ("[::1]:9090", true),
            ("[::1]", true),
            ("[::ffff:127.0.0.1]:9090", true),
            // A page's own name, resolved to 127.0.0.1 (DNS rebinding).
            ("rebind.example.com:9090", false),
            ("localhost.example.com", false),
            ("10.0.0.1:9090", false),
            ("[::1]9090", false),
            ("localhost:http", false),
            ("", false),
        ] {
            let result = tokens.authorize(Role::Admin, None, LOOPBACK, Some(host.as_bytes()));
            assert_eq!(result.is_ok(), trusted, "{host}: {result:?}");
        }
        let refused = tokens
            .authorize(Role::Reviewer, None, LOOPBACK, None)
            .unwrap_err();
        assert!(
            matches!(&refused, Denied::Forbidden(m) if m.contains("no Host header")),
            "{refused:?}"
        );
        // A token is trusted whatever the caller calls the host.
        let tokens = Tokens::new(None, None, Some("a".into()));
        assert!(
            tokens
                .authorize(
                    Role::Admin,
                    Some(&bearer("a")),
                    LOOPBACK,
                    Some(b"rebind.example.com")
                )
                .is_ok()
        );
    }
}
