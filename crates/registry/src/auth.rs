//! Authentication and authorization for the registry.
//!
//! Two credentials are accepted on `/v2/`:
//! - HTTP Basic with any username and an API token as the password. API
//!   tokens are random 256-bit secrets; only their SHA-256 is stored (a slow
//!   password hash buys nothing for secrets of that entropy).
//! - `Bearer` tokens from the Docker token flow: `/token` trades an API token
//!   for a short-lived HS256 JWT carrying per-repository `access` claims.
//!
//! Unauthenticated requests get `401` with a `WWW-Authenticate: Bearer`
//! challenge naming the realm, service and the scope the request needs.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::error::{Code, RegistryError, Result};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("the last admin token cannot be deleted: nobody could manage the server")]
    LastAdmin,
    /// Names identify a run's submitter, so two tokens never share one.
    #[error("a token named {0:?} exists: token names are unique")]
    NameTaken(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AuthError {
    move |source| AuthError::Io {
        context: context.into(),
        source,
    }
}

/// What a principal may do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
    fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// One access a request needs, or a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    pub fn repo(name: &str, actions: &[Action]) -> Access {
        Access {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
        }
    }

    pub fn catalog() -> Access {
        Access {
            kind: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        }
    }

    /// The `type:name:actions` form used in challenges and token requests.
    pub fn scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }

    /// Parse `type:name:a,b`. Names may contain `:` only before a port-less
    /// registry form, so split the type off the front and actions off the back.
    pub fn parse_scope(s: &str) -> Option<Access> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Access {
            kind: kind.into(),
            name: name.into(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// Who is asking, and what they may do.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An admin API token: everything.
    Admin { subject: String },
    /// A scoped credential: only the listed accesses (`name` may end in `*`).
    Scoped {
        subject: String,
        grants: Vec<Access>,
    },
}

impl Principal {
    pub fn subject(&self) -> &str {
        match self {
            Principal::Admin { subject } | Principal::Scoped { subject, .. } => subject,
        }
    }

    /// Whether this principal may do `action` (`"pull"`, `"*"` …) on `kind:name`.
    pub fn allows(&self, kind: &str, name: &str, action: &str) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Scoped { grants, .. } => grants.iter().any(|g| {
                g.kind == kind
                    && (g.name == name
                        || g.name
                            .strip_suffix('*')
                            .is_some_and(|prefix| name.starts_with(prefix)))
                    && g.actions.iter().any(|a| a == action || a == "*")
            }),
        }
    }

    /// The part of `wanted` this principal holds.
    pub fn grant(&self, wanted: &Access) -> Access {
        Access {
            kind: wanted.kind.clone(),
            name: wanted.name.clone(),
            actions: wanted
                .actions
                .iter()
                .filter(|a| self.allows(&wanted.kind, &wanted.name, a))
                .cloned()
                .collect(),
        }
    }
}

/// An API token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub admin: bool,
    /// `type:name:actions` scopes.
    pub grants: Vec<String>,
    /// Unix seconds.
    pub created: u64,
}

/// An API token as stored (its secret only as a hash): what replicas share
/// through the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    pub admin: bool,
    #[serde(default)]
    pub grants: Vec<Access>,
    pub created: u64,
}

impl TokenRecord {
    fn principal(&self) -> Principal {
        if self.admin {
            Principal::Admin {
                subject: self.name.clone(),
            }
        } else {
            Principal::Scoped {
                subject: self.name.clone(),
                grants: self.grants.clone(),
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

/// `host[:port]` as a challenge may quote it: nothing that could end the
/// quoted string or add a parameter.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
}

/// The scheme a proxy in front of us says the client used.
fn forwarded_scheme(headers: &HeaderMap) -> &'static str {
    let said = |v: &str| match v.trim().trim_matches('"').to_ascii_lowercase().as_str() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    };
    let xfp = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| said(v.split(',').next().unwrap_or("")));
    let fwd = || {
        let v = headers.get(header::FORWARDED)?.to_str().ok()?;
        let first = v.split(',').next()?;
        first.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("proto")
                .then(|| said(v))
                .flatten()
        })
    };
    xfp.or_else(fwd).unwrap_or("http")
}

