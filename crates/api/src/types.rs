//! Request and response bodies. Times are milliseconds since the Unix epoch.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Size of an agent, as ACR's dedicated pools have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Tier {
    #[default]
    S1,
    S2,
    S3,
}

impl Tier {
    pub fn cpus(self) -> u32 {
        match self {
            Tier::S1 => 2,
            Tier::S2 => 4,
            Tier::S3 => 8,
        }
    }

    pub fn memory_bytes(self) -> u64 {
        const GIB: u64 = 1 << 30;
        match self {
            Tier::S1 => 3 * GIB,
            Tier::S2 => 8 * GIB,
            Tier::S3 => 16 * GIB,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::S1 => "S1",
            Tier::S2 => "S2",
            Tier::S3 => "S3",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Tier, String> {
        match s.to_ascii_uppercase().as_str() {
            "S1" => Ok(Tier::S1),
            "S2" => Ok(Tier::S2),
            "S3" => Ok(Tier::S3),
            _ => Err(format!("unknown tier {s:?}: use S1, S2 or S3")),
        }
    }
}

/// `POST /pools`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    #[serde(default)]
    pub tier: Tier,
    #[serde(default = "one")]
    pub count: u32,
    /// Free-form label of the network the agents sit in (documentation and
    /// placement only: the server never dials agents).
    #[serde(default)]
    pub network: Option<String>,
    /// The server itself keeps `count` agent processes of this pool alive.
    #[serde(default)]
    pub local: bool,
    /// Builds may use `RUN --security=insecure` and tasks `privileged:
    /// true` steps (no seccomp filter, no device cgroup): for pools whose
    /// machines are dedicated to trusted builds only.
    #[serde(default)]
    pub allow_insecure: bool,
}

fn one() -> u32 {
    1
}

/// `PATCH /pools/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolUpdate {
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub tier: Option<Tier>,
    #[serde(default)]
    pub allow_insecure: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub tier: Tier,
    pub count: u32,
    pub network: Option<String>,
    pub local: bool,
    /// See [`PoolSpec::allow_insecure`].
    #[serde(default)]
    pub allow_insecure: bool,
    pub created_at: i64,
    /// Runs waiting for an agent.
    pub queued: u64,
    /// Runs an agent holds.
    pub running: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    pub pool: String,
    /// `idle`, `busy` or `offline` (no contact for three lease periods).
    pub status: String,
    pub last_heartbeat: i64,
    pub current_run: Option<String>,
}

/// `GET /pools/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub pool: Pool,
    pub agents: Vec<AgentInfo>,
}

/// `POST /pools/{name}/tokens`: shown once, stored hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentToken {
    pub pool: String,
    pub token: String,
}

/// Where a build's context comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ContextSource {
    /// A tar (zstd, gzip or plain) uploaded with `PUT /contexts/{digest}`.
    Upload { digest: String },
    /// A git URL (`https://host/repo.git#ref:subdir`) or a tarball URL,
    /// fetched by the agent inside its network.
    Url { url: String },
}

/// What to build: `slipway build`'s flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    pub context: ContextSource,
    /// Dockerfile path inside the context.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    /// The Dockerfile's text, when the client sent it along (it may live
    /// outside the context, as `-f` allows).
    #[serde(default)]
    pub dockerfile_inline: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub no_cache: bool,
    #[serde(default)]
    pub no_push: bool,
    /// A task run (`slipway run`, `slipway task run`): the task file and
    /// what renders it. `None`: a Dockerfile build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSpec>,
    /// The host under which `tags` name the server's own registry (the
    /// `Host` the submitter reached the server at). Set by the server at
    /// submit; the agent pushes such tags to the server it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

impl BuildSpec {
    /// A task run's spec: the context and the task file; nothing is pushed
    /// by the run itself (its `push` steps do that).
    pub fn for_task(context: ContextSource, task: TaskSpec) -> BuildSpec {
        BuildSpec {
            context,
            dockerfile: default_dockerfile(),
            dockerfile_inline: None,
            tags: Vec::new(),
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            target: None,
            platform: None,
            no_cache: false,
            no_push: true,
            task: Some(task),
            registry: None,
        }
    }
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

/// `GET /repositories`: one repository of the server's registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepositoryInfo {
    pub name: String,
    pub tags: usize,
}

/// Secret values shorter than this are masked in logs like any other, but
/// a short text also turns up where it is no secret (and is easy to guess):
/// submitters warn about them.
pub const SHORT_SECRET: usize = 8;

/// The warnings to print for `secrets` at submit, one per short value.
pub fn short_secret_warnings(secrets: &BTreeMap<String, String>) -> Vec<String> {
    secrets
        .iter()
        .filter(|(_, v)| v.trim().chars().count() < SHORT_SECRET)
        .map(|(id, v)| {
            format!(
                "secret {id} is only {} characters: it is masked in the log, but so is every other occurrence of that text, and it is easy to guess",
                v.trim().chars().count()
            )
        })
        .collect()
}

