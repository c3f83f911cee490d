//! Credentials and the two challenge schemes registries use.
//!
//! Credentials come from the caller ([`Credentials::insert`]) or from a
//! Docker `config.json` ([`DockerConfig`]), whose path the caller chooses:
//! this crate never reads the environment. A config is asked host by host
//! through the `docker_credential` crate, so `auths`, `credsStore` and
//! `credHelpers` (external `docker-credential-*` programs) all work; its
//! own file lookup is not used, since that reads the environment.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use docker_credential::{CredentialRetrievalError, DockerCredential};
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

    pub fn username(&self) -> &str {
        match self {
            Credential::Basic { username, .. } => username,
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

/// Credentials by registry host: given ones first, then each merged
/// config in order. Config answers (a helper's too) are remembered.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, Credential>,
    configs: Vec<DockerConfig>,
    asked: Arc<Mutex<HashMap<String, Option<Credential>>>>,
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

    pub fn get(&self, host: &str) -> Option<Credential> {
        let host = normalize_host(host);
        if let Some(c) = self.by_host.get(&host) {
            return Some(c.clone());
        }
        if self.configs.is_empty() {
            return None;
        }
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(answer) = asked.get(&host) {
            return answer.clone();
        }
        let answer = self.configs.iter().find_map(|c| c.lookup(&host));
        asked.insert(host, answer.clone());
        answer
    }

    /// Ask `config` for hosts that have no given credential (after the
    /// configs merged before it).
    pub fn merge(&mut self, config: &DockerConfig) {
        self.configs.push(config.clone());
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A Docker `config.json`, kept as text and asked per host.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    text: Arc<Vec<u8>>,
    origin: String,
}

impl DockerConfig {
    pub fn parse(bytes: &[u8], origin: &str) -> Result<DockerConfig> {
        // Checked here so a broken file is one clear error up front rather
        // than a silent "no credentials" at the first registry.
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            RegClientError::Invalid(format!("{origin}: not a Docker config.json: {e}"))
        })?;
        if !v.is_object() {
            return Err(RegClientError::Invalid(format!(
                "{origin}: not a Docker config.json: not a JSON object"
            )));
        }
        Ok(DockerConfig {
            text: Arc::new(bytes.to_vec()),
            origin: origin.to_owned(),
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

    /// The credential this config gives `host` (normalised), if any. A
    /// helper that fails or an entry that decodes to nothing usable is
    /// logged and skipped: another source may still have one.
    fn lookup(&self, host: &str) -> Option<Credential> {
        if self.text.is_empty() {
            return None;
        }
        // Docker Hub's key in config.json is its legacy URL.
        let keys: &[&str] = if host == oci::reference::DOCKER_HUB {
            &[
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
            ]
        } else {
            &[host]
        };
        for key in keys {
            match docker_credential::get_credential_from_reader(self.text.as_slice(), key) {
                Ok(DockerCredential::UsernamePassword(u, p)) => {
                    return Some(Credential::basic(u, p));
                }
                Ok(DockerCredential::IdentityToken(_)) => tracing::warn!(
                    registry = host,
                    config = self.origin,
                    "config.json gives an identity token, which is not supported; log in with a username and password"
                ),
                Err(CredentialRetrievalError::NoCredentialConfigured) => {}
                Err(e) => tracing::warn!(registry = host, config = self.origin, "credentials: {e}"),
            }
        }
        None
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
        assert_eq!(creds.get("docker.io"), Some(Credential::basic("u", "p")));
        assert_eq!(
            creds.get("http://127.0.0.1:5000"),
            Some(Credential::basic("a", "b"))
        );
        assert!(creds.get("bad").is_none());
        assert!(creds.get("elsewhere:1").is_none());
        // Given credentials win over the config's.
        creds.insert("127.0.0.1:5000", Credential::basic("x", "y"));
        assert_eq!(
            creds.get("127.0.0.1:5000"),
            Some(Credential::basic("x", "y"))
        );
        assert!(DockerConfig::parse(b"[", "x").is_err());
        assert!(DockerConfig::parse(b"[]", "x").is_err());
    }

    /// Run by `docker_config_cred_helpers_run` with a PATH holding the helper
    /// (a test may not change its own environment).
    #[test]
    #[ignore = "run by docker_config_cred_helpers_run"]
    fn cred_helper_lookup() {
        let cfg = DockerConfig::parse(
            br#"{"credHelpers":{"reg.internal:443":"slipwaytest"},"auths":{"other:1":{"auth":"dTpw"}}}"#,
            "test",
        )
        .unwrap();
        let mut creds = Credentials::default();
        creds.merge(&cfg);
        assert_eq!(
            creds.get("reg.internal:443"),
            Some(Credential::basic("hu", "hp"))
        );
        assert_eq!(creds.get("other:1"), Some(Credential::basic("u", "p")));
    }

    #[test]
    fn docker_config_cred_helpers_run() {
        // A credential helper as docker runs it: `docker-credential-NAME get`
        // with the server on stdin, JSON on stdout.
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-slipwaytest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread host\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"hu\",\"Secret\":\"hp\"}' \"$host\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "auth::tests::cred_helper_lookup"])
            .env("PATH", format!("{}:{path}", dir.path().display()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
