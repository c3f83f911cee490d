//! The plan as text (the dry run) and as JSON (the run record), both with
//! secret values replaced by `***`.

use std::fmt::{self, Write as _};

use base64::Engine as _;
use serde::Serialize;

use crate::file::{Network, Version};
use crate::plan::{Action, Cache, Plan, PlanSecret, PlanStep, PlanVolume};

const MASK: &str = "***";

impl Plan {
    /// Hides `values` (the run's secret values) wherever the plan is shown
    /// or serialized. Each value's lines and base64 form are hidden too,
    /// since templates often write `{{ .Secrets.x | b64enc }}`.
    pub fn mask_secrets<I, S>(&mut self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for v in values {
            let v = v.as_ref();
            if v.is_empty() {
                continue;
            }
            self.masked.push(v.to_owned());
            self.masked
                .push(base64::engine::general_purpose::STANDARD.encode(v));
            if v.contains('\n') {
                self.masked.extend(
                    v.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        // Longest first, so a value containing another is hidden whole.
        self.masked
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.masked.dedup();
    }

    fn hide(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in &self.masked {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }

    /// The dry run's text: the task, then each step with what it waits for,
    /// what it runs and every property that is not a default.
    pub fn display(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        self.hide(&out)
    }

    fn write_text(&self, o: &mut String) -> fmt::Result {
        writeln!(
            o,
            "task {} (version {}): {} step{}, step timeout {}s",
            self.origin,
            self.version.as_str(),
            self.steps.len(),
            if self.steps.len() == 1 { "" } else { "s" },
            self.step_timeout
        )?;
        if !self.env.is_empty() {
            writeln!(o, "env: {}", self.env.join(" "))?;
        }
        for s in &self.secrets {
            match &s.client_id {
                Some(c) => writeln!(o, "secret: {} (clientID {c} not needed)", s.id)?,
                None => writeln!(o, "secret: {}", s.id)?,
            }
        }
        for n in &self.networks {
            let mut notes = vec![
                n.driver
                    .clone()
                    .unwrap_or_else(|| "default driver".to_owned()),
            ];
            if n.is_default {
                notes.push("default".to_owned());
            }
            if n.ipv6 {
                notes.push("ipv6".to_owned());
            }
            if n.skip_creation {
                notes.push("not created".to_owned());
            }
            writeln!(o, "network: {} ({})", n.name, notes.join(", "))?;
        }
        for v in &self.volumes {
            let files: Vec<String> = v.files.keys().map(|f| format!("{f}={MASK}")).collect();
            writeln!(o, "volume: {} ({})", v.name, files.join(", "))?;
        }
        let max_level = self.steps.iter().map(|s| s.level).max();
        if let Some(max) = max_level {
            let levels: Vec<String> = (0..=max)
                .map(|l| {
                    let ids: Vec<&str> = self
                        .steps
                        .iter()
                        .filter(|s| s.level == l)
                        .map(|s| s.id.as_str())
                        .collect();
                    format!("[{}]", ids.join(", "))
                })
                .collect();
            writeln!(o, "order: {}", levels.join(" -> "))?;
        }
        for s in &self.steps {
            o.push('\n');
            write_step(o, s)?;
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

fn write_step(o: &mut String, s: &PlanStep) -> fmt::Result {
    writeln!(o, "step {} (line {})", s.id, s.line)?;
    if s.depends_on.is_empty() {
        writeln!(o, "  waits for: nothing")?;
    } else {
        writeln!(o, "  waits for: {}", s.depends_on.join(", "))?;
    }
    match &s.action {
        Action::Build(b) => {
            let mut parts = vec![format!("context {}", b.context)];
            if let Some(f) = &b.dockerfile {
                parts.push(format!("dockerfile {f}"));
            }
            if !b.tags.is_empty() {
                parts.push(format!("tags {}", b.tags.join(", ")));
            }
            for a in &b.build_args {
                match &a.value {
                    Some(v) => parts.push(format!("build-arg {}={v}", a.name)),
                    None => parts.push(format!("build-arg {} (from env)", a.name)),
                }
            }
            if let Some(t) = &b.target {
                parts.push(format!("target {t}"));
            }
            if let Some(p) = &b.platform {
                parts.push(format!("platform {p}"));
            }
            if b.no_cache {
                parts.push("no-cache".to_owned());
            }
            if b.pull {
                parts.push("pull".to_owned());
            }
            for sec in &b.secrets {
                let mut t = format!("secret id={}", sec.id);
                if let Some(src) = &sec.src {
                    let _ = write!(t, ",src={src}");
                }
                if let Some(env) = &sec.env {
                    let _ = write!(t, ",env={env}");
                }
                parts.push(t);
            }
            for l in &b.labels {
                parts.push(format!(
                    "label {}={}",
                    l.name,
                    l.value.as_deref().unwrap_or("")
                ));
            }
            for c in &b.cache_from {
                parts.push(format!("cache-from {c}"));
            }
            writeln!(o, "  build: {}", parts.join(" | "))?;
        }
        Action::Push { images } => writeln!(o, "  push: {}", images.join(", "))?,
        Action::Cmd { image, args } => {
            writeln!(o, "  image: {image}")?;
            if !args.is_empty() {
                writeln!(o, "  args: {}", shell_words::join(args))?;
            }
        }
    }
    let mut run = vec![
        format!("timeout {}s", s.timeout),
        format!("workdir {}", s.working_directory),
    ];
    if s.disable_working_directory_override {
        run.push("image's own workdir".to_owned());
    }
    if let Some(n) = &s.network {
        run.push(format!("network {n}"));
    }
    writeln!(o, "  run: {}", run.join(", "))?;
    if !s.env.is_empty() {
        writeln!(o, "  env: {}", s.env.join(" "))?;
    }
    if s.retries > 0 {
        let mut t = format!("  retries: {} after {}s", s.retries, s.retry_delay);
        if !s.retry_on_errors.is_empty() {
            let _ = write!(t, " on errors matching {}", s.retry_on_errors.join(" | "));
        }
        writeln!(o, "{t}")?;
    }
    if s.repeat > 0 {
        writeln!(o, "  repeat: {}", s.repeat)?;
    }
    if s.start_delay > 0 {
        writeln!(o, "  start delay: {}s", s.start_delay)?;
    }
    let flags: Vec<&str> = [
        (s.detach, "detach"),
        (s.keep, "keep"),
        (s.ignore_errors, "ignoreErrors"),
        (s.pull, "pull"),
        (s.privileged, "privileged"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    if !flags.is_empty() {
        writeln!(o, "  flags: {}", flags.join(", "))?;
    }
    if !s.exited_with.is_empty() {
        writeln!(
            o,
            "  succeeds when exit code is one of: {}",
            join_ints(&s.exited_with)
        )?;
    }
    if !s.exited_without.is_empty() {
        writeln!(
            o,
            "  succeeds when exit code is none of: {}",
            join_ints(&s.exited_without)
        )?;
    }
    let mut container = Vec::new();
    if let Some(e) = &s.entry_point {
        container.push(format!("entrypoint {e}"));
    }
    if let Some(u) = &s.user {
        container.push(format!("user {u}"));
    }
    if let Some(c) = &s.cpus {
        container.push(format!("cpus {c}"));
    }
    if !s.ports.is_empty() {
        container.push(format!("ports {}", s.ports.join(", ")));
    }
    if !s.expose.is_empty() {
        container.push(format!("expose {}", s.expose.join(", ")));
    }
    if let Some(c) = s.cache {
        container.push(match c {
            Cache::Enabled => "layer cache enabled".to_owned(),
            Cache::Disabled => "layer cache disabled".to_owned(),
        });
    }
    for m in &s.volume_mounts {
        container.push(format!("volume {} at {}", m.name, m.mount_path));
    }
    if s.pull_retries > 0 {
        container.push(format!(
            "image pull retries {} after {}s",
            s.pull_retries, s.pull_retry_delay
        ));
    }
    if !container.is_empty() {
        writeln!(o, "  container: {}", container.join(", "))?;
    }
    Ok(())
}

fn join_ints(v: &[i64]) -> String {
    v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

/// The serialized shape of a plan (before masking).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanRecord<'a> {
    origin: &'a str,
    version: Version,
    step_timeout: u64,
    env: &'a [String],
    secrets: &'a [PlanSecret],
    networks: &'a [Network],
    volumes: Vec<PlanVolume>,
    steps: &'a [PlanStep],
}

impl Serialize for Plan {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = PlanRecord {
            origin: &self.origin,
            version: self.version,
            step_timeout: self.step_timeout,
            env: &self.env,
            secrets: &self.secrets,
            networks: &self.networks,
            volumes: self
                .volumes
                .iter()
                .map(|v| PlanVolume {
                    name: v.name.clone(),
                    files: v
                        .files
                        .keys()
                        .map(|k| (k.clone(), MASK.to_owned()))
                        .collect(),
                })
                .collect(),
            steps: &self.steps,
        };
        // Through a JSON value, so every string can be masked on the way out.
        let mut value = serde_json::to_value(&record).map_err(serde::ser::Error::custom)?;
        self.hide_json(&mut value);
        value.serialize(serializer)
    }
}

impl Plan {
    fn hide_json(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = self.hide(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.hide_json(x)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|x| self.hide_json(x)),
            _ => {}
        }
    }
}
