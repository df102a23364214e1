//! Completion callbacks: when a request that named a callback URL is final
//! (answered, rejected or failed; an escalated one when a reviewer resolves
//! it), the host POSTs its result there, signed, retrying with back-off.
//! This module is the policy and the signing; the worker that delivers is
//! [`crate::delivery`].
//!
//! Only receivers the manifest allows may be called (`[callbacks] allow`),
//! and a URL naming any other is refused when the request is submitted. An
//! entry without a port allows ports 80 and 443 only. The body is the
//! request's JSON as `GET /v1/requests/{id}` shows it. Two headers let a
//! receiver check it came from this host and was not replayed:
//!
//! ```text
//! Strata-Request-Id: <id>
//! Strata-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! To verify: take `t` and `v1` from the header, compute HMAC-SHA256 with
//! the shared secret over the bytes of `t`, a `.`, and the raw body, compare
//! with `v1` in constant time, and refuse a `t` too far from now. The secret
//! is read from the environment variable the receiver's entry names
//! (`{ host = "...", secret_env = "..." }`), or else the one
//! `[callbacks] secret_env` names (default `STRATA_CALLBACK_SECRET`).
//!
//! A callback must not become a way into this machine's network: an allowed
//! name may resolve to anything, and a receiver may answer with a redirect
//! to anywhere. So each delivery resolves the name itself, refuses every
//! loopback, link-local, private or otherwise non-public address unless an
//! allow entry names that address and port, and connects to exactly the
//! addresses it checked (no proxy, no second lookup). Redirects are never
//! followed: a 3xx is a failed attempt.
//!
//! Deliveries are durable: what is due is kept in the store, a worker sends
//! it (after a restart too), and every attempt is recorded and shown under
//! the request's `callback`. A 2xx answer delivers; anything else, or no
//! answer within ten seconds, is retried after `backoff_ms`, doubling (to an
//! hour at most, with jitter of up to `backoff_ms` so that receivers failing
//! together are not retried together), up to `max_attempts`. Up to `[callbacks] concurrency`
//! deliveries run at once, so a slow receiver holds up only its own. Delivery
//! is at least once: a receiver should treat a second delivery with the same
//! `Strata-Request-Id` as a repeat.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::manifest::{CallbackSettings, split_host_port};

/// How long one delivery may take, and separately how long resolving its
/// host may take.
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an allow entry points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A DNS name, lower case.
    Name(String),
    /// An address.
    Ip(IpAddr),
}

/// One allowed receiver.
struct Receiver {
    target: Target,
    /// `None`: ports 80 and 443.
    port: Option<u16>,
    secret: Option<Vec<u8>>,
    secret_env: String,
}

impl Receiver {
    fn admits(&self, target: &Target, port: u16) -> bool {
        self.target == *target
            && match self.port {
                Some(p) => p == port,
                None => port == 80 || port == 443,
            }
    }
}

/// Who may be called back, and how deliveries are signed and retried.
pub struct Callbacks {
    receivers: Vec<Receiver>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) concurrency: usize,
}

/// Where one delivery goes: the addresses checked against the policy, and
/// the key to sign it with.
pub(crate) struct Route {
    /// The URL's host when it is a name, to pin to `addresses`.
    name: Option<String>,
    addresses: Vec<SocketAddr>,
    secret: Vec<u8>,
}

fn target_of(host: &str) -> Target {
    match host.parse::<IpAddr>() {
        Ok(address) => Target::Ip(address.to_canonical()),
        Err(_) => Target::Name(host.to_ascii_lowercase()),
    }
}

impl Callbacks {
    /// The policy from the manifest, the secrets from the environment.
    pub fn new(settings: &CallbackSettings) -> Callbacks {
        Self::with_secrets(settings, None, |name| std::env::var(name).ok())
    }

    /// The policy with the shared secret given directly (tests, embedding);
    /// receivers with their own `secret_env` still read it from the
    /// environment.
    pub fn with_secret(settings: &CallbackSettings, secret: Option<String>) -> Callbacks {
        let shared = settings.secret_env.clone();
        Self::with_secrets(settings, secret.clone(), move |name| {
            if name == shared {
                secret.clone()
            } else {
                std::env::var(name).ok()
            }
        })
    }