/// `POST /runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    pub pool: String,
    pub build: BuildSpec,
    /// Build secrets by id; handed only to the agent holding the lease.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Run time limit in seconds (default: the server's, one hour).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
    TimedOut,
    Error,
}

impl RunState {
    pub fn is_final(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
            RunState::TimedOut => "timed-out",
            RunState::Error => "error",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<RunState, String> {
        Ok(match s {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "canceled" => RunState::Canceled,
            "timed-out" => RunState::TimedOut,
            "error" => RunState::Error,
            _ => return Err(format!("unknown run state {s:?}")),
        })
    }
}

/// One lease of a run by an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub agent: String,
    /// Fencing token: strictly increasing over all leases the server grants.
    pub fence: i64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// How the lease ended: a final state, or `lost` (expired, re-queued).
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub pool: String,
    pub state: RunState,
    pub build: BuildSpec,
    /// Ids of the secrets the run carries (never their values).
    pub secret_ids: Vec<String>,
    pub timeout_secs: u64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempts: Vec<Attempt>,
    pub exit_code: Option<i32>,
    pub image_digest: Option<String>,
    pub message: Option<String>,
    /// The commit (and branch) a git context resolved to, as the agent
    /// fetched it: recorded even though the context's `.git` is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    /// A task run's steps, or a Dockerfile build's instructions, as they
    /// went (with their times).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
    /// The name of the token that submitted it, as it was then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
}

/// A task file and what renders it, as `az acr run` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task file's text (acb.yaml).
    pub file: String,
    /// Its name, for errors (`acb.yaml`, `-` for stdin).
    #[serde(default)]
    pub origin: String,
    /// `--values` files' texts, in order (later wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// `--set K=V`, in order (after the values files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// The stored task's name (`slipway task run NAME`), `.Run.TaskName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stored secrets (`slipway secret set`) the file names under
    /// `secrets:`: the server adds their values to the lease.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored_secrets: Vec<String>,
    /// Image aliases (`bash`, `curl`, `az`, …) → images, as the server is
    /// configured (set by the server at submit).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_aliases: BTreeMap<String, String>,
}

/// `POST /tasks/{name}/runs`: what `slipway task run` may add.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskRunRequest {
    /// Overrides the task's context.
    #[serde(default)]
    pub context: Option<ContextSource>,
    /// `--set K=V` after the task's own.
    #[serde(default)]
    pub set: Vec<String>,
    /// `--set-secret K=V`: sealed, handed with the lease only.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// One step of a task run as it went, in the run record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    /// `build`, `push` or `cmd` (a task step); `instruction` (a Dockerfile
    /// step, its id `N/TOTAL`, its text the message).
    pub kind: String,
    /// `succeeded`, `failed`, `cached` (an instruction), `ignored` (failed with ignoreErrors),
    /// `skipped` (a step it waited for failed), `stopped` (detached, ended
    /// with the task) or `canceled`; `running`/`detached` while it runs.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `image@sha256:…` of what a build made or a push pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A stored task (`slipway task create`), run with `slipway task run NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskDef {
    pub name: String,
    pub pool: String,
    pub task: TaskSpec,
    /// Default context (a git or tarball URL), when `task run` gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// `Enabled` or `Disabled` (a disabled task does not run).
    #[serde(default = "enabled")]
    pub status: String,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

fn enabled() -> String {
    "Enabled".into()
}

/// `PUT /secrets/{name}`.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretValue {
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

/// A stored secret as listed: never its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a git context resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// What a stored credential opens: a registry other than the server's own
/// (`docker login` style), a git server over HTTP(S), or a git server over
/// SSH (`git-ssh`: the password is a private key, with the host's
/// `known_hosts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    Registry,
    Git,
    GitSsh,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Registry => "registry",
            CredentialKind::Git => "git",
            CredentialKind::GitSsh => "git-ssh",
        }
    }
}

impl std::fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CredentialKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "registry" => Ok(CredentialKind::Registry),
            "git" => Ok(CredentialKind::Git),
            "git-ssh" => Ok(CredentialKind::GitSsh),
            _ => Err(format!(
                "credential kind {s:?}: expected registry, git or git-ssh"
            )),
        }
    }
}

/// `POST /pools/{name}/credentials` and `PUT …/{kind}/{host}`; also what a
/// lease hands the agent. `host` is `host[:port]`, no scheme. For
/// `git-ssh`, `password` is the private key (PEM or OpenSSH text, no
/// passphrase) and `known_hosts` the host keys the agent may trust (an
/// agent never trusts an unknown host key).
#[derive(Clone, Serialize, Deserialize)]
pub struct CredentialSpec {
    pub kind: CredentialKind,
    pub host: String,
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
}

impl std::fmt::Debug for CredentialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CredentialSpec({} {} {}, ***)",
            self.kind, self.host, self.username
        )
    }
}

/// A stored credential as listed: never its password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialInfo {
    pub pool: String,
    pub kind: CredentialKind,
    pub host: String,
    pub username: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One piece of a run's log. `pos` orders the whole log, across attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub pos: u64,
    pub attempt: u32,
    pub data: String,
}

