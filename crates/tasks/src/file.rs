//! A task file's YAML → the typed `TaskFile`, every key checked.
//!
//! YAML crate: `serde-saphyr`. `serde_yaml` is unmaintained and `serde_yml`
//! is deprecated; `serde_norway` (a `serde_yaml` fork over libyaml) gives an
//! error's position but not the position of a value that parsed, and a step's
//! line is needed for the errors found after parsing (a `when` naming a later
//! step, a cycle, a refused property). `serde-saphyr` is pure Rust, panic-free,
//! bounded against alias bombs (task files come from users), names an unknown
//! key and its line, and has `Spanned<T>` for the lines of steps, secrets and
//! volumes. Its YAML 1.1 booleans (`yes`/`on`) match Go's yaml.v2, which
//! acr-builder reads task files with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::error::{Error, ErrorKind, Location, Result};

/// The task file versions acr-builder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Version {
    #[serde(rename = "1.0-preview-1")]
    V1_0Preview1,
    #[serde(rename = "v1.0.0")]
    V1_0_0,
    /// Adds `alias:` (and the `$` directive) to v1.0.0.
    #[serde(rename = "v1.1.0")]
    V1_1_0,
}

impl Version {
    /// A file without `version:` is v1.0.0, acr-builder's current version.
    pub const DEFAULT: Version = Version::V1_0_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0Preview1 => "1.0-preview-1",
            Version::V1_0_0 => "v1.0.0",
            Version::V1_1_0 => "v1.1.0",
        }
    }

    /// acr-builder compares versions case-insensitively.
    pub fn parse(s: &str) -> Option<Version> {
        match s.to_ascii_lowercase().as_str() {
            "1.0-preview-1" => Some(Version::V1_0Preview1),
            "v1.0.0" => Some(Version::V1_0_0),
            "v1.1.0" => Some(Version::V1_1_0),
            _ => None,
        }
    }
}

/// A parsed task file: what its YAML says, before defaults and the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFile {
    /// The name errors give the file (its path, or `-` for stdin).
    pub origin: String,
    pub version: Version,
    pub step_timeout: Option<i64>,
    pub working_directory: Option<String>,
    pub env: Vec<String>,
    pub secrets: Vec<Secret>,
    pub networks: Vec<Network>,
    pub volumes: Vec<Volume>,
    pub alias: Option<Alias>,
    pub steps: Vec<Step>,
}

/// `secrets: - id: … keyvault: … clientID: …`
#[derive(Debug, Clone, PartialEq)]
pub struct Secret {
    pub line: u32,
    pub id: String,
    pub keyvault: Option<String>,
    pub client_id: Option<String>,
}

/// `networks: - name: …` (a Docker network on ACR).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub skip_creation: bool,
    #[serde(default)]
    pub is_default: bool,
}

/// `volumes: - name: … secret: {file: base64}`: files a step mounts.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub line: u32,
    pub name: String,
    /// File name → base64 content.
    pub secret: BTreeMap<String, String>,
}

/// `alias:` (v1.1.0): `values`, `src` and the `directive` character.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Alias {
    pub line: u32,
    pub values: BTreeMap<String, String>,
    pub src: Vec<String>,
    pub directive: Option<String>,
}

/// What a step does: exactly one of these per step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// `build:` — the arguments of a `docker build` command line.
    Build(String),
    /// `push:` — image references.
    Push(Vec<String>),
    /// `cmd:` — `<image> [args…]`, run as a container.
    Cmd(String),
}

/// One entry of `steps:`, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub line: u32,
    pub id: Option<String>,
    pub kind: StepKind,
    pub when: Vec<String>,
    pub detach: bool,
    pub keep: bool,
    pub timeout: Option<i64>,
    pub start_delay: Option<i64>,
    pub retries: Option<i64>,
    pub retry_delay: Option<i64>,
    pub retry_on_errors: Vec<String>,
    pub repeat: Option<i64>,
    pub ignore_errors: bool,
    pub exited_with: Vec<i64>,
    pub exited_without: Vec<i64>,
    pub env: Vec<String>,
    pub entry_point: Option<String>,
    pub user: Option<String>,
    pub working_directory: Option<String>,
    pub network: Option<String>,
    pub ports: Vec<String>,
    pub expose: Vec<String>,
    pub pull: bool,
    pub cache: Option<String>,
    pub cpus: Option<String>,
    pub volume_mounts: Vec<VolumeMount>,
    pub disable_working_directory_override: bool,
    pub privileged: bool,
    pub isolation: Option<String>,
    /// acr-builder's retries of a `cmd` image's pull.
    pub cmd_download_retries: Option<i64>,
    pub cmd_download_retry_delay: Option<i64>,
}

impl Step {
    /// The step's id, or acr-builder's default `acb_step_<index>` (0-based).
    pub fn id_or_default(&self, index: usize) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("acb_step_{index}"))
    }
}