/// Settings of the Docker token flow.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The `service` name in challenges and tokens.
    pub service: String,
    /// Base URL clients use to reach us (for the realm); when `None` it is
    /// taken from each request's `Host` header.
    pub public_url: Option<String>,
    /// Lifetime of issued bearer tokens, in seconds.
    pub token_ttl: u64,
    /// The bearer-token signing key, when every replica is given the same
    /// one; `None`: `<data>/auth/jwt-key`, made on first start.
    pub signing_key: Option<SigningKey>,
}

/// Key bytes that never show in `Debug` output.
#[derive(Clone)]
pub struct SigningKey(pub Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            service: "slipway".into(),
            public_url: None,
            token_ttl: 300,
            signing_key: None,
        }
    }
}

/// API tokens (hashed, on disk) and the bearer-token signing key.
pub struct Auth {
    config: AuthConfig,
    tokens_path: PathBuf,
    tokens: RwLock<HashMap<String, TokenRecord>>,
    /// Bumped by every local create and delete: a replacement read from a
    /// shared database before one of them would undo it.
    generation: std::sync::atomic::AtomicU64,
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
    /// Decides whether a bearer token's subject is still valid (the control
    /// plane uses it to end per-run credentials with their run).
    subject_check: RwLock<Option<SubjectCheck>>,
}

/// See [`Auth::set_subject_check`].
pub type SubjectCheck = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

const ISSUER: &str = "slipway";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(b)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

