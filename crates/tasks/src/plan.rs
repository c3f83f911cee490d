//! A parsed `TaskFile` → a validated `Plan`: acr-builder's defaults applied,
//! the `when` graph resolved into a DAG, each step's action structured, and
//! what the pool's policy refuses refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;
use serde::Serialize;

use crate::build::{BuildArgs, parse_build_args};
use crate::error::{Error, ErrorKind, Location, Result};
use crate::file::{Network, StepKind, TaskFile, Version, VolumeMount};

/// acr-builder's defaults.
pub const DEFAULT_STEP_TIMEOUT: u64 = 600;
pub const DEFAULT_RETRY_DELAY: u64 = 5;
/// The network every step joins when the file declares none.
pub const DEFAULT_NETWORK: &str = "acb_default_network";
/// Where a step's working directory is, and relative ones are resolved
/// against: the run's context (acr-builder's `/workspace` on Linux).
pub const WORKSPACE: &str = "/workspace";
/// The `when` entry meaning "start at once".
pub const IMMEDIATE: &str = "-";
/// An id acr-builder reserves for its graph's root.
const ROOT_ID: &str = "acb_root";

/// What the pool running the task allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `privileged: true` steps are refused unless this is set.
    pub allow_privileged: bool,
}

/// A task ready to execute: steps in file order, each with its resolved
/// dependencies and every default applied.
///
/// Secret values may appear in its strings (rendered commands, env, secret
/// volumes); `display()` and `Serialize` hide them, so the dry run and the
/// run record never carry them. The executor reads the fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub origin: String,
    pub version: Version,
    pub step_timeout: u64,
    /// The task's `env` (already merged into each step's).
    pub env: Vec<String>,
    pub secrets: Vec<PlanSecret>,
    pub networks: Vec<Network>,
    pub volumes: Vec<PlanVolume>,
    pub steps: Vec<PlanStep>,
    /// Values hidden by `display()` and `Serialize`.
    pub(crate) masked: Vec<String>,
}

/// A secret the task reads from Slipway's store, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSecret {
    pub id: String,
    /// Kept from ACR files (a managed identity's id); Slipway needs none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A secret volume: file name → base64 content (always shown as `***`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanVolume {
    pub name: String,
    pub files: BTreeMap<String, String>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Action {
    Build(BuildArgs),
    /// Image references, normalized (`:latest` added) and deduplicated.
    Push {
        images: Vec<String>,
    },
    /// Runs `image` with `args` (shell words; image alias resolved).
    Cmd {
        image: String,
        args: Vec<String>,
    },
}

/// `cache:` of a step: whether it uses the shared layer cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    pub id: String,
    pub line: u32,
    /// Ids of the steps that must finish first (empty: starts at once).
    pub depends_on: Vec<String>,
    /// Longest chain of dependencies before it: steps of one level may run together.
    pub level: usize,
    pub action: Action,
    /// The step's env, then the task's for names the step does not set.
    pub env: Vec<String>,
    pub working_directory: String,
    pub disable_working_directory_override: bool,
    pub timeout: u64,
    pub start_delay: u64,
    pub retries: u64,
    pub retry_delay: u64,
    pub retry_on_errors: Vec<String>,
    pub repeat: u64,
    pub ignore_errors: bool,
    pub detach: bool,
    pub keep: bool,
    pub pull: bool,
    pub privileged: bool,
    pub exited_with: Vec<i64>,
    pub exited_without: Vec<i64>,
    pub entry_point: Option<String>,
    pub user: Option<String>,
    pub network: Option<String>,
    pub ports: Vec<String>,
    pub expose: Vec<String>,
    pub cache: Option<Cache>,
    pub cpus: Option<String>,
    pub volume_mounts: Vec<VolumeMount>,
    pub pull_retries: u64,
    pub pull_retry_delay: u64,
}

struct Ctx<'a> {
    origin: &'a str,
}

impl Ctx<'_> {
    fn err(&self, line: u32, kind: ErrorKind) -> Error {
        Error::new(Location::line(self.origin, line), kind)
    }
    fn step_err(&self, line: u32, step: &str, message: String) -> Error {
        self.err(
            line,
            ErrorKind::Step {
                step: step.to_owned(),
                message,
            },
        )
    }
}

fn non_negative(v: Option<i64>, what: &str, c: &Ctx<'_>, line: u32, step: &str) -> Result<u64> {
    match v {
        None => Ok(0),
        Some(n) => u64::try_from(n)
            .map_err(|_| c.step_err(line, step, format!("{what} must be >= 0, not {n}"))),
    }
}