/// `volumeMounts: - name: … mountPath: …`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTask {
    #[serde(default)]
    version: Option<Spanned<String>>,
    #[serde(default)]
    step_timeout: Option<i64>,
    #[serde(default)]
    working_directory: Option<String>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    secrets: Option<Vec<Spanned<RawSecret>>>,
    #[serde(default)]
    networks: Option<Vec<Network>>,
    #[serde(default)]
    volumes: Option<Vec<Spanned<RawVolume>>>,
    #[serde(default)]
    alias: Option<Spanned<RawAlias>>,
    #[serde(default)]
    steps: Option<Vec<Spanned<RawStep>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    id: String,
    #[serde(default)]
    keyvault: Option<String>,
    #[serde(default, rename = "clientID")]
    client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: String,
    secret: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlias {
    #[serde(default)]
    pub(crate) values: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(crate) src: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) directive: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStep {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    build: Option<String>,
    #[serde(default)]
    push: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<String>,
    #[serde(default)]
    when: Option<Vec<String>>,
    #[serde(default)]
    detach: bool,
    #[serde(default)]
    keep: bool,
    #[serde(default)]
    timeout: Option<i64>,
    #[serde(default)]
    start_delay: Option<i64>,
    #[serde(default)]
    retries: Option<i64>,
    #[serde(default)]
    retry_delay: Option<i64>,
    #[serde(default)]
    retry_on_errors: Option<Vec<String>>,
    #[serde(default)]
    repeat: Option<i64>,
    #[serde(default)]
    ignore_errors: bool,
    #[serde(default)]
    exited_with: Option<Vec<i64>>,
    #[serde(default)]
    exited_without: Option<Vec<i64>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entry_point: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_directory: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    ports: Option<Vec<String>>,
    #[serde(default)]
    expose: Option<Vec<String>>,
    #[serde(default)]
    pull: bool,
    #[serde(default)]
    cache: Option<String>,
    #[serde(default)]
    cpus: Option<String>,
    #[serde(default)]
    volume_mounts: Option<Vec<VolumeMount>>,
    #[serde(default)]
    disable_working_directory_override: bool,
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    isolation: Option<String>,
    #[serde(default)]
    cmd_download_retries: Option<i64>,
    #[serde(default)]
    cmd_download_retry_delay: Option<i64>,
}

/// The YAML reader's options: positions in messages are ours (FILE:LINE:COL),
/// so its source snippets are off.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

/// Deserializes YAML text, turning an error into one at its FILE:LINE:COL.
pub(crate) fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    serde_saphyr::from_str_with_options::<T>(text, yaml_options())
        .map_err(|e| yaml_error(&e, origin))
}

fn yaml_error(e: &serde_saphyr::Error, origin: &str) -> Error {
    let text = e.to_string();
    let (line, column) = match e.location() {
        Some(l) => (u32::try_from(l.line()).ok(), u32::try_from(l.column()).ok()),
        None => (None, None),
    };
    // The message ends with its own " at line L, column C": the location
    // leads ours instead.
    let mut message = match text.rfind(" at line ") {
        Some(i) if line.is_some() => text[..i].to_owned(),
        _ => text,
    };
    // Words for a task file's author rather than for the reader's caller.
    for (from, to) in [
        (
            ", set DuplicateKeyPolicy in Options if acceptable",
            " (a key appears once per mapping)",
        ),
        ("invalid i64", "expected a whole number"),
        ("invalid bool", "expected true or false"),
    ] {
        message = message.replace(from, to);
    }
    Error::new(
        Location {
            origin: origin.to_owned(),
            line,
            column,
        },
        ErrorKind::Yaml(message),
    )
}

fn line_of<T>(s: &Spanned<T>) -> u32 {
    u32::try_from(s.referenced.line()).unwrap_or(0)
}

