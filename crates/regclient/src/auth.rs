//! Credentials and the two challenge schemes registries use.
//!
//! Credentials come from the caller ([`Credentials::insert`]) or from a
//! Docker `config.json` ([`DockerConfig`]), whose path the caller chooses:
//! this crate never reads the environment. We parse `config.json` ourselves
//! (only `auths` is needed) because `docker_credential` locates the file
//! from the environment, which a library should not do.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use crate::error::{RegClientError, Result};

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

impl Credential {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credential::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    pub(crate) fn header(&self) -> String {
        match self {
            Credential::Basic { username, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            ),
        }
    }
}

/// Credentials by registry host.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, Credential>,
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://h:5000/x` → `h:5000`.
pub fn normalize_host(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            oci::reference::DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

impl Credentials {
    pub fn insert(&mut self, host: &str, credential: Credential) {
        self.by_host.insert(normalize_host(host), credential);
    }

    pub fn get(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(&normalize_host(host))
    }

    /// Add every entry of `config` that this set does not already have.
    pub fn merge(&mut self, config: &DockerConfig) {
        for (host, cred) in config.credentials() {
            self.by_host.entry(host).or_insert(cred);
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The `auths` of a Docker `config.json`.
#[derive(Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

impl DockerConfig {
    pub fn parse(bytes: &[u8], origin: &str) -> Result<DockerConfig> {
        serde_json::from_slice(bytes).map_err(|e| {
            RegClientError::Invalid(format!("{origin}: not a Docker config.json: {e}"))
        })
    }

    /// Load `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig> {
        match std::fs::read(path) {
            Ok(b) => DockerConfig::parse(&b, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
            Err(source) => Err(RegClientError::Config {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Usable credentials, by normalised host. Entries that decode to
    /// nothing usable are skipped (with a log line), not fatal.
    pub fn credentials(&self) -> Vec<(String, Credential)> {
        let mut out = Vec::new();
        for (key, e) in &self.auths {
            let decoded = e.auth.as_deref().and_then(|a| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()?;
                let s = String::from_utf8(raw).ok()?;
                let (u, p) = s.split_once(':')?;
                Some((u.to_owned(), p.to_owned()))
            });
            let pair = decoded.or_else(|| Some((e.username.clone()?, e.password.clone()?)));
            match pair {
                Some((u, p)) => out.push((normalize_host(key), Credential::basic(u, p))),
                None => tracing::warn!(registry = %key, "config.json entry has no usable auth"),
            }
        }
        out
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

impl TokenResponse {
    pub(crate) fn into_token(self) -> Option<String> {
        self.token.or(self.access_token).filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn docker_config() {
        let cfg = DockerConfig::parse(
            br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"127.0.0.1:5000":{"username":"a","password":"b"},"bad":{}}}"#,
            "test",
        )
        .unwrap();
        let mut creds = Credentials::default();
        creds.merge(&cfg);
        assert_eq!(creds.get("docker.io"), Some(&Credential::basic("u", "p")));
        assert_eq!(
            creds.get("http://127.0.0.1:5000"),
            Some(&Credential::basic("a", "b"))
        );
        assert!(creds.get("bad").is_none());
        assert!(DockerConfig::parse(b"[", "x").is_err());
    }
}
