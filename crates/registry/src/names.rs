//! Repository names, tags and references, validated by the Distribution
//! spec's grammar. Validation happens before a name can become a path, so
//! `..`, absolute paths and empty components can never reach the disk.

use oci::Digest;

use crate::error::{Code, RegistryError, Result};

/// A repository name, by the spec's grammar ([`oci::reference::is_valid_repository`]).
pub fn validate_name(name: &str) -> Result<()> {
    if oci::reference::is_valid_repository(name) {
        Ok(())
    } else {
        Err(RegistryError::new(
            Code::NameInvalid,
            format!("invalid repository name {name:?}"),
        ))
    }
}

pub use oci::reference::is_valid_tag as is_tag;

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