/// Parses a task file (rendered, or one with no templates) into a `TaskFile`.
pub fn parse(text: &str, origin: &str) -> Result<TaskFile> {
    // An empty file is an empty mapping, not a null document.
    let raw: RawTask = if text.trim().is_empty() {
        from_yaml("{}", origin)?
    } else {
        from_yaml(text, origin)?
    };
    let at = |line: u32| Location::line(origin, line);

    let version = match &raw.version {
        None => Version::DEFAULT,
        Some(v) => Version::parse(v.value.trim()).ok_or_else(|| {
            Error::new(
                at(line_of(v)),
                ErrorKind::Version {
                    found: v.value.clone(),
                },
            )
        })?,
    };

    let secrets = raw
        .secrets
        .unwrap_or_default()
        .into_iter()
        .map(|s| Secret {
            line: line_of(&s),
            id: s.value.id,
            keyvault: s.value.keyvault,
            client_id: s.value.client_id,
        })
        .collect();

    let mut volumes = Vec::new();
    for v in raw.volumes.unwrap_or_default() {
        let line = line_of(&v);
        let Some(secret) = v.value.secret else {
            return Err(Error::new(
                at(line),
                ErrorKind::Invalid(format!(
                    "volume {}: a volume has a secret: source (the only kind there is)",
                    v.value.name
                )),
            ));
        };
        volumes.push(Volume {
            line,
            name: v.value.name,
            secret,
        });
    }

    let alias = raw.alias.map(|a| {
        let line = line_of(&a);
        Alias {
            line,
            values: a.value.values.unwrap_or_default(),
            src: a.value.src.unwrap_or_default(),
            directive: a.value.directive,
        }
    });

    let mut steps = Vec::new();
    for (index, s) in raw.steps.unwrap_or_default().into_iter().enumerate() {
        let line = line_of(&s);
        let r = s.value;
        let name = r.id.clone().unwrap_or_else(|| format!("acb_step_{index}"));
        let mut found = Vec::new();
        if r.build.is_some() {
            found.push("build");
        }
        if r.push.is_some() {
            found.push("push");
        }
        if r.cmd.is_some() {
            found.push("cmd");
        }
        let kind = match (r.build, r.push, r.cmd) {
            (Some(b), None, None) => StepKind::Build(b),
            (None, Some(p), None) => StepKind::Push(p),
            (None, None, Some(c)) => StepKind::Cmd(c),
            _ => {
                return Err(Error::new(
                    at(line),
                    ErrorKind::StepType { step: name, found },
                ));
            }
        };
        let empty = match &kind {
            StepKind::Build(b) => b.trim().is_empty(),
            StepKind::Push(p) => p.is_empty(),
            StepKind::Cmd(c) => c.trim().is_empty(),
        };
        if empty {
            return Err(Error::new(
                at(line),
                ErrorKind::Step {
                    step: name,
                    message: format!("{} is empty", found.join("")),
                },
            ));
        }
        steps.push(Step {
            line,
            id: r.id,
            kind,
            when: r.when.unwrap_or_default(),
            detach: r.detach,
            keep: r.keep,
            timeout: r.timeout,
            start_delay: r.start_delay,
            retries: r.retries,
            retry_delay: r.retry_delay,
            retry_on_errors: r.retry_on_errors.unwrap_or_default(),
            repeat: r.repeat,
            ignore_errors: r.ignore_errors,
            exited_with: r.exited_with.unwrap_or_default(),
            exited_without: r.exited_without.unwrap_or_default(),
            env: r.env.unwrap_or_default(),
            entry_point: r.entry_point,
            user: r.user,
            working_directory: r.working_directory,
            network: r.network,
            ports: r.ports.unwrap_or_default(),
            expose: r.expose.unwrap_or_default(),
            pull: r.pull,
            cache: r.cache,
            cpus: r.cpus,
            volume_mounts: r.volume_mounts.unwrap_or_default(),
            disable_working_directory_override: r.disable_working_directory_override,
            privileged: r.privileged,
            isolation: r.isolation,
            cmd_download_retries: r.cmd_download_retries,
            cmd_download_retry_delay: r.cmd_download_retry_delay,
        });
    }

    Ok(TaskFile {
        origin: origin.to_owned(),
        version,
        step_timeout: raw.step_timeout,
        working_directory: raw.working_directory,
        env: raw.env.unwrap_or_default(),
        secrets,
        networks: raw.networks.unwrap_or_default(),
        volumes,
        alias,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file() {
        let t = parse("steps:\n  - cmd: bash echo hi\n", "acb.yaml").unwrap();
        assert_eq!(t.version, Version::V1_0_0);
        assert_eq!(t.steps[0].line, 2);
        assert_eq!(t.steps[0].kind, StepKind::Cmd("bash echo hi".into()));
        assert_eq!(t.steps[0].id_or_default(0), "acb_step_0");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse("steps:\n  - cmd: x\n    bogus: 1\n", "acb.yaml").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("acb.yaml:3:5: unknown field `bogus`"),
            "{msg}"
        );
    }

    #[test]
    fn two_kinds_in_one_step() {
        let e = parse("steps:\n  - id: a\n    cmd: x\n    build: .\n", "f").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f:2: step a has build: and cmd:; a step has exactly one of build:, push:, cmd:"
        );
    }

    #[test]
    fn scalars_read_into_strings_like_yaml_v2() {
        let t = parse("steps:\n  - cmd: x\n    user: 1000\n    cpus: 0.5\n    ports: [8080:80]\n    detach: yes\n", "f").unwrap();
        assert_eq!(t.steps[0].user.as_deref(), Some("1000"));
        assert_eq!(t.steps[0].cpus.as_deref(), Some("0.5"));
        assert!(t.steps[0].detach);
    }

    #[test]
    fn version_is_checked_with_its_line() {
        let e = parse("\nversion: v2.0.0\nsteps: []\n", "f").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f:2: unsupported version \"v2.0.0\""),
            "{e}"
        );
        assert_eq!(
            parse("version: V1.1.0\n", "f").unwrap().version,
            Version::V1_1_0
        );
    }
}
