//! The instructions that only change the image's config (ENV, LABEL, CMD,
//! ENTRYPOINT, USER, EXPOSE, STOPSIGNAL, SHELL, MAINTAINER, HEALTHCHECK,
//! VOLUME, ONBUILD), as BuildKit records them: each adds an empty-layer
//! history entry (ONBUILD none). Pure: no files, no network.

use dockerfile::Command;
use serde_json::json;

use crate::image::NewImage;

/// The history entry of the step.
pub(crate) struct Step<'a> {
    /// The instruction as written.
    pub created_by: &'a str,
    /// RFC 3339 (`SOURCE_DATE_EPOCH`); `None`: a layer's, at the end.
    pub created: Option<&'a str>,
}

/// WORKDIR `path` after the `current` one, as BuildKit writes it into the
/// config (its `NormalizeWorkdir`): an absolute path as written, a relative
/// one joined to the current one and cleaned (Go's `path.Join`), so
/// `lib/./a/../b` from `/srv` is `/srv/lib/b`. What the directory and a
/// RUN's cwd use is [`clean_path`] of it.
pub(crate) fn workdir(current: &str, path: &str) -> String {
    let current = if current.is_empty() { "/" } else { current };
    if path.starts_with('/') {
        path.to_owned()
    } else if path.is_empty() {
        current.to_owned()
    } else {
        clean_path(&format!("{current}/{path}"))
    }
}

/// A container path made absolute and lexically clean, as Go's
/// `path.Clean` of it joined to `/`: no `.`, no `..` (at the top it stays
/// there), no empty or trailing components. `/w/./p/../q/` is `/w/q`.
pub(crate) fn clean_path(p: &str) -> String {
    format!("/{}", crate::sources::clean(p).display())
}

/// Apply `command` to `image`. `shell` is the stage's SHELL (SHELL sets it,
/// shell-form CMD/ENTRYPOINT use it); `cmd_set` says whether this stage set
/// CMD (an ENTRYPOINT after it keeps it). Instructions that are not
/// config-only are the engine's and are ignored here.
pub(crate) fn apply(
    image: &mut NewImage,
    command: &Command,
    shell: &mut Vec<String>,
    cmd_set: &mut bool,
    step: &Step<'_>,
) {
    match command {
        Command::Env { vars } => {
            set_env(image.container_config(), vars);
            image.add_empty_step(step.created_by, step.created);
        }
        Command::Label { labels } => {
            let cfg = image.container_config();
            let entry = cfg.entry("Labels").or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            if let Some(map) = entry.as_object_mut() {
                for kv in labels {
                    map.insert(kv.key.clone(), json!(kv.value));
                }
            }
            image.add_empty_step(step.created_by, step.created);
        }
        Command::Cmd(cl) | Command::Entrypoint(cl) => {
            let key = if matches!(command, Command::Cmd(_)) {
                "Cmd"
            } else {
                "Entrypoint"
            };
            let value: Vec<String> = if cl.shell_form {
                shell.iter().cloned().chain([cl.args.join(" ")]).collect()
            } else {
                cl.args.clone()
            };
            image.container_config().insert(key.into(), json!(value));
            if key == "Cmd" {
                *cmd_set = true;
            } else if !*cmd_set {
                // BuildKit: a new ENTRYPOINT resets a CMD the stage
                // did not set itself (an inherited one).
                image.container_config().remove("Cmd");
            }
            image.add_empty_step(step.created_by, step.created);
        }
        Command::User { user } => {
            image.container_config().insert("User".into(), json!(user));
            image.add_empty_step(step.created_by, step.created);
        }
        Command::Expose { ports } => {
            let cfg = image.container_config();
            let entry = cfg.entry("ExposedPorts").or_insert_with(|| json!({}));
            if let Some(map) = entry.as_object_mut() {
                expose(map, ports);
            }
            image.add_empty_step(step.created_by, step.created);
        }
        Command::Stopsignal { signal } => {
            image
                .container_config()
                .insert("StopSignal".into(), json!(signal));
            image.add_empty_step(step.created_by, step.created);
        }
        Command::Shell { shell: s } => {
            *shell = s.clone();
            image.container_config().insert("Shell".into(), json!(s));
            image.add_empty_step(step.created_by, step.created);
        }
        Command::Maintainer { name } => {
            image.add_empty_step(&format!("MAINTAINER {name}"), step.created);
        }
        Command::Healthcheck(h) => {
            image
                .container_config()
                .insert("Healthcheck".into(), healthcheck(h));
            image.add_empty_step(step.created_by, step.created);
        }
        Command::Volume { paths } => {
            let cfg = image.container_config();
            let entry = cfg.entry("Volumes").or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            if let Some(map) = entry.as_object_mut() {
                for p in paths {
                    map.insert(p.clone(), json!({}));
                }
            }
            image.add_empty_step(step.created_by, step.created);
        }
        Command::Onbuild { expression, .. } => {
            // Recorded for images built FROM this one; BuildKit adds
            // no history entry for it.
            let cfg = image.container_config();
            let entry = cfg.entry("OnBuild").or_insert_with(|| json!([]));
            if !entry.is_array() {
                *entry = json!([]);
            }
            if let Some(list) = entry.as_array_mut() {
                list.push(json!(expression));
            }
        }
        Command::Run(_)
        | Command::Copy(_)
        | Command::Add(_)
        | Command::Workdir { .. }
        | Command::Arg { .. } => {}
    }
}