/// `GET /runs/{id}/logs?after=POS&wait=SECS`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPage {
    pub chunks: Vec<LogChunk>,
    /// Pass as `after` to continue.
    pub next: u64,
    pub state: RunState,
    /// The run is final and every chunk has been returned.
    pub done: bool,
}

/// `POST /agent/lease`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub agent: String,
    /// Long-poll up to this long for a run.
    #[serde(default)]
    pub wait_secs: u64,
}

/// Where the agent pushes, and how it authenticates there, for this run only.
#[derive(Clone, Serialize, Deserialize)]
pub struct RegistryCredential {
    pub host: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RegistryCredential({} {}, ***)",
            self.host, self.username
        )
    }
}

/// Limits of the pool's tier, enforced on the run's RUN steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunLimits {
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// `POST /tokens`: an API token for people and CI. `grants` are scopes:
/// `pool:NAME:build` (submit to, see and cancel runs of pool NAME; `*` at
/// the end of NAME matches a prefix), `repository:NAME:pull,push,delete`
/// (the registry), `registry:catalog:*`. An admin token may do anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    pub name: String,
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

/// An API token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub grants: Vec<String>,
    /// Unix seconds.
    pub created: u64,
}

/// A created token, with its secret: shown once, stored hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: ApiToken,
    pub token: String,
}

/// What an agent token stands for (`GET /agent/self`), for `slipway agent
/// check`: asking changes nothing on the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSelf {
    pub pool: String,
    pub tier: Tier,
    /// The registry host builds push to (`host:port`).
    pub registry: String,
}

/// A run leased to an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub run: Run,
    pub attempt: u32,
    pub fence: i64,
    /// Presented with every heartbeat, log upload and result.
    pub token: String,
    pub ttl_ms: u64,
    pub secrets: BTreeMap<String, String>,
    pub registry: Option<RegistryCredential>,
    pub limits: RunLimits,
    /// The pool's stored credentials for other registries and git servers,
    /// in clear for this lease only.
    #[serde(default)]
    pub credentials: Vec<CredentialSpec>,
    /// The pool allows `RUN --security=insecure` and privileged task steps.
    #[serde(default)]
    pub allow_insecure: bool,
    /// The pool's layer cache: a repository of the server's registry
    /// (`registry.host`) that every build of the pool imports from and
    /// exports to (`--cache-from`/`--cache-to`), so an agent on any
    /// machine reuses the steps any other built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// `POST /agent/runs/{id}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Stop the run now (canceled, or out of time).
    pub cancel: bool,
    pub ttl_ms: u64,
}

/// A chunk as the agent numbers it: `seq` counts from 1 within an attempt,
/// so a retried upload is recognised and stored once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentChunk {
    pub seq: u64,
    pub data: String,
}

/// `POST /agent/runs/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogUpload {
    pub token: String,
    pub chunks: Vec<AgentChunk>,
}

/// How an attempt ended, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    /// The build failed (bad Dockerfile, a RUN that exited non-zero …).
    Failed,
    /// Stopped on a cancel or timeout from the server.
    Stopped,
    /// The agent could not do its part (context fetch, spawn …).
    Error,
}

/// `POST /agent/runs/{id}/result`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub token: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub image_digest: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub revision: Option<Revision>,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
}

/// Every error response's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// `GET /contexts/{digest}` existence answer and `PUT` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextInfo {
    pub digest: String,
    pub size: u64,
}

#[cfg(test)]
mod tests {

    #[test]
    fn short_secrets_are_warned_about_by_id_never_by_value() {
        let mut m = BTreeMap::new();
        m.insert("pin".to_owned(), "1234".to_owned());
        m.insert("token".to_owned(), "a-long-enough-secret".to_owned());
        let w = short_secret_warnings(&m);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("secret pin is only 4 characters"), "{w:?}");
        assert!(!w[0].contains("1234"));
    }

    use super::*;

    #[test]
    fn git_ssh_credentials_on_the_wire() {
        assert_eq!(
            "git-ssh".parse::<CredentialKind>(),
            Ok(CredentialKind::GitSsh)
        );
        assert_eq!(CredentialKind::GitSsh.to_string(), "git-ssh");
        let spec = CredentialSpec {
            kind: CredentialKind::GitSsh,
            host: "git.internal:2222".into(),
            username: "git".into(),
            password: "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRET\n".into(),
            known_hosts: Some("[git.internal]:2222 ssh-ed25519 AAAA\n".into()),
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["kind"], "git-ssh");
        assert_eq!(
            json["known_hosts"],
            "[git.internal]:2222 ssh-ed25519 AAAA\n"
        );
        assert!(!format!("{spec:?}").contains("SECRET"));
        // Without known_hosts the field is absent, and an old body parses.
        let basic = CredentialSpec {
            kind: CredentialKind::Git,
            known_hosts: None,
            ..spec
        };
        let json = serde_json::to_value(&basic).unwrap();
        assert!(json.get("known_hosts").is_none(), "{json}");
        let back: CredentialSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back.known_hosts, None);
    }
}