    /// The policy, with every secret looked up by its variable's name
    /// through `lookup` (the shared one given as `shared` wins when set).
    fn with_secrets(
        settings: &CallbackSettings,
        shared: Option<String>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Callbacks {
        let read = |name: &str| {
            lookup(name)
                .filter(|s| !s.is_empty())
                .map(String::into_bytes)
        };
        let shared = shared
            .filter(|s| !s.is_empty())
            .map(String::into_bytes)
            .or_else(|| read(&settings.secret_env));
        let receivers = settings
            .allow
            .iter()
            .filter_map(|entry| {
                // The manifest refused malformed entries already.
                let (host, port) = split_host_port(&entry.host)?;
                let (secret, secret_env) = match &entry.secret_env {
                    Some(name) => (read(name), name.clone()),
                    None => (shared.clone(), settings.secret_env.clone()),
                };
                Some(Receiver {
                    target: target_of(&host),
                    port,
                    secret,
                    secret_env,
                })
            })
            .collect();
        Callbacks {
            receivers,
            max_attempts: settings.max_attempts,
            backoff: Duration::from_millis(settings.backoff_ms),
            concurrency: settings.concurrency.max(1) as usize,
        }
    }

    /// Check a callback URL a client sent; the reason when it is refused.
    /// Names are resolved only when delivering, since what they resolve to
    /// may change in between.
    pub fn check(&self, url: &str) -> Result<(), String> {
        self.receiver_of(url).map(|_| ())
    }

    /// The allow entry a URL falls under, and the URL's host and port.
    fn receiver_of(&self, url: &str) -> Result<(&Receiver, Target, u16), String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("\"{url}\" is not an http:// or https:// URL"));
        }
        let target = match parsed.host_str() {
            // The URL parser writes IPv6 addresses in brackets and every
            // IPv4 form as a dotted quad.
            Some(host) => target_of(host.trim_start_matches('[').trim_end_matches(']')),
            None => return Err(format!("\"{url}\" names no host")),
        };
        let port = parsed
            .port_or_known_default()
            .expect("http and https have default ports");
        let shown = match &target {
            Target::Name(name) => format!("{name}:{port}"),
            Target::Ip(address) => SocketAddr::new(*address, port).to_string(),
        };
        // An entry naming the port wins over one allowing 80 and 443.
        let receiver = self
            .receivers
            .iter()
            .filter(|r| r.admits(&target, port))
            .max_by_key(|r| r.port.is_some())
            .ok_or_else(|| {
                format!(
                    "callbacks to {shown} are not allowed; the manifest's [callbacks] allow \
                     lists the receivers that are (an entry without a port allows 80 and 443 \
                     only)"
                )
            })?;
        if let Target::Ip(address) = target
            && !is_public(address)
            && receiver.port.is_none()
        {
            return Err(format!(
                "callbacks to {shown} are not allowed: {address} is not a public address, and \
                 the manifest's [callbacks] allow must name it with its port (\"{shown}\")"
            ));
        }
        if receiver.secret.is_none() {
            return Err(format!(
                "this host cannot sign callbacks to {shown}: {} is not set",
                receiver.secret_env
            ));
        }
        Ok((receiver, target, port))
    }

    /// Whether a delivery may connect to `address`: a public one, or one an
    /// allow entry names with its port.
    fn may_connect(&self, address: SocketAddr) -> bool {
        let ip = address.ip().to_canonical();
        is_public(ip)
            || self
                .receivers
                .iter()
                .any(|r| r.target == Target::Ip(ip) && r.port == Some(address.port()))
    }

    /// Check `url` again, resolve its host, and keep the addresses the
    /// policy allows; the reason when none is left.
    pub(crate) async fn route(&self, url: &str) -> Result<Route, String> {
        let (receiver, target, port) = self.receiver_of(url)?;
        let secret = receiver
            .secret
            .clone()
            .expect("receiver_of refuses a receiver without a secret");
        let (name, resolved) = match target {
            Target::Name(name) => {
                let lookup = tokio::net::lookup_host((name.as_str(), port));
                let resolved = match tokio::time::timeout(DELIVERY_TIMEOUT, lookup).await {
                    Ok(Ok(addresses)) => addresses.collect::<Vec<_>>(),
                    Ok(Err(error)) => return Err(format!("cannot resolve {name}: {error}")),
                    Err(_) => return Err(format!("cannot resolve {name}: timed out")),
                };
                (Some(name), resolved)
            }
            Target::Ip(address) => (None, vec![SocketAddr::new(address, port)]),
        };
        let (addresses, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
            .into_iter()
            .partition(|address| self.may_connect(*address));
        if addresses.is_empty() {
            let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
            return Err(format!(
                "not sent: {} resolves to {}, which is not a public address, and no [callbacks] \
                 allow entry names it with its port",
                name.as_deref().unwrap_or("the host"),
                if refused.is_empty() {
                    "nothing".to_owned()
                } else {
                    refused.join(", ")
                }
            ));
        }
        Ok(Route {
            name,
            addresses,
            secret,
        })
    }
}

