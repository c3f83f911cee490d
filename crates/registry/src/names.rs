//! Repository names, tags and references, validated by the Distribution
//! spec's grammar. Validation happens before a name can become a path, so
//! `..`, absolute paths and empty components can never reach the disk.

use oci::Digest;

use crate::error::{Code, RegistryError, Result};

/// A repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = name.len() <= 255 && !name.is_empty() && name.split('/').all(valid_component);
    if ok {
        Ok(())
    } else {
        Err(RegistryError::new(
            Code::NameInvalid,
            format!("invalid repository name {name:?}"),
        ))
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    // Separators: one '.', one or two '_', or any run of '-'; each between alnums.
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let valid = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !valid {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// The `<reference>` of a manifest URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

pub fn parse_reference(s: &str) -> Result<Reference> {
    if s.contains(':') {
        return parse_digest(s).map(Reference::Digest);
    }
    if is_tag(s) {
        Ok(Reference::Tag(s.to_owned()))
    } else {
        Err(RegistryError::new(
            Code::ManifestInvalid,
            format!("invalid tag {s:?}"),
        ))
    }
}

pub fn parse_digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|e: oci::DigestError| RegistryError::new(Code::DigestInvalid, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "library/busybox", "a.b/c_d/e__f/g---h", "0/1", "x-y.z"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "../x", "a/../b", "/a", "a/", "A", "a//b", "a..b", "a___b", "-a", "a-", "a/.b",
            "a b", "a%2fb",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!(is_tag("latest") && is_tag("_x") && is_tag("v1.2-rc_3"));
        assert!(!is_tag("") && !is_tag(".x") && !is_tag("a/b") && !is_tag(&"a".repeat(129)));
    }
}
