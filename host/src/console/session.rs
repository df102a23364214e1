//! Console sessions: a token entered once becomes a signed cookie.
//!
//! The cookie (`strata_session`) holds who signed in, as which role, until
//! when, and a CSRF token, as hex-encoded JSON with an HMAC-SHA256 over it
//! under a key drawn when the host starts (so a restart signs everyone
//! out, and nothing secret is stored). It is `HttpOnly` (no script reads
//! it), `SameSite=Strict` (no other site's page sends it) and `Secure` when
//! the request came over TLS through a proxy (`X-Forwarded-Proto: https`).
//!
//! Every API route accepts the session where it would accept a bearer
//! token, with the same role rules ([`crate::auth`]); a request that
//! changes anything must also carry the session's CSRF token in
//! `X-CSRF-Token`, which only the console's own pages can read.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::{Caller, Role};

/// The cookie's name.
pub const COOKIE: &str = "strata_session";

/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a session lasts.
pub const LIFETIME_MS: i64 = 8 * 3_600_000;

/// One signed-in console user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who, as the API would name the caller (`reviewer:sam`, `admin:1a2b3c4d`).
    pub caller: String,
    /// The role the token proved: `reviewer` or `admin`.
    pub role: String,
    /// Whether the caller was let in without a token (the loopback fallback).
    pub open: bool,
    /// When it ends, milliseconds since the Unix epoch.
    pub expires: i64,
    /// The token a changing request must echo in `X-CSRF-Token`.
    pub csrf: String,
}

/// Why a session cookie was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Signed by us, but past its time.
    Expired,
    /// Not signed by this host (forged, damaged, or from before a restart).
    Invalid,
}

impl Session {
    /// A new session for `caller`, proved as `role`, from `now`.
    pub fn new(caller: &Caller, role: Role, now: i64) -> Session {
        let mut csrf = [0u8; 16];
        getrandom::fill(&mut csrf).expect("the operating system provides randomness");
        Session {
            caller: caller.id.clone(),
            role: role.as_str().to_owned(),
            open: caller.token.is_none(),
            expires: now + LIFETIME_MS,
            csrf: hex::encode(csrf),
        }
    }

    /// The role the session holds.
    pub fn role(&self) -> Role {
        if self.role == Role::Admin.as_str() {
            Role::Admin
        } else {
            Role::Reviewer
        }
    }

    /// The caller a route needing `required` sees, or why the session may
    /// not call it (a reviewer's session on an admin route, say).
    pub fn caller_for(&self, required: Role) -> Result<Caller, String> {
        let role = self.role();
        if role == required || role == Role::Admin {
            Ok(Caller {
                id: self.caller.clone(),
                token: (!self.open).then_some(role),
            })
        } else {
            Err(format!(
                "a {} session may not call {} routes",
                role.as_str(),
                required.as_str()
            ))
        }
    }

    /// The cookie's value: the session, signed.
    pub fn seal(&self) -> String {
        let payload = hex::encode(serde_json::to_vec(self).expect("a session serialises"));
        let mac = hex::encode(sign(payload.as_bytes()));
        format!("{payload}.{mac}")
    }

    /// The session a cookie value holds, if this host signed it and it has
    /// not expired at `now`.
    pub fn open_sealed(value: &str, now: i64) -> Result<Session, Refused> {
        let (payload, mac) = value.split_once('.').ok_or(Refused::Invalid)?;
        let mac = hex::decode(mac).map_err(|_| Refused::Invalid)?;
        let mut check = keyed();
        check.update(payload.as_bytes());
        check.verify_slice(&mac).map_err(|_| Refused::Invalid)?;
        let json = hex::decode(payload).map_err(|_| Refused::Invalid)?;
        let session: Session = serde_json::from_slice(&json).map_err(|_| Refused::Invalid)?;
        if session.expires <= now {
            return Err(Refused::Expired);
        }
        Ok(session)
    }

    /// The `Set-Cookie` value that stores this session.
    pub fn cookie(&self, secure: bool) -> String {
        format!(
            "{COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
            self.seal(),
            LIFETIME_MS / 1000,
            if secure { "; Secure" } else { "" }
        )
    }
}

/// The `Set-Cookie` value that ends a session.
pub fn cleared_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn cookie_value(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Whether the request came over TLS through a proxy, so cookies must be
/// `Secure`.
pub fn behind_tls(headers: &http::HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system provides randomness");
        key
    })
}

fn keyed() -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key()).expect("HMAC takes a key of any length")
}

fn sign(bytes: &[u8]) -> Vec<u8> {
    let mut mac = keyed();
    mac.update(bytes);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviewer() -> Caller {
        Caller {
            id: "reviewer:sam".to_owned(),
            token: Some(Role::Reviewer),
        }
    }

    #[test]
    fn a_sealed_session_opens_until_it_expires() {
        let session = Session::new(&reviewer(), Role::Reviewer, 1_000);
        let sealed = session.seal();
        assert_eq!(Session::open_sealed(&sealed, 2_000), Ok(session.clone()));
        assert_eq!(
            Session::open_sealed(&sealed, 1_000 + LIFETIME_MS),
            Err(Refused::Expired)
        );
    }

    #[test]
    fn a_changed_cookie_is_refused() {
        let session = Session::new(&reviewer(), Role::Reviewer, 1_000);
        let sealed = session.seal();
        // Claim to be an admin, keeping the signature.
        let (payload, mac) = sealed.split_once('.').unwrap();
        let json = String::from_utf8(hex::decode(payload).unwrap()).unwrap();
        let forged = hex::encode(json.replace("\"reviewer\"", "\"admin\""));
        assert_eq!(
            Session::open_sealed(&format!("{forged}.{mac}"), 2_000),
            Err(Refused::Invalid)
        );
        assert_eq!(
            Session::open_sealed("nonsense", 2_000),
            Err(Refused::Invalid)
        );
    }

    #[test]
    fn roles_are_checked_as_for_tokens() {
        let session = Session::new(&reviewer(), Role::Reviewer, 0);
        assert!(session.caller_for(Role::Reviewer).is_ok());
        assert!(session.caller_for(Role::Admin).is_err());
        let admin = Session::new(
            &Caller {
                id: "admin:1234".to_owned(),
                token: Some(Role::Admin),
            },
            Role::Admin,
            0,
        );
        assert_eq!(
            admin.caller_for(Role::Reviewer).unwrap().token,
            Some(Role::Admin)
        );
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            "a=1; strata_session=xyz".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers), Some("xyz"));
        headers.clear();
        headers.append(http::header::COOKIE, "strata_session=".parse().unwrap());
        assert_eq!(cookie_value(&headers), None);
    }
}