fn hash_secret(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

impl Auth {
    /// Load (creating on first start) the token database and signing key under `<data>/auth`.
    pub fn open(data: &Path, config: AuthConfig) -> Result<Auth, AuthError> {
        let dir = data.join("auth");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let key_path = dir.join("jwt-key");
        // A new key only on first start: a key that is there but unreadable
        // or short is an error, since a fresh one would silently void every
        // token issued so far.
        let key = match (&config.signing_key, std::fs::read(&key_path)) {
            (Some(k), _) if k.0.len() >= 32 => k.0.clone(),
            (Some(_), _) => {
                return Err(AuthError::Io {
                    context: "the signing key given holds fewer than 32 bytes".into(),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            }
            (None, Ok(k)) if k.len() >= 32 => k,
            (None, Ok(_)) => {
                return Err(AuthError::Io {
                    context: format!(
                        "{} holds fewer than 32 bytes: restore it, or delete it to make a new one \
                         (every issued token then stops working)",
                        key_path.display()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            }
            (None, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = random_bytes::<32>()?.to_vec();
                write_private(&key_path, &k)?;
                k
            }
            (None, Err(e)) => return Err(io(format!("reading {}", key_path.display()))(e)),
        };
        let tokens_path = dir.join("tokens.json");
        let tokens: Vec<TokenRecord> = match std::fs::read(&tokens_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| AuthError::Corrupt {
                path: tokens_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(format!("reading {}", tokens_path.display()))(e)),
        };
        Ok(Auth {
            config,
            tokens_path,
            tokens: RwLock::new(tokens.into_iter().map(|t| (t.sha256.clone(), t)).collect()),
            encoding: jsonwebtoken::EncodingKey::from_secret(&key),
            decoding: jsonwebtoken::DecodingKey::from_secret(&key),
            subject_check: RwLock::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    fn save(&self, tokens: &HashMap<String, TokenRecord>) -> Result<(), AuthError> {
        let mut list: Vec<&TokenRecord> = tokens.values().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let json = serde_json::to_vec_pretty(&list).map_err(|source| AuthError::Corrupt {
            path: self.tokens_path.clone(),
            source,
        })?;
        write_private(&self.tokens_path, &json)
    }

    /// Create an API token and return its secret (shown once, stored hashed).
    pub fn create_token(
        &self,
        name: &str,
        admin: bool,
        grants: Vec<Access>,
    ) -> Result<String, AuthError> {
        self.create_token_info(name, admin, grants)
            .map(|(_, secret)| secret)
    }

    /// [`Auth::create_token`], with the token as listed.
    pub fn create_token_info(
        &self,
        name: &str,
        admin: bool,
        grants: Vec<Access>,
    ) -> Result<(TokenInfo, String), AuthError> {
        let secret = format!(
            "slw_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?)
        );
        let record = TokenRecord {
            id: hex::encode(random_bytes::<8>()?),
            name: name.into(),
            sha256: hash_secret(&secret),
            admin,
            grants,
            created: now(),
        };
        let info = TokenInfo {
            id: record.id.clone(),
            name: record.name.clone(),
            admin,
            grants: record.grants.iter().map(Access::scope).collect(),
            created: record.created,
        };
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        if tokens.values().any(|t| t.name == record.name) {
            return Err(AuthError::NameTaken(record.name));
        }
        let key = record.sha256.clone();
        tokens.insert(key.clone(), record);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.save(&tokens) {
            // Not on disk: not valid either, so a restart changes nothing.
            tokens.remove(&key);
            return Err(e);
        }
        Ok((info, secret))
    }

    /// Every API token, without its secret, oldest first.
    pub fn list_tokens(&self) -> Vec<TokenInfo> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<TokenInfo> = tokens
            .values()
            .map(|t| TokenInfo {
                id: t.id.clone(),
                name: t.name.clone(),
                admin: t.admin,
                grants: t.grants.iter().map(Access::scope).collect(),
                created: t.created,
            })
            .collect();
        list.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        list
    }

    /// Revoke the token `id`: `Ok(false)` if there is none. The last admin
    /// token cannot go (nobody could manage the server any more).
    pub fn delete_token(&self, id: &str) -> Result<bool, AuthError> {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        let Some(key) = tokens
            .iter()
            .find(|(_, t)| t.id == id)
            .map(|(k, _)| k.clone())
        else {
            return Ok(false);
        };
        let admins = tokens.values().filter(|t| t.admin).count();
        if tokens.get(&key).is_some_and(|t| t.admin) && admins == 1 {
            return Err(AuthError::LastAdmin);
        }
        let removed = tokens.remove(&key);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.save(&tokens) {
            // Not saved: keep it, so memory and disk agree.
            if let Some(r) = removed {
                tokens.insert(key, r);
            }
            return Err(e);
        }
        Ok(true)
    }

    /// The token whose unique id is `id`, as stored.
    pub fn record(&self, id: &str) -> Option<TokenRecord> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.values().find(|t| t.id == id).cloned()
    }

    /// Every token as stored, for sharing with other replicas, with the
    /// generation to pass to [`Auth::replace_records`].
    pub fn records(&self) -> (Vec<TokenRecord>, u64) {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<TokenRecord> = tokens.values().cloned().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        (list, generation)
    }

    /// Take `records` as the token set (what the shared database holds),
    /// and keep the file in step, unless a token was made or deleted here
    /// since `generation` was read (the records may predate it: the next
    /// read brings it). Returns whether anything changed.
    pub fn replace_records(
        &self,
        records: Vec<TokenRecord>,
        generation: u64,
    ) -> Result<bool, AuthError> {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return Ok(false);
        }
        let new: HashMap<String, TokenRecord> =
            records.into_iter().map(|t| (t.sha256.clone(), t)).collect();
        if *tokens == new {
            return Ok(false);
        }
        self.save(&new)?;
        *tokens = new;
        Ok(true)
    }

    /// The principal of the token whose unique id is `id` (what a run
    /// records of its submitter: a name can be taken again after a delete).
    pub fn principal_by_id(&self, id: &str) -> Option<Principal> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens
            .values()
            .find(|t| t.id == id)
            .map(TokenRecord::principal)
    }

    pub fn has_admin_token(&self) -> bool {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.values().any(|t| t.admin)
    }

    /// On first start: create an admin token and write it to `path` (mode 0600).
    /// Returns whether one was created.
    pub fn ensure_admin_token(&self, path: &Path) -> Result<bool, AuthError> {
        if self.has_admin_token() {
            return Ok(false);
        }
        let secret = self.create_token("admin", true, Vec::new())?;
        write_private(path, format!("{secret}\n").as_bytes())?;
        Ok(true)
    }

    /// The principal an API token secret stands for.
    pub fn verify_api_token(&self, secret: &str) -> Option<Principal> {
        self.verify_api_token_id(secret).map(|(_, p)| p)
    }

    /// [`Auth::verify_api_token`] with the token's unique id.
    pub fn verify_api_token_id(&self, secret: &str) -> Option<(String, Principal)> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&hash_secret(secret.trim()))
            .map(|t| (t.id.clone(), t.principal()))
    }

    /// Issue a bearer token granting `access` to `subject`.
    pub fn issue(&self, subject: &str, access: Vec<Access>) -> Result<(String, u64)> {
        let ttl = self.config.token_ttl;
        self.issue_for(subject, access, ttl).map(|t| (t, ttl))
    }

    /// Issue a bearer token that lives `ttl` seconds. Nothing is stored:
    /// such tokens cost no disk write, and [`Auth::set_subject_check`] can
    /// end them early.
    pub fn issue_for(&self, subject: &str, access: Vec<Access>, ttl: u64) -> Result<String> {
        let now = now();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: subject.into(),
            aud: self.config.service.clone(),
            exp: now + ttl,
            nbf: now.saturating_sub(10),
            iat: now,
            jti: random_bytes::<12>().map(hex::encode).unwrap_or_default(),
            access,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(|e| RegistryError::internal("signing token", e))
    }

    /// Bearer tokens are valid only while `check(subject)` says so (on
    /// top of their signature and expiry).
    pub fn set_subject_check(&self, check: SubjectCheck) {
        *self
            .subject_check
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(check);
    }

    /// A password as clients send it: an API token, or a bearer token we
    /// issued (per-run credentials travel as Basic passwords).
    pub fn verify_password(&self, secret: &str) -> Option<Principal> {
        self.verify_api_token(secret)
            .or_else(|| self.verify_bearer(secret.trim()))
    }

    fn verify_bearer(&self, token: &str) -> Option<Principal> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&[&self.config.service]);
        v.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?;
        let check = self
            .subject_check
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(check) = check
            && !check(&data.claims.sub)
        {
            return None;
        }
        Some(Principal::Scoped {
            subject: data.claims.sub,
            grants: data.claims.access,
        })
    }

    /// The principal behind a request's `Authorization` header.
    /// `Ok(None)`: no credentials; `Err`: credentials that are wrong.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(Principal, bool)>, ()> {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(None);
        };
        if let Some(b64) = strip_scheme(value, "basic") {
            let password = basic_password(b64).ok_or(())?;
            return self
                .verify_password(&password)
                .map(|p| Some((p, false)))
                .ok_or(());
        }
        if let Some(token) = strip_scheme(value, "bearer") {
            return self
                .verify_bearer(token.trim())
                .map(|p| Some((p, true)))
                .ok_or(());
        }
        Err(())
    }

    /// Where clients fetch tokens: `--public-url`, else the `Host` the
    /// client used with the scheme it used (`X-Forwarded-Proto`, or
    /// `Forwarded: proto=`, from a TLS-terminating proxy; plain HTTP
    /// otherwise, as this server speaks it).
    fn realm(&self, headers: &HeaderMap) -> String {
        let base = match &self.config.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .filter(|h| is_host(h))
                    .unwrap_or("localhost");
                format!("{}://{host}", forwarded_scheme(headers))
            }
        };
        format!("{base}/token")
    }

    /// `401` with the Bearer challenge for `needed`.
    pub fn challenge(&self, headers: &HeaderMap, needed: &[Access], why: &str) -> RegistryError {
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(headers),
            self.config.service
        );
        if !needed.is_empty() {
            let scopes: Vec<String> = needed.iter().map(Access::scope).collect();
            value.push_str(&format!(",scope=\"{}\"", scopes.join(" ")));
        }
        if why == "insufficient_scope" {
            value.push_str(",error=\"insufficient_scope\"");
        }
        RegistryError::new(
            Code::Unauthorized,
            format!("authentication required: {why}"),
        )
        .with_header(header::WWW_AUTHENTICATE, &value)
    }

    /// Authorize a `/v2/` request that needs every access in `needed`.
    pub fn authorize(&self, headers: &HeaderMap, needed: &[Access]) -> Result<Principal> {
        let (principal, bearer) = match self.authenticate(headers) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(self.challenge(headers, needed, "no credentials")),
            Err(()) => return Err(self.challenge(headers, needed, "invalid credentials")),
        };
        let ok = needed.iter().all(|n| {
            n.actions
                .iter()
                .all(|a| principal.allows(&n.kind, &n.name, a))
        });
        if ok {
            Ok(principal)
        } else if bearer {
            // Let token-flow clients fetch a token with the missing scope.
            Err(self.challenge(headers, needed, "insufficient_scope"))
        } else {
            Err(RegistryError::new(
                Code::Denied,
                format!(
                    "{} may not {}",
                    principal.subject(),
                    needed
                        .iter()
                        .map(Access::scope)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            )
            .with_status(StatusCode::FORBIDDEN))
        }
    }
}

fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest.trim())
}

fn basic_password(b64: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (_, password) = s.split_once(':')?;
    Some(password.to_owned())
}

/// Credentials of a `/token` request: Basic header, or a password grant.
pub fn token_request_password(headers: &HeaderMap, form_password: Option<&str>) -> Option<String> {
    if let Some(p) = form_password {
        return Some(p.to_owned());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    basic_password(strip_scheme(value, "basic")?)
}

/// Parse requested scopes, keeping only repository and catalog scopes with known actions.
pub fn parse_scopes<'a>(scopes: impl Iterator<Item = &'a str>) -> Vec<Access> {
    scopes
        .flat_map(|s| s.split(' '))
        .filter_map(Access::parse_scope)
        .filter_map(|mut a| match a.kind.as_str() {
            "repository" => {
                a.actions.retain(|x| x == "*" || Action::parse(x).is_some());
                if a.actions.iter().any(|x| x == "*") {
                    a.actions = vec!["pull".into(), "push".into(), "delete".into()];
                }
                Some(a)
            }
            "registry" if a.name == "catalog" => Some(a),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_realm_keeps_the_scheme_and_host_the_client_used() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::open(dir.path(), AuthConfig::default()).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "reg.example:5000".parse().unwrap());
        assert_eq!(auth.realm(&h), "http://reg.example:5000/token");
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(auth.realm(&h), "https://reg.example:5000/token");
        h.remove("x-forwarded-proto");
        h.insert(
            header::FORWARDED,
            "for=10.0.0.1;proto=https;by=x".parse().unwrap(),
        );
        assert_eq!(auth.realm(&h), "https://reg.example:5000/token");
        h.insert(header::HOST, "evil\",x=\"y".parse().unwrap());
        assert_eq!(auth.realm(&h), "https://localhost/token");
    }

    #[test]
    fn scopes_round_trip_and_grant() {
        let a = Access::parse_scope("repository:team/app:pull,push").unwrap();
        assert_eq!(a.name, "team/app");
        assert_eq!(a.scope(), "repository:team/app:pull,push");
        let p = Principal::Scoped {
            subject: "ci".into(),
            grants: vec![Access::repo("team/*", &[Action::Pull])],
        };
        assert!(p.allows("repository", "team/app", "pull"));
        assert!(!p.allows("repository", "team/app", "push"));
        assert!(!p.allows("repository", "other", "pull"));
        assert_eq!(p.grant(&a).actions, vec!["pull".to_string()]);
    }

    #[test]
    fn tokens_are_hashed_and_bearer_tokens_verify() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::open(dir.path(), AuthConfig::default()).unwrap();
        let secret = auth.create_token("t", true, vec![]).unwrap();
        let stored = std::fs::read_to_string(dir.path().join("auth/tokens.json")).unwrap();
        assert!(!stored.contains(&secret));
        assert!(auth.verify_api_token(&secret).is_some());
        assert!(auth.verify_api_token("slw_wrong").is_none());
        let (jwt, _) = auth
            .issue("t", vec![Access::repo("a", &[Action::Pull])])
            .unwrap();
        let p = auth.verify_bearer(&jwt).unwrap();
        assert!(p.allows("repository", "a", "pull"));
        assert!(!p.allows("repository", "a", "push"));
        let mut forged = jwt.clone();
        forged.push('x');
        assert!(auth.verify_bearer(&forged).is_none());
        // A restart keeps tokens and the key.
        let again = Auth::open(dir.path(), AuthConfig::default()).unwrap();
        assert!(again.verify_api_token(&secret).is_some());
        assert!(again.verify_bearer(&jwt).is_some());
    }
}
