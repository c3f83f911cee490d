//! `cmd: docker …` steps. On ACR the `docker` image talks to the agent's
//! daemon; Slipway has none, so the verbs task files use are read here and
//! carried out by the agent with its builder and the run's own image store:
//! `build`, `push`, `pull`, `tag`, `run`, `images`. Anything else is refused
//! by name.

use crate::build::{BuildArgs, parse_build_args};

/// A `docker` command line, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerVerb {
    Build(BuildArgs),
    Push(Vec<String>),
    Pull(String),
    Tag { source: String, target: String },
    Run(DockerRun),
    Images,
}

/// `docker run`'s flags that mean something without a daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerRun {
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub detach: bool,
}

const VERBS: &str = "build, push, pull, tag, run, images";

/// Read `args` (what follows `docker`).
pub fn docker_verb(args: &[String]) -> Result<DockerVerb, String> {
    let Some((verb, rest)) = args.split_first() else {
        return Err(format!("docker: give a command ({VERBS})"));
    };
    match verb.as_str() {
        "build" => parse_build_args(&shell_words::join(rest)).map(DockerVerb::Build),
        "push" => match rest {
            [image] => Ok(DockerVerb::Push(vec![image.clone()])),
            _ => Err("docker push: give one IMAGE".into()),
        },
        "pull" => match rest {
            [image] => Ok(DockerVerb::Pull(image.clone())),
            _ => Err("docker pull: give one IMAGE".into()),
        },
        "tag" => match rest {
            [source, target] => Ok(DockerVerb::Tag {
                source: source.clone(),
                target: target.clone(),
            }),
            _ => Err("docker tag: give SOURCE TARGET".into()),
        },
        "images" | "image" if rest.is_empty() || rest == ["ls"] => Ok(DockerVerb::Images),
        "run" => docker_run(rest).map(DockerVerb::Run),
        other => Err(format!(
            "docker {other}: not supported in a Slipway task (there is no daemon); supported: {VERBS}"
        )),
    }
}

fn docker_run(words: &[String]) -> Result<DockerRun, String> {
    let mut run = DockerRun::default();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if !w.starts_with('-') {
            run.image = w.clone();
            run.args = words[i + 1..].to_vec();
            return Ok(run);
        }
        let (flag, inline) = match w.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (w.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            i += 1;
            words
                .get(i)
                .cloned()
                .ok_or_else(|| format!("docker run {flag}: needs a value"))
        };
        match flag {
            "--rm" | "-i" | "-t" | "-it" | "--init" => {}
            "-d" | "--detach" => run.detach = true,
            "-e" | "--env" => run.env.push(value()?),
            "--entrypoint" => run.entrypoint = Some(value()?),
            "-w" | "--workdir" => run.workdir = Some(value()?),
            "-u" | "--user" => run.user = Some(value()?),
            "--name" | "--network" | "--hostname" => {
                value()?;
            }
            other => {
                return Err(format!(
                    "docker run {other}: not supported in a Slipway task; supported: --rm, -d, -e, --entrypoint, -w, -u, --name, --network"
                ));
            }
        }
        i += 1;
    }
    Err("docker run: give an IMAGE".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        shell_words::split(s).unwrap_or_default()
    }

    #[test]
    fn verbs_task_files_use() {
        let DockerVerb::Build(b) = docker_verb(&words("build -t app:1 -f x/Dockerfile x")).unwrap()
        else {
            panic!("not a build");
        };
        assert_eq!(b.tags, ["app:1"]);
        assert_eq!(b.context, "x");
        assert_eq!(
            docker_verb(&words("tag app:1 reg/app:2")).unwrap(),
            DockerVerb::Tag {
                source: "app:1".into(),
                target: "reg/app:2".into()
            }
        );
        let DockerVerb::Run(r) =
            docker_verb(&words("run --rm -e A=1 --entrypoint sh app:1 -c 'echo hi'")).unwrap()
        else {
            panic!("not a run");
        };
        assert_eq!(r.image, "app:1");
        assert_eq!(r.args, ["-c", "echo hi"]);
        assert_eq!(r.env, ["A=1"]);
        assert_eq!(r.entrypoint.as_deref(), Some("sh"));
        assert_eq!(docker_verb(&words("images")).unwrap(), DockerVerb::Images);
        let e = docker_verb(&words("compose up")).unwrap_err();
        assert!(
            e.contains("docker compose") && e.contains("supported"),
            "{e}"
        );
        let e = docker_verb(&words("run -v /:/host app")).unwrap_err();
        assert!(e.contains("-v"), "{e}");
    }
}