/// ENV: each variable replaced where it is, as BuildKit does; new ones last.
fn set_env(
    cfg: &mut serde_json::Map<String, serde_json::Value>,
    vars: &[dockerfile::parser::KeyValue],
) {
    let mut env: Vec<String> = cfg
        .get("Env")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    for kv in vars {
        let entry = format!("{}={}", kv.key, kv.value);
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(k, _)| k) == Some(kv.key.as_str()))
        {
            Some(e) => *e = entry,
            None => env.push(entry),
        }
    }
    cfg.insert("Env".into(), json!(env));
}

/// EXPOSE: `PORT[/PROTO]` (tcp by default) into `ExposedPorts`; a range is
/// one entry per port, as BuildKit has it.
fn expose(map: &mut serde_json::Map<String, serde_json::Value>, ports: &[String]) {
    for p in ports {
        let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        let proto = proto.to_ascii_lowercase();
        let range = port
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
            .filter(|(a, b)| a <= b);
        match range {
            Some((a, b)) => {
                for n in a..=b {
                    map.insert(format!("{n}/{proto}"), json!({}));
                }
            }
            None => {
                map.insert(format!("{port}/{proto}"), json!({}));
            }
        }
    }
}

/// Docker's HealthConfig: durations in nanoseconds, and zero values left
/// out (`omitempty`).
fn healthcheck(h: &dockerfile::instructions::Healthcheck) -> serde_json::Value {
    let mut hc = serde_json::Map::new();
    hc.insert("Test".into(), json!(h.test));
    for (k, v) in [
        ("Interval", h.interval_ns),
        ("Timeout", h.timeout_ns),
        ("StartPeriod", h.start_period_ns),
        ("StartInterval", h.start_interval_ns),
    ] {
        if let Some(v) = v.filter(|v| *v > 0) {
            hc.insert(k.into(), json!(v));
        }
    }
    if let Some(r) = h.retries.filter(|r| *r > 0) {
        hc.insert("Retries".into(), json!(r));
    }
    serde_json::Value::Object(hc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHEN: &str = "2020-01-01T00:00:00Z";

    /// The config after `lines` on `image`, and the stage's shell.
    fn apply_all(mut image: NewImage, lines: &str) -> (serde_json::Value, Vec<String>) {
        let df = dockerfile::parse(&format!("FROM scratch\n{lines}")).unwrap();
        let mut shell = vec!["/bin/sh".to_owned(), "-c".to_owned()];
        let mut cmd_set = false;
        for ins in &df.stages[0].instructions {
            let step = Step {
                created_by: "step",
                created: Some(WHEN),
            };
            apply(&mut image, &ins.command, &mut shell, &mut cmd_set, &step);
        }
        let built = image.finish(WHEN).unwrap();
        (serde_json::from_slice(&built.config).unwrap(), shell)
    }

    #[test]
    fn env_replaces_in_place_and_expose_expands_ranges() {
        let (c, _) = apply_all(
            NewImage::scratch("linux", "amd64"),
            "ENV A=1 B=2\nENV A=3 C=4\nEXPOSE 80 8000-8002/UDP\n",
        );
        let env = c["config"]["Env"].as_array().unwrap();
        // After scratch's default PATH.
        assert_eq!(env[1..], [json!("A=3"), json!("B=2"), json!("C=4")]);
        let ports: Vec<&String> = c["config"]["ExposedPorts"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(ports, ["80/tcp", "8000/udp", "8001/udp", "8002/udp"]);
    }

    #[test]
    fn shell_forms_use_shell_and_entrypoint_drops_an_inherited_cmd_only() {
        let mut base = NewImage::scratch("linux", "amd64");
        base.container_config()
            .insert("Cmd".into(), json!(["inherited"]));
        let (c, shell) = apply_all(
            base,
            "SHELL [\"/bin/bash\", \"-eu\", \"-c\"]\nENTRYPOINT run --fast\n",
        );
        assert_eq!(shell, ["/bin/bash", "-eu", "-c"]);
        assert_eq!(
            c["config"]["Entrypoint"],
            json!(["/bin/bash", "-eu", "-c", "run --fast"])
        );
        assert!(c["config"].get("Cmd").is_none(), "{c}");

        let (c, _) = apply_all(
            NewImage::scratch("linux", "amd64"),
            "CMD [\"serve\"]\nENTRYPOINT [\"app\"]\n",
        );
        assert_eq!(c["config"]["Cmd"], json!(["serve"]));
        assert_eq!(c["config"]["Entrypoint"], json!(["app"]));
    }

    #[test]
    fn workdir_joins_relative_paths_cleaned_and_keeps_absolute_ones_as_written() {
        assert_eq!(workdir("/srv", "lib/./a/../b"), "/srv/lib/b");
        assert_eq!(workdir("/srv/lib/b", "./c/.."), "/srv/lib/b");
        assert_eq!(workdir("/srv/lib/b", ".."), "/srv/lib");
        assert_eq!(workdir("/", "../../x"), "/x");
        assert_eq!(workdir("", "rel"), "/rel");
        assert_eq!(workdir("/w/./p/../q/", ".."), "/w");
        assert_eq!(workdir("/srv", "/w/./p/../q/"), "/w/./p/../q/");
        assert_eq!(clean_path("/w/./p/../q/"), "/w/q");
        assert_eq!(clean_path("/../../top/./x/.."), "/top");
        assert_eq!(clean_path("/"), "/");
    }

    #[test]
    fn every_step_but_onbuild_adds_an_empty_history_entry() {
        let (c, _) = apply_all(
            NewImage::scratch("linux", "amd64"),
            "LABEL a=b\nONBUILD RUN true\nUSER app\nSTOPSIGNAL SIGINT\n",
        );
        let history = c["history"].as_array().unwrap();
        assert_eq!(history.len(), 3, "{history:?}");
        assert!(history.iter().all(|h| h["empty_layer"] == true));
        assert_eq!(c["config"]["OnBuild"], json!(["RUN true"]));
        assert_eq!(c["config"]["User"], "app");
        assert_eq!(c["config"]["StopSignal"], "SIGINT");
    }
}
