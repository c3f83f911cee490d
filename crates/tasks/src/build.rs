//! A `build:` step's `docker build` argument line → structured arguments.
//!
//! Only the flags Slipway's builder honours are accepted; any other is
//! refused by name, so a task never builds something other than it says.

use serde::Serialize;

/// `docker build` arguments of a `build:` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BuildArgs {
    /// The build context: a directory of the run's context (`.`) or a URL.
    pub context: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub build_args: Vec<BuildArg>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// `--pull`: always pull base images.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<BuildSecret>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<BuildArg>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
}

/// `--build-arg NAME[=VALUE]` (also used for `--label`). Without a value,
/// docker takes it from the environment: here, the step's `env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildArg {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `--secret id=ID[,src=PATH|,env=VAR]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildSecret {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

const SUPPORTED: &str = "-t/--tag, -f/--file, --build-arg, --target, --platform, --no-cache, --pull, --secret, --label, --cache-from";

/// Parses a `build:` line (shell words, as acr-builder's `sh -c` would split them).
pub(crate) fn parse_build_args(line: &str) -> Result<BuildArgs, String> {
    let words = shell_words::split(line).map_err(|e| format!("{e} in {line:?}"))?;
    let mut args = BuildArgs::default();
    let mut contexts = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        i += 1;
        if !word.starts_with('-') || word == "-" {
            contexts.push(word.clone());
            continue;
        }
        // `--flag=value`, `--flag value`, `-t value` or `-tvalue`.
        let (flag, inline) = if let Some(long) = word.strip_prefix("--") {
            match long.split_once('=') {
                Some((f, v)) => (format!("--{f}"), Some(v.to_owned())),
                None => (word.clone(), None),
            }
        } else if word.len() > 2 && word.is_char_boundary(2) {
            (
                word[..2].to_owned(),
                Some(word[2..].trim_start_matches('=').to_owned()),
            )
        } else {
            (word.clone(), None)
        };
        let takes_value = matches!(
            flag.as_str(),
            "-t" | "--tag"
                | "-f"
                | "--file"
                | "--build-arg"
                | "--target"
                | "--platform"
                | "--secret"
                | "--label"
                | "--cache-from"
        );
        let value = if takes_value {
            match &inline {
                Some(v) => v.clone(),
                None => {
                    let v = words
                        .get(i)
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value"))?;
                    i += 1;
                    v
                }
            }
        } else {
            String::new()
        };
        match flag.as_str() {
            "-t" | "--tag" => args.tags.push(value),
            "-f" | "--file" => args.dockerfile = Some(value),
            "--build-arg" => args.build_args.push(name_value(&value, "--build-arg")?),
            "--label" => args.labels.push(name_value(&value, "--label")?),
            "--target" => args.target = Some(value),
            "--platform" => args.platform = Some(value),
            "--cache-from" => args.cache_from.push(value),
            "--secret" => args.secrets.push(build_secret(&value)?),
            "--no-cache" | "--pull" => {
                let on = match inline.as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(other) => return Err(format!("{flag}={other}: expected true or false")),
                };
                if flag == "--no-cache" {
                    args.no_cache = on;
                } else {
                    args.pull = on;
                }
            }
            _ => {
                return Err(format!(
                    "unsupported docker build flag {flag} (supported: {SUPPORTED})"
                ));
            }
        }
    }
    match contexts.as_slice() {
        [] => Err("no build context: end the line with the context directory, e.g. `.`".to_owned()),
        [c] if c == "-" => Err(
            "a context from stdin (`-`) is not supported: the step builds from the run's context"
                .to_owned(),
        ),
        [c] => {
            args.context.clone_from(c);
            Ok(args)
        }
        many => Err(format!("more than one build context: {}", many.join(" "))),
    }
}

fn name_value(s: &str, flag: &str) -> Result<BuildArg, String> {
    let (name, value) = match s.split_once('=') {
        Some((n, v)) => (n, Some(v.to_owned())),
        None => (s, None),
    };
    if name.is_empty() {
        return Err(format!("{flag} {s:?}: the name is empty"));
    }
    Ok(BuildArg {
        name: name.to_owned(),
        value,
    })
}

fn build_secret(s: &str) -> Result<BuildSecret, String> {
    let mut secret = BuildSecret {
        id: String::new(),
        src: None,
        env: None,
    };
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("--secret {s:?}: expected id=ID[,src=PATH|,env=VAR]"))?;
        match k {
            "id" => secret.id = v.to_owned(),
            "src" | "source" => secret.src = Some(v.to_owned()),
            "env" => secret.env = Some(v.to_owned()),
            "type" if v == "file" || v == "env" => {}
            _ => return Err(format!("--secret {s:?}: unknown key {k:?}")),
        }
    }
    if secret.id.is_empty() {
        return Err(format!("--secret {s:?}: the id is missing"));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let a = parse_build_args(
            "-t app:1 --tag=app:latest -f docker/Dockerfile --build-arg A=1 --build-arg B --target prod \
             --platform linux/arm64 --no-cache --secret id=npm,src=.npmrc --label 'x=y z' .",
        )
        .unwrap();
        assert_eq!(a.tags, ["app:1", "app:latest"]);
        assert_eq!(a.dockerfile.as_deref(), Some("docker/Dockerfile"));
        assert_eq!(
            a.build_args[1],
            BuildArg {
                name: "B".into(),
                value: None
            }
        );
        assert_eq!(a.target.as_deref(), Some("prod"));
        assert!(a.no_cache);
        assert_eq!(a.secrets[0].src.as_deref(), Some(".npmrc"));
        assert_eq!(a.labels[0].value.as_deref(), Some("y z"));
        assert_eq!(a.context, ".");
    }

    #[test]
    fn refusals_name_the_flag() {
        assert!(
            parse_build_args("--squash .")
                .unwrap_err()
                .contains("--squash")
        );
        assert!(parse_build_args("-m 2g .").unwrap_err().contains("-m"));
        assert!(
            parse_build_args("-t a")
                .unwrap_err()
                .contains("no build context")
        );
        assert!(
            parse_build_args("-t a . b")
                .unwrap_err()
                .contains("more than one")
        );
        assert!(parse_build_args("-t 'a .").is_err());
        assert!(
            parse_build_args("-t")
                .unwrap_err()
                .contains("needs a value")
        );
    }
}