/// Whether `address` is reachable from the public internet. Anything else
/// (loopback, private, link-local, shared, reserved, multicast, ...) could
/// be this machine or its network, which a callback must not reach unless
/// the operator named it.
fn is_public(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., a, b, c, d] = v6.octets();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                // ::/96, the IPv4-compatible and other reserved forms.
                || segments[..6] == [0; 6]
                // fec0::/10, site-local (deprecated, still routed by some).
                || segments[0] & 0xffc0 == 0xfec0
                // 2001:db8::/32, documentation.
                || segments[..2] == [0x2001, 0xdb8])
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        // 0.0.0.0/8, "this network".
        || a == 0
        // 100.64.0.0/10, carrier-grade NAT.
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24, protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (b == 18 || b == 19))
        // 240.0.0.0/4, reserved.
        || a >= 240)
}

impl Route {
    /// The `Strata-Signature` header value for `body` at `timestamp`.
    pub(crate) fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        format!(
            "t={timestamp},v1={}",
            signature(&self.secret, timestamp, body)
        )
    }

    /// A client that connects to the checked addresses and nowhere else:
    /// no lookup of its own, no proxy, no redirects.
    pub(crate) fn client(&self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(name) = &self.name {
            builder = builder.resolve_to_addrs(name, &self.addresses);
        }
        builder
            .build()
            .map_err(|error| format!("cannot build the callback client: {error}"))
    }
}

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::CallbackReceiver;

    fn settings(allow: &[&str]) -> CallbackSettings {
        CallbackSettings {
            allow: allow.iter().map(|s| CallbackReceiver::new(*s)).collect(),
            ..CallbackSettings::default()
        }
    }

    fn policy(allow: &[&str]) -> Callbacks {
        Callbacks::with_secrets(&settings(allow), Some("s3cret".to_owned()), |_| None)
    }

    #[test]
    fn only_allowed_receivers_may_be_called_back() {
        let policy = policy(&["hooks.example.com", "127.0.0.1:9000", "[::1]:9000"]);
        for (url, allowed) in [
            ("https://hooks.example.com/strata", true),
            ("http://HOOKS.example.com/x", true),
            // An entry without a port allows 80 and 443 only.
            ("http://hooks.example.com:8080/x", false),
            ("https://hooks.example.com:22/x", false),
            ("http://127.0.0.1:9000/done", true),
            ("http://127.0.0.1:9001/done", false),
            ("http://[::1]:9000/done", true),
            ("http://[::ffff:127.0.0.1]:9000/done", true),
            ("https://evil.example.com/", false),
            ("ftp://hooks.example.com/", false),
            ("not a url", false),
        ] {
            assert_eq!(policy.check(url).is_ok(), allowed, "{url}");
        }
    }

    #[test]
    fn a_private_address_must_be_named_with_its_port() {
        let policy = policy(&["127.0.0.1", "10.0.0.8"]);
        let refused = policy.check("http://127.0.0.1/x").unwrap_err();
        assert!(
            refused.contains("127.0.0.1 is not a public address"),
            "{refused}"
        );
        assert!(policy.check("https://10.0.0.8/x").is_err());
    }

    #[test]
    fn only_public_or_named_addresses_may_be_connected_to() {
        let policy = policy(&["hooks.example.com", "127.0.0.1:9000", "[::1]:9000"]);
        for (address, allowed) in [
            ("127.0.0.1:9000", true),
            ("[::1]:9000", true),
            ("[::ffff:127.0.0.1]:9000", true),
            ("127.0.0.1:9001", false),
            ("127.0.0.2:9000", false),
            ("10.1.2.3:443", false),
            ("172.16.0.1:443", false),
            ("192.168.1.1:80", false),
            ("169.254.169.254:80", false),
            ("100.64.0.1:443", false),
            ("0.0.0.0:443", false),
            ("[::]:443", false),
            ("[fe80::1]:443", false),
            ("[fd00::1]:443", false),
            ("[::ffff:10.0.0.1]:443", false),
            ("[64:ff9b::7f00:1]:443", false),
            ("93.184.215.14:443", true),
            ("[2606:4700::6810:85e5]:443", true),
        ] {
            let address: SocketAddr = address.parse().unwrap();
            assert_eq!(policy.may_connect(address), allowed, "{address}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_its_address_is_allowed() {
        let refused = policy(&["localhost:9000"])
            .route("http://localhost:9000/x")
            .await
            .err()
            .expect("localhost resolves to loopback, which no entry names");
        assert!(refused.contains("not a public address"), "{refused}");

        let route = policy(&["localhost:9000", "127.0.0.1:9000"])
            .route("http://localhost:9000/x")
            .await
            .unwrap_or_else(|why| panic!("{why}"));
        let expected: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(route.addresses, vec![expected]);
        assert_eq!(route.name.as_deref(), Some("localhost"));
    }

    #[test]
    fn a_receiver_may_have_its_own_key() {
        let mut settings = settings(&["a.example.com"]);
        settings.allow.push(CallbackReceiver {
            host: "b.example.com".to_owned(),
            secret_env: Some("B_KEY".to_owned()),
        });
        settings.allow.push(CallbackReceiver {
            host: "c.example.com".to_owned(),
            secret_env: Some("C_KEY".to_owned()),
        });
        let policy = Callbacks::with_secrets(&settings, Some("shared".to_owned()), |name| {
            (name == "B_KEY").then(|| "b-key".to_owned())
        });
        let secret = |url| policy.receiver_of(url).map(|(r, _, _)| r.secret.clone());
        assert_eq!(
            secret("https://a.example.com/"),
            Ok(Some(b"shared".to_vec()))
        );
        assert_eq!(
            secret("https://b.example.com/"),
            Ok(Some(b"b-key".to_vec()))
        );
        let refused = policy.check("https://c.example.com/").unwrap_err();
        assert!(refused.contains("C_KEY is not set"), "{refused}");
    }

    #[test]
    fn without_a_secret_no_callback_is_accepted() {
        let policy = Callbacks::with_secrets(&settings(&["127.0.0.1:80"]), None, |_| None);
        let refused = policy.check("http://127.0.0.1/x").unwrap_err();
        assert!(
            refused.contains("STRATA_CALLBACK_SECRET is not set"),
            "{refused}"
        );
    }

    #[test]
    fn allow_entries_split_into_host_and_port() {
        for (entry, split) in [
            ("hooks.example.com", Some(("hooks.example.com", None))),
            (
                "Hooks.Example.com:8443",
                Some(("hooks.example.com", Some(8443))),
            ),
            ("127.0.0.1:9000", Some(("127.0.0.1", Some(9000)))),
            ("[::1]:9000", Some(("::1", Some(9000)))),
            ("[::1]", Some(("::1", None))),
            ("::1", Some(("::1", None))),
            ("hooks.example.com:https", None),
            ("[::1]9000", None),
            ("[nope]:1", None),
        ] {
            let expected = split.map(|(h, p): (&str, Option<u16>)| (h.to_owned(), p));
            assert_eq!(split_host_port(entry), expected, "{entry}");
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        let route = Route {
            name: None,
            addresses: Vec::new(),
            secret: b"s3cret".to_vec(),
        };
        // HMAC-SHA256("s3cret", "1700000000.{}"), computed with Python's hmac.
        assert_eq!(
            route.sign(1_700_000_000, b"{}"),
            "t=1700000000,v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
        assert_ne!(
            signature(b"s3cret", 1, b"{}"),
            signature(b"s3cret", 2, b"{}")
        );
        assert_eq!(signature(b"key", 0, b"").len(), 64);
    }
}
