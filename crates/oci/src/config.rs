//! Image configuration (the JSON a manifest's `config` points at), parsed
//! with `oci-spec`'s types, which cover both the OCI and Docker forms.

pub use oci_spec::image::ImageConfiguration;

#[derive(Debug, thiserror::Error)]
#[error("image config is invalid: {0}")]
pub struct ConfigError(#[from] serde_json::Error);

/// Parse and validate an image configuration.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, ConfigError> {
    Ok(serde_json::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_and_rejects_garbage() {
        let c = parse_config(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Env":["A=1"]}}"#,
        )
        .unwrap();
        assert_eq!(c.os().to_string(), "linux");
        assert!(parse_config(b"[1,2]").is_err());
    }
}