/// A positive value, or `default` for an absent, zero or negative one
/// (acr-builder's rule for timeouts and retry delays).
fn positive_or(v: Option<i64>, default: u64) -> u64 {
    v.and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn is_azure_key_vault(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("https://") else {
        return false;
    };
    let host = rest.split(['/', ':']).next().unwrap_or("");
    [
        ".vault.azure.net",
        ".vault.azure.cn",
        ".vault.usgovcloudapi.net",
        ".vault.microsoftazure.de",
    ]
    .iter()
    .any(|suffix| host.ends_with(suffix))
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn env_name(entry: &str) -> Option<&str> {
    entry
        .split_once('=')
        .map(|(k, _)| k)
        .filter(|k| !k.is_empty())
}

/// `NAME` with no tag and no digest gets `:latest` (the tag is in the last
/// path component, so `host:5000/app` is untagged).
fn normalize_ref(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

fn join_workdir(dir: &str) -> String {
    let joined = if dir.starts_with('/') {
        dir.to_owned()
    } else {
        format!("{WORKSPACE}/{dir}")
    };
    // `path.Clean`: drop `.` and empty components, fold `..`.
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Validates `file` and builds its plan under `policy`.
pub fn plan(file: &TaskFile, policy: &Policy) -> Result<Plan> {
    let c = Ctx {
        origin: &file.origin,
    };
    let file_err = |kind: ErrorKind| Error::new(Location::file(&file.origin), kind);

    if let Some(a) = &file.alias
        && file.version != Version::V1_1_0
    {
        return Err(c.err(
            a.line,
            ErrorKind::Invalid(format!(
                "alias: needs version: v1.1.0 (this file is {}); without it $names are not replaced",
                file.version.as_str()
            )),
        ));
    }

    for e in &file.env {
        if env_name(e).is_none() {
            return Err(file_err(ErrorKind::Invalid(format!(
                "env {e:?}: expected NAME=VALUE"
            ))));
        }
    }

    // Secrets: ids from Slipway's store; Key Vault references refused.
    let mut secrets = Vec::new();
    let mut secret_ids = HashMap::new();
    for s in &file.secrets {
        let id = s.id.trim();
        if id.is_empty() || id.contains(char::is_whitespace) {
            return Err(c.err(
                s.line,
                ErrorKind::Invalid(format!("secret id {:?}: an id is one word", s.id)),
            ));
        }
        if let Some(first) = secret_ids.insert(id.to_owned(), s.line) {
            return Err(c.err(
                s.line,
                ErrorKind::Invalid(format!(
                    "duplicate secret id {id:?} (first at line {first})"
                )),
            ));
        }
        if let Some(url) = &s.keyvault {
            if is_azure_key_vault(url) {
                return Err(c.err(
                    s.line,
                    ErrorKind::KeyVault {
                        id: id.to_owned(),
                        url: url.clone(),
                    },
                ));
            }
            return Err(c.err(
                s.line,
                ErrorKind::Invalid(format!(
                    "secret {id}: keyvault {url:?} is not read by Slipway; store the value with `slipway secret set {id} --value-stdin` and declare it as `secrets: - id: {id}` (no keyvault:)"
                )),
            ));
        }
        if let Some(client) = &s.client_id
            && !is_uuid(client)
        {
            return Err(c.err(
                s.line,
                ErrorKind::Invalid(format!("secret {id}: clientID {client:?} is not a GUID")),
            ));
        }
        secrets.push(PlanSecret {
            id: id.to_owned(),
            client_id: s.client_id.clone(),
        });
    }

    // Volumes: named secret file sets.
    let mut volumes = Vec::new();
    let mut volume_names = BTreeSet::new();
    for v in &file.volumes {
        let bad_name = |n: &str, extra: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch) || extra.contains(ch))
        };
        if !bad_name(&v.name, "") {
            return Err(c.err(
                v.line,
                ErrorKind::Invalid(format!(
                    "volume name {:?}: use letters, digits, - and _",
                    v.name
                )),
            ));
        }
        if !volume_names.insert(v.name.clone()) {
            return Err(c.err(
                v.line,
                ErrorKind::Invalid(format!("duplicate volume name {:?}", v.name)),
            ));
        }
        if v.secret.is_empty() {
            return Err(c.err(
                v.line,
                ErrorKind::Invalid(format!("volume {}: secret: lists no file", v.name)),
            ));
        }
        for (name, content) in &v.secret {
            if !bad_name(name, ".") {
                return Err(c.err(
                    v.line,
                    ErrorKind::Invalid(format!(
                        "volume {}: file name {name:?}: use letters, digits, -, _ and .",
                        v.name
                    )),
                ));
            }
            if base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .is_err()
            {
                return Err(c.err(
                    v.line,
                    ErrorKind::Invalid(format!(
                        "volume {}: file {name} is not base64 (write `{{{{ … | b64enc }}}}`)",
                        v.name
                    )),
                ));
            }
        }
        volumes.push(PlanVolume {
            name: v.name.clone(),
            files: v.secret.clone(),
        });
    }

    // Networks: the last `isDefault` one, or acr-builder's default network.
    let mut networks = file.networks.clone();
    let mut network_names = BTreeSet::new();
    for n in &networks {
        if n.name.trim().is_empty() {
            return Err(file_err(ErrorKind::Invalid(
                "a network has no name".to_owned(),
            )));
        }
        if !network_names.insert(n.name.clone()) {
            return Err(file_err(ErrorKind::Invalid(format!(
                "duplicate network {:?}",
                n.name
            ))));
        }
    }
    let default_network = if networks.is_empty() {
        networks.push(Network {
            name: DEFAULT_NETWORK.to_owned(),
            driver: Some("bridge".to_owned()),
            ipv6: false,
            skip_creation: false,
            is_default: true,
        });
        network_names.insert(DEFAULT_NETWORK.to_owned());
        Some(DEFAULT_NETWORK.to_owned())
    } else {
        networks
            .iter()
            .rev()
            .find(|n| n.is_default)
            .map(|n| n.name.clone())
    };

    let step_timeout = positive_or(file.step_timeout, DEFAULT_STEP_TIMEOUT);
    let ids: Vec<String> = file
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| s.id_or_default(i))
        .collect();

    // Ids: one word, unique, not acb_root.
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (i, (s, id)) in file.steps.iter().zip(&ids).enumerate() {
        if id.is_empty() || id.contains(char::is_whitespace) {
            return Err(c.step_err(s.line, id, "an id is one word, without spaces".to_owned()));
        }
        if id == ROOT_ID {
            return Err(c.step_err(s.line, id, format!("{ROOT_ID} is reserved")));
        }
        if let Some(&first) = index_of.get(id.as_str()) {
            return Err(c.err(
                s.line,
                ErrorKind::DuplicateId {
                    id: id.clone(),
                    first_line: file.steps[first].line,
                },
            ));
        }
        index_of.insert(id, i);
    }

    // Dependencies: `["-"]` none, absent the previous step, else the named ones.
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(ids.len());
    for (i, (s, id)) in file.steps.iter().zip(&ids).enumerate() {
        let d = if s.when.is_empty() {
            if i == 0 { Vec::new() } else { vec![i - 1] }
        } else if s.when.iter().any(|w| w == IMMEDIATE) {
            if s.when.len() > 1 {
                return Err(c.step_err(
                    s.line,
                    id,
                    "when: [\"-\"] (start at once) cannot be combined with step ids".to_owned(),
                ));
            }
            Vec::new()
        } else {
            let mut d = Vec::new();
            for w in &s.when {
                let j = *index_of.get(w.as_str()).ok_or_else(|| {
                    c.err(
                        s.line,
                        ErrorKind::UnknownDependency {
                            step: id.clone(),
                            dependency: w.clone(),
                        },
                    )
                })?;
                if !d.contains(&j) {
                    d.push(j);
                }
            }
            d
        };
        deps.push(d);
    }
    if let Some(cycle) = find_cycle(&deps) {
        let names: Vec<String> = cycle.iter().map(|&i| ids[i].clone()).collect();
        return Err(c.err(file.steps[cycle[0]].line, ErrorKind::Cycle(names)));
    }
    // acr-builder adds a step's edges when it reaches the step, so `when`
    // can only name steps above it.
    for (i, d) in deps.iter().enumerate() {
        if let Some(&j) = d.iter().find(|&&j| j > i) {
            return Err(c.err(
                file.steps[i].line,
                ErrorKind::LaterDependency {
                    step: ids[i].clone(),
                    dependency: ids[j].clone(),
                    line: file.steps[j].line,
                },
            ));
        }
    }
    let mut levels = vec![0usize; ids.len()];
    for i in 0..ids.len() {
        levels[i] = deps[i].iter().map(|&j| levels[j] + 1).max().unwrap_or(0);
    }

    let aliases = file.alias.as_ref().map(|a| &a.values);
    let mut steps = Vec::with_capacity(ids.len());
    for (i, (s, id)) in file.steps.iter().zip(&ids).enumerate() {
        let line = s.line;
        let action = match &s.kind {
            StepKind::Build(b) => Action::Build(parse_build_args(b).map_err(|message| {
                c.err(
                    line,
                    ErrorKind::BuildArgs {
                        step: id.clone(),
                        message,
                    },
                )
            })?),
            StepKind::Push(images) => {
                let mut out: Vec<String> = Vec::new();
                for img in images {
                    if img.trim().is_empty() || img.contains(char::is_whitespace) {
                        return Err(c.step_err(
                            line,
                            id,
                            format!("push: {img:?} is not an image reference"),
                        ));
                    }
                    let n = normalize_ref(img.trim());
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                Action::Push { images: out }
            }
            StepKind::Cmd(cmd) => {
                let mut words = shell_words::split(cmd)
                    .map_err(|e| c.step_err(line, id, format!("cmd: {e} in {cmd:?}")))?
                    .into_iter();
                let first = words.next().unwrap_or_default();
                let rest: Vec<String> = words.collect();
                // acr-builder resolves a bare alias as the image (v1.1.0);
                // an alias may carry arguments too (`purge` → `<acr-cli> purge`).
                match aliases.and_then(|a| a.get(&first)) {
                    Some(value) => {
                        let mut expanded = shell_words::split(value)
                            .map_err(|e| {
                                c.step_err(line, id, format!("alias {first}: {e} in {value:?}"))
                            })?
                            .into_iter();
                        let image = expanded.next().unwrap_or_default();
                        Action::Cmd {
                            image,
                            args: expanded.chain(rest).collect(),
                        }
                    }
                    None => Action::Cmd {
                        image: first,
                        args: rest,
                    },
                }
            }
        };

        if s.privileged && !policy.allow_privileged {
            return Err(c.err(line, ErrorKind::Privileged { step: id.clone() }));
        }
        if let Some(iso) = &s.isolation {
            // `default` is the one value docker accepts on Linux.
            if !iso.eq_ignore_ascii_case("default") {
                return Err(c.err(
                    line,
                    ErrorKind::Isolation {
                        step: id.clone(),
                        value: iso.clone(),
                    },
                ));
            }
        }
        let cache = match s.cache.as_deref() {
            None | Some("") => None,
            Some(v) if v.eq_ignore_ascii_case("enabled") => Some(Cache::Enabled),
            Some(v) if v.eq_ignore_ascii_case("disabled") => Some(Cache::Disabled),
            Some(v) => {
                return Err(c.step_err(line, id, format!("cache {v:?}: use enabled or disabled")));
            }
        };
        if let Some(cpus) = &s.cpus
            && !cpus
                .trim()
                .parse::<f64>()
                .is_ok_and(|n| n > 0.0 && n.is_finite())
        {
            return Err(c.step_err(
                line,
                id,
                format!("cpus {cpus:?}: expected a positive number"),
            ));
        }
        // Docker's built-in networks need no declaration.
        if let Some(n) = &s.network
            && !network_names.contains(n)
            && !matches!(n.as_str(), "host" | "none" | "bridge")
        {
            return Err(c.step_err(
                line,
                id,
                format!("network {n:?} is not declared under networks:"),
            ));
        }
        if !s.volume_mounts.is_empty() && matches!(action, Action::Push { .. }) {
            return Err(c.step_err(
                line,
                id,
                "volumeMounts apply to cmd and build steps only".to_owned(),
            ));
        }
        let mut paths = BTreeSet::new();
        for m in &s.volume_mounts {
            if m.name.is_empty() || m.mount_path.is_empty() {
                return Err(c.step_err(
                    line,
                    id,
                    "a volume mount has a name and a mountPath".to_owned(),
                ));
            }
            if !volume_names.contains(&m.name) {
                return Err(c.step_err(
                    line,
                    id,
                    format!("volume mount {:?} names no volume under volumes:", m.name),
                ));
            }
            if !paths.insert(m.mount_path.clone()) {
                return Err(c.step_err(
                    line,
                    id,
                    format!("mountPath {:?} is used twice", m.mount_path),
                ));
            }
        }
        for e in &s.env {
            if env_name(e).is_none() {
                return Err(c.step_err(line, id, format!("env {e:?}: expected NAME=VALUE")));
            }
        }
        let mut env = s.env.clone();
        let step_names: BTreeSet<&str> = s.env.iter().filter_map(|e| env_name(e)).collect();
        env.extend(
            file.env
                .iter()
                .filter(|e| env_name(e).is_some_and(|n| !step_names.contains(n)))
                .cloned(),
        );

        let workdir = s
            .working_directory
            .as_deref()
            .or(file.working_directory.as_deref())
            .unwrap_or(WORKSPACE);
        steps.push(PlanStep {
            id: id.clone(),
            line,
            depends_on: deps[i].iter().map(|&j| ids[j].clone()).collect(),
            level: levels[i],
            action,
            env,
            working_directory: join_workdir(workdir),
            disable_working_directory_override: s.disable_working_directory_override,
            timeout: positive_or(s.timeout, step_timeout),
            start_delay: non_negative(s.start_delay, "startDelay", &c, line, id)?,
            retries: non_negative(s.retries, "retries", &c, line, id)?,
            retry_delay: positive_or(s.retry_delay, DEFAULT_RETRY_DELAY),
            retry_on_errors: s.retry_on_errors.clone(),
            repeat: non_negative(s.repeat, "repeat", &c, line, id)?,
            ignore_errors: s.ignore_errors,
            detach: s.detach,
            keep: s.keep,
            pull: s.pull,
            privileged: s.privileged,
            exited_with: s.exited_with.clone(),
            exited_without: s.exited_without.clone(),
            entry_point: s.entry_point.clone(),
            user: s.user.clone(),
            network: s.network.clone().or_else(|| default_network.clone()),
            ports: s.ports.clone(),
            expose: s.expose.clone(),
            cache,
            cpus: s.cpus.clone(),
            volume_mounts: s.volume_mounts.clone(),
            pull_retries: non_negative(s.cmd_download_retries, "cmdDownloadRetries", &c, line, id)?,
            pull_retry_delay: non_negative(
                s.cmd_download_retry_delay,
                "cmdDownloadRetryDelay",
                &c,
                line,
                id,
            )?,
        });
    }

    Ok(Plan {
        origin: file.origin.clone(),
        version: file.version,
        step_timeout,
        env: file.env.clone(),
        secrets,
        networks,
        volumes,
        steps,
        masked: Vec::new(),
    })
}

/// A cycle in the dependency graph (`deps[i]` = what `i` waits for), as
/// step indices starting at its lowest, or `None`.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; deps.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        n: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[n] = Mark::Active;
        stack.push(n);
        for &d in &deps[n] {
            match marks[d] {
                Mark::Active => {
                    let start = stack.iter().position(|&s| s == d).unwrap_or(0);
                    // The stack runs in "waits for" order; report the cycle
                    // from its first step in the file, closed: a -> b -> a.
                    let mut cycle: Vec<usize> = stack[start..].to_vec();
                    let min = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, v)| **v)
                        .map_or(0, |(i, _)| i);
                    cycle.rotate_left(min);
                    cycle.push(cycle[0]);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, deps, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
        None
    }
    (0..deps.len()).find_map(|n| {
        if marks[n] == Mark::New {
            visit(n, deps, &mut marks, &mut stack)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_and_closed() {
        // 0 waits for 2, 2 waits for 1, 1 waits for 0.
        let deps = vec![vec![2], vec![0], vec![1]];
        let c = find_cycle(&deps).unwrap();
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
        assert_eq!(find_cycle(&[vec![], vec![0], vec![0, 1]]), None);
        assert_eq!(find_cycle(&[vec![0]]), Some(vec![0, 0]));
    }

    #[test]
    fn refs_and_workdirs_normalize() {
        assert_eq!(normalize_ref("app"), "app:latest");
        assert_eq!(normalize_ref("host:5000/app"), "host:5000/app:latest");
        assert_eq!(normalize_ref("app@sha256:ab"), "app@sha256:ab");
        assert_eq!(join_workdir("src/../app/"), "/workspace/app");
        assert_eq!(join_workdir("/abs/./x"), "/abs/x");
    }

    #[test]
    fn key_vault_urls() {
        assert!(is_azure_key_vault(
            "https://myvault.vault.azure.net/secrets/x"
        ));
        assert!(!is_azure_key_vault("https://example.com/vault.azure.net"));
        assert!(is_uuid("c72b2df7-2f1b-4b18-9e34-5e0a2c3f3d2a"));
    }
}
