//! File keys: where a file lives and whether it is public.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest accepted key, in bytes, counting the `public/` or `private/` prefix.
pub const MAX_KEY_LEN: usize = 1024;

/// Who may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Readable by anyone at a stable public URL.
    Public,
    /// Readable only through a presigned URL or the download stream.
    Private,
}

impl Access {
    /// The key prefix of this access level: `public` or `private`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Private => "private",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated file key: an access level and a relative path such as `products/42/front.png`.
///
/// Its string form (the file id handed to callers) is `<access>/<path>`, e.g.
/// `private/invoices/2026/1.pdf`, so the access level travels with the id and can never be
/// confused. A path is one or more `/`-separated segments; a segment is non-empty, does not start
/// with `.` (no `.`, `..`, nor hidden files such as `.htaccess`, which a web server serving the
/// public folder would act on), and holds only letters, digits, spaces and `-_.+=@,()!'`. Everything else (`\`, `%`,
/// `?`, `#`, control characters, a leading `/`) is refused with [`Error::InvalidKey`], so a key can
/// never escape the store's root or need escaping rules that differ between providers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileKey {
    access: Access,
    path: String,
}

impl FileKey {
    /// Validates `path` and builds the key of a file with the given access.
    pub fn new(access: Access, path: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidKey {
            key: format!("{access}/{path}"),
            reason,
        };
        if path.is_empty() {
            return Err(invalid("the path is empty".into()));
        }
        if access.as_str().len() + 1 + path.len() > MAX_KEY_LEN {
            return Err(invalid(format!("longer than {MAX_KEY_LEN} bytes")));
        }
        for segment in path.split('/') {
            if segment.is_empty() {
                return Err(invalid(
                    "empty segment (leading, trailing or double `/`)".into(),
                ));
            }
            if segment.starts_with('.') {
                return Err(invalid(format!(
                    "segment `{segment}` starts with `.` (hidden files and `.`/`..` are not allowed)"
                )));
            }
            if let Some(c) = segment.chars().find(|c| !allowed_char(*c)) {
                return Err(invalid(format!("character {c:?} is not allowed")));
            }
        }
        Ok(Self {
            access,
            path: path.to_owned(),
        })
    }

    /// Key of a public file.
    pub fn public(path: &str) -> Result<Self, Error> {
        Self::new(Access::Public, path)
    }

    /// Key of a private file.
    pub fn private(path: &str) -> Result<Self, Error> {
        Self::new(Access::Private, path)
    }

    /// Parses the string form `<access>/<path>`.
    pub fn parse(key: &str) -> Result<Self, Error> {
        let (access, path) = key.split_once('/').ok_or_else(|| Error::InvalidKey {
            key: key.to_owned(),
            reason: "expected `public/<path>` or `private/<path>`".into(),
        })?;
        let access = match access {
            "public" => Access::Public,
            "private" => Access::Private,
            other => {
                return Err(Error::InvalidKey {
                    key: key.to_owned(),
                    reason: format!("unknown access `{other}` (expected `public` or `private`)"),
                });
            }
        };
        Self::new(access, path)
    }

    /// Who may read the file.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The path below the access level, e.g. `products/42/front.png`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path with every segment percent-encoded, ready to append to a URL.
    pub fn url_path(&self) -> String {
        encode_path(&self.path)
    }
}

fn allowed_char(c: char) -> bool {
    c.is_alphanumeric()
        || matches!(
            c,
            ' ' | '-' | '_' | '.' | '+' | '=' | '@' | ',' | '(' | ')' | '!' | '\''
        )
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.access, self.path)
    }
}

impl FromStr for FileKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for FileKey {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<FileKey> for String {
    fn from(key: FileKey) -> Self {
        key.to_string()
    }
}

/// Percent-encodes every segment of a `/`-separated path, keeping the `/` separators.
///
/// Only RFC 3986 unreserved characters stay as they are, so the result is the same string S3,
/// browsers and [`decode_path`] agree on.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded path; `None` if an escape is malformed or the bytes are not UTF-8.
pub fn decode_path(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_odd_characters_are_refused() {
        for bad in [
            "../x", "a/../x", "./x", "/abs", "a//b", "a/", "", "a\\b", "a%2e", "a?b", "a#b",
            "a\0b", "a\nb",
        ] {
            assert!(
                matches!(FileKey::public(bad), Err(Error::InvalidKey { .. })),
                "{bad:?} must be refused"
            );
        }
        assert!(FileKey::public(&"a".repeat(MAX_KEY_LEN)).is_err());
    }

    #[test]
    fn string_form_round_trips_and_carries_access() {
        let key = FileKey::private("invoices/2026/Rechnung (1).pdf").unwrap();
        assert_eq!(key.to_string(), "private/invoices/2026/Rechnung (1).pdf");
        assert_eq!(FileKey::parse(&key.to_string()).unwrap(), key);
        assert!(matches!(
            FileKey::parse("secret/x"),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            FileKey::parse("public"),
            Err(Error::InvalidKey { .. })
        ));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<FileKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<FileKey>("\"public/../x\"").is_err());
    }

    #[test]
    fn url_encoding_round_trips() {
        let path = "a b/c+d/é(1)'.txt";
        let encoded = encode_path(path);
        assert_eq!(encoded, "a%20b/c%2Bd/%C3%A9%281%29%27.txt");
        assert_eq!(decode_path(&encoded).unwrap(), path);
        assert_eq!(decode_path("%zz"), None);
        assert_eq!(decode_path("%4"), None);
    }
}
