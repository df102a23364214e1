//! Validated values of a manifest: a [`Name`] and a [`Digest`] can only be
//! made by parsing, so holding one means it was checked.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The name of a pipeline, stage or layer: 1 to 64 lower-case letters,
/// digits, `-` or `_`, starting with a letter or digit (so it is safe in a
/// URL path, a metric label and a file name).
///
/// Cheap to clone: every request's log tags share the one text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(Arc<str>);

impl Name {
    /// The longest name.
    pub const MAX_LEN: usize = 64;

    /// `text` as a name, or why it is not one.
    pub fn parse(text: &str) -> Result<Name, String> {
        let ok = !text.is_empty()
            && text.len() <= Self::MAX_LEN
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Name(text.into()))
        } else {
            Err(format!(
                "\"{text}\" is not a valid name: use 1 to 64 lower-case letters, digits, '-' or \
                 '_', starting with a letter or digit"
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, shared rather than copied.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0.to_string()
    }
}

/// The layer a stage belongs to: one of the four standard layers or an
/// operator-chosen name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Layer(pub(super) Name);

impl Layer {
    /// The layers of the standard pipeline, cheapest first.
    pub const STANDARD: [&'static str; 4] = ["rules", "cache", "generation", "human"];

    /// The layer's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The layer's name as a [`Name`], shared rather than copied.
    pub fn name(&self) -> &Name {
        &self.0
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a component's bytes, written `sha256:<64 hex digits>` in
/// responses, logs, metrics and the audit log. Cheap to clone: every
/// request's log tags share the one text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    /// `sha256:` and 64 lower-case hex digits.
    text: Arc<str>,
}

const PREFIX: &str = "sha256:";

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hex(&hex::encode(Sha256::digest(bytes)))
    }

    fn from_hex(hex: &str) -> Digest {
        Digest {
            text: format!("{PREFIX}{hex}").into(),
        }
    }

    /// A digest as a manifest pins it: 64 hex digits, in either case, with
    /// or without a `sha256:` prefix.
    pub fn parse(pin: &str) -> Result<Digest, String> {
        let hex = pin.trim_start_matches(PREFIX).to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "\"{pin}\" is not a SHA-256 digest (64 hexadecimal digits)"
            ));
        }
        Ok(Digest::from_hex(&hex))
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.text[PREFIX.len()..]
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `sha256:<hex>`, shared rather than copied.
    pub fn shared(&self) -> Arc<str> {
        self.text.clone()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::{Digest, Name};

    #[test]
    fn names_are_checked_once_and_read_as_text() {
        for good in ["faq", "tier-2", "a_b", "0"] {
            let name = Name::parse(good).unwrap();
            assert_eq!(name, good);
            assert_eq!(name.to_string(), good);
        }
        let long = "a".repeat(65);
        for bad in ["", "FAQ", "-x", "_x", "a b", "a/b", "é", long.as_str()] {
            let why = Name::parse(bad).unwrap_err();
            assert!(why.contains("is not a valid name"), "{bad}: {why}");
        }
    }

    #[test]
    fn a_pin_reads_with_or_without_its_prefix_in_either_case() {
        let of = Digest::of(b"component");
        let upper = of.hex().to_ascii_uppercase();
        assert_eq!(Digest::parse(&upper).unwrap(), of);
        assert_eq!(Digest::parse(&of.to_string()).unwrap(), of);
        assert!(of.to_string().starts_with("sha256:"));
        assert_eq!(serde_json::to_value(&of).unwrap(), of.to_string());
        for bad in ["", "sha256:", "abc", &"g".repeat(64)] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }
}
