//! Rendering a task file's text: comments, aliases (v1.1.0), then the Go
//! template with `.Run`, `.Values` and `.Secrets`, in acr-builder's order.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::alias;
use crate::error::{Error, ErrorKind, Location, Result};
use crate::file::{RawAlias, Version, from_yaml};
use crate::template::{self, TemplateError, Value, value::Value as V};

/// The run a task file is rendered for: `.Run.*` and the `$ID`… aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub id: String,
    /// The volume (on ACR) or directory shared by every step of the run.
    pub shared_volume: String,
    /// The registry's host name (with port), e.g. `slipway.internal:5000`.
    pub registry: String,
    /// When the run started; rendered as acr-builder does, `20060102-150405z`.
    pub date: SystemTime,
    pub os: String,
    pub architecture: String,
    pub commit: String,
    pub branch: String,
    pub repository: String,
    pub git_tag: String,
    pub triggered_by: String,
    pub os_version: String,
    pub task_name: String,
}

impl Default for RunInfo {
    fn default() -> Self {
        RunInfo {
            id: String::new(),
            shared_volume: String::new(),
            registry: String::new(),
            date: UNIX_EPOCH,
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            commit: String::new(),
            branch: String::new(),
            repository: String::new(),
            git_tag: String::new(),
            triggered_by: String::new(),
            os_version: String::new(),
            task_name: String::new(),
        }
    }
}

impl RunInfo {
    /// acr-builder's `RegistryName`: the registry host up to its first dot.
    pub fn registry_name(&self) -> &str {
        self.registry.split('.').next().unwrap_or("")
    }

    /// `.Run.Date`: UTC, `yyyyMMdd-HHmmss` and a `z`.
    pub fn date_text(&self) -> String {
        let secs = self
            .date
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}{m:02}{d:02}-{:02}{:02}{:02}z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm); avoids a date crate for one format.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Everything a task file is rendered with. The caller reads files and
/// flags; this crate only sees their text.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    pub run: RunInfo,
    /// `.Values`: from values texts and `--set` pairs, later wins.
    values: serde_json::Map<String, serde_json::Value>,
    /// `.Secrets`: the run's secrets by id (stored ones and `--set-secret`).
    pub secrets: BTreeMap<String, String>,
    /// Image aliases (`acr`, `az`, `bash`, `curl`, `purge`, `docker`, …) →
    /// the images the server is configured with: a private network reaches
    /// no public registry, so acr-builder's `mcr.microsoft.com` defaults
    /// are the server's to replace.
    pub image_aliases: BTreeMap<String, String>,
    /// The text of each `alias: src:` entry, keyed as the file names it
    /// (this crate fetches nothing).
    pub alias_sources: BTreeMap<String, String>,
    /// For a dry run, where no secret is read: a `.Secrets.x` with no value
    /// renders as `***` instead of failing.
    pub placeholder_secrets: bool,
}

impl RenderContext {
    pub fn new(run: RunInfo) -> Self {
        RenderContext {
            run,
            ..RenderContext::default()
        }
    }

    /// Merges a values file's text (a YAML mapping) into `.Values`; keys it
    /// shares with earlier values replace them, mappings merge key by key.
    pub fn add_values_yaml(&mut self, text: &str, origin: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let parsed: serde_json::Value = from_yaml(text, origin)?;
        match parsed {
            serde_json::Value::Object(map) => {
                merge(&mut self.values, map);
                Ok(())
            }
            serde_json::Value::Null => Ok(()),
            _ => Err(Error::new(
                Location::file(origin),
                ErrorKind::Values("a values file is a mapping of names to values".to_owned()),
            )),
        }
    }

    /// `--set K=V`. As acr-builder, `K` is one key (`a.b` is the key "a.b",
    /// read with `index .Values "a.b"`) and `V` is a string.
    pub fn set(&mut self, pair: &str) -> Result<()> {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            Error::new(
                Location::file("--set"),
                ErrorKind::Values(format!("{pair:?}: expected KEY=VALUE")),
            )
        })?;
        if key.is_empty() {
            return Err(Error::new(
                Location::file("--set"),
                ErrorKind::Values(format!("{pair:?}: the key is empty")),
            ));
        }
        self.values
            .insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
        Ok(())
    }

    /// `.Values` as merged so far.
    pub fn values(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.values
    }

    /// The built-in aliases (`$ID`, …): acr-builder's `{{.Run.*}}` table,
    /// already rendered.
    fn builtin_aliases(&self) -> BTreeMap<String, String> {
        let r = &self.run;
        [
            ("ID", r.id.clone()),
            ("SharedVolume", r.shared_volume.clone()),
            ("Registry", r.registry.clone()),
            ("RegistryName", r.registry_name().to_owned()),
            ("Date", r.date_text()),
            ("OS", r.os.clone()),
            ("Architecture", r.architecture.clone()),
            ("Commit", r.commit.clone()),
            ("Branch", r.branch.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn run_value(&self) -> BTreeMap<String, Value> {
        let r = &self.run;
        [
            ("ID", r.id.clone()),
            ("SharedVolume", r.shared_volume.clone()),
            ("Registry", r.registry.clone()),
            ("RegistryName", r.registry_name().to_owned()),
            ("Date", r.date_text()),
            ("OS", r.os.clone()),
            ("OSVersion", r.os_version.clone()),
            ("Architecture", r.architecture.clone()),
            ("Commit", r.commit.clone()),
            ("Repository", r.repository.clone()),
            ("Branch", r.branch.clone()),
            ("GitTag", r.git_tag.clone()),
            ("TriggeredBy", r.triggered_by.clone()),
            ("TaskName", r.task_name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), V::Str(v)))
        .collect()
    }

    /// The template's `.`: `Run`, `Build` (v1.0-preview-1's `.Build.ID`),
    /// `Values`, `Secrets`, `ValuesJSON`, `RunJSON`.
    fn root(&self, text: &str) -> Value {
        let run = self.run_value();
        let mut secrets: BTreeMap<String, Value> = self
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), V::Str(v.clone())))
            .collect();
        if self.placeholder_secrets {
            for name in secret_names(text) {
                secrets
                    .entry(name)
                    .or_insert_with(|| V::Str("***".to_owned()));
            }
        }
        let values = V::from_json(&serde_json::Value::Object(self.values.clone()));
        let run_json = V::Map(run.clone()).to_json().to_string();
        let values_json = serde_json::Value::Object(self.values.clone()).to_string();
        let mut root = BTreeMap::new();
        root.insert(
            "Build".to_owned(),
            V::Map(
                [("ID".to_owned(), V::Str(self.run.id.clone()))]
                    .into_iter()
                    .collect(),
            ),
        );
        root.insert("Run".to_owned(), V::Map(run));
        root.insert("Values".to_owned(), values);
        root.insert("Secrets".to_owned(), V::Map(secrets));
        root.insert("ValuesJSON".to_owned(), V::Str(shell_quote(&values_json)));
        root.insert("RunJSON".to_owned(), V::Str(shell_quote(&run_json)));
        V::Map(root)
    }
}

/// Deep merge, `src` winning (a mapping merges into a mapping).
fn merge(
    dst: &mut serde_json::Map<String, serde_json::Value>,
    src: serde_json::Map<String, serde_json::Value>,
) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(serde_json::Value::Object(d)), serde_json::Value::Object(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

/// Names used as `.Secrets.NAME` in the text (for placeholders).
fn secret_names(text: &str) -> Vec<String> {
    text.match_indices(".Secrets.")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// acr-builder's `shellQuote` for `ValuesJSON`/`RunJSON`.
fn shell_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_owned();
    }
    let plain = s
        .chars()
        .all(|c| c.is_alphanumeric() || "_^@=+%,:./-".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

/// acr-builder drops every line whose first non-blank is `#` before
/// rendering, so a commented-out `{{ … }}` is never evaluated. The lines are
/// blanked rather than removed, so errors keep the file's line numbers.
fn blank_comments(text: &str) -> String {
    text.split('\n')
        .map(|l| {
            if l.trim_start().starts_with('#') {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn template_error(e: TemplateError, origin: &str) -> Error {
    let at = Location::line(origin, e.line);
    match e.kind {
        template::TemplateErrorKind::Message(m) => Error::new(at, ErrorKind::Template(m)),
        template::TemplateErrorKind::Missing(name) => {
            let hint = missing_hint(&name);
            Error::new(at, ErrorKind::MissingValue { name, hint })
        }
    }
}

fn missing_hint(name: &str) -> String {
    let key = |prefix: &str| {
        name.strip_prefix(prefix)
            .map(|k| k.split('.').next().unwrap_or(k).to_owned())
    };
    if let Some(k) = key(".Values.") {
        format!(" (pass --set {k}=… or add {k} to the values file; or write `| default \"…\"`)")
    } else if let Some(k) = key(".Secrets.") {
        format!(
            " (store it with `slipway secret set {k} --value-stdin` and declare `secrets: - id: {k}`, or pass --set-secret {k}=…)"
        )
    } else if name.starts_with(".Run.") {
        " (.Run has ID, SharedVolume, Registry, RegistryName, Date, OS, OSVersion, Architecture, Commit, Repository, Branch, GitTag, TriggeredBy, TaskName)".to_owned()
    } else {
        String::new()
    }
}

/// Renders a task file's text for a run: comment lines out, v1.1.0 aliases
/// substituted, then the Go template. The result is YAML for `parse`, line
/// for line; for v1.1.0 the `alias:` block is blanked and a last line
/// `alias: {…}` holds the merged alias table, so a plan resolves `cmd:`
/// image aliases from the parsed file alone.
pub fn render(text: &str, origin: &str, ctx: &RenderContext) -> Result<String> {
    let text = blank_comments(text);
    let root = ctx.root(&text);
    let version = alias::find_version(&text).and_then(|v| Version::parse(&v));
    if version != Some(Version::V1_1_0) {
        // Aliases are v1.1.0's; in older files `$ID` stays as written, as on ACR.
        return template::render(&text, root).map_err(|e| template_error(e, origin));
    }

    let split = alias::split_alias_block(&text);
    let (rest, user) = match &split {
        None => (text.clone(), None),
        Some(s) => {
            let rendered =
                template::render(&s.alias, root.clone()).map_err(|e| template_error(e, origin))?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Wrapper {
                alias: Option<RawAlias>,
            }
            let w: Wrapper = from_yaml(&rendered, origin)?;
            (s.rest.clone(), w.alias)
        }
    };
    let at = || {
        Location::line(
            origin,
            split
                .as_ref()
                .map_or(0, |s| u32::try_from(s.line_index + 1).unwrap_or(0)),
        )
    };
    let invalid = |m: String| Error::new(at(), ErrorKind::Invalid(m));

    let directive = match user.as_ref().and_then(|a| a.directive.as_deref()) {
        None | Some("") => alias::DEFAULT_DIRECTIVE,
        Some(d) => {
            let mut chars = d.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None)
                    if !c.is_ascii_alphanumeric() && !c.is_whitespace() && c != '{' && c != '}' =>
                {
                    c
                }
                (Some(_), None) => {
                    return Err(invalid(format!(
                        "alias directive {d:?}: a directive is one character that is not a letter, digit, space or brace"
                    )));
                }
                _ => {
                    return Err(invalid(format!(
                        "alias directive {d:?}: a directive is a single character"
                    )));
                }
            }
        }
    };

    // Precedence as acr-builder: the file's values, then `src` (later first),
    // then the built-ins and image aliases.
    let mut table = ctx.builtin_aliases();
    table.extend(ctx.image_aliases.clone());
    if let Some(a) = &user {
        for src in a.src.iter().flatten() {
            let source = ctx.alias_sources.get(src).ok_or_else(|| {
                invalid(format!(
                    "alias src {src:?}: its text was not provided (the agent reads alias files from the context before rendering)"
                ))
            })?;
            let entries: BTreeMap<String, String> = from_yaml(source, src)?;
            table.extend(entries);
        }
        table.extend(a.values.clone().unwrap_or_default());
    }
    if let Some(bad) = table.keys().find(|k| !alias::valid_key(k)) {
        return Err(invalid(format!(
            "alias {bad:?}: alias names are letters and digits only"
        )));
    }

    // The block's lines stay blank; the merged table goes on a line of its
    // own after the rendered text, where nothing renders or substitutes it
    // again and no earlier line moves.
    let body = alias::substitute(&rest, directive, &table);
    let mut out = template::render(&body, root).map_err(|e| template_error(e, origin))?;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let alias_json = serde_json::json!({
        "directive": directive.to_string(),
        "values": table,
    });
    out.push_str("alias: ");
    out.push_str(&alias_json.to_string());
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_render_as_acr_builder_does() {
        let run = RunInfo {
            date: UNIX_EPOCH + Duration::from_secs(1_556_858_022),
            ..RunInfo::default()
        };
        assert_eq!(run.date_text(), "20190503-043342z");
        let leap = RunInfo {
            date: UNIX_EPOCH + Duration::from_secs(951_782_400),
            ..RunInfo::default()
        };
        assert_eq!(leap.date_text(), "20000229-000000z");
    }

    #[test]
    fn registry_name_is_the_first_label() {
        let run = RunInfo {
            registry: "myreg.azurecr.io".into(),
            ..RunInfo::default()
        };
        assert_eq!(run.registry_name(), "myreg");
    }

    #[test]
    fn set_pairs_and_values_merge_later_wins() {
        let mut ctx = RenderContext::default();
        ctx.add_values_yaml("a: 1\nm: {x: 1, y: 2}\n", "values.yaml")
            .unwrap();
        ctx.add_values_yaml("m: {y: 3}\n", "more.yaml").unwrap();
        ctx.set("a=two").unwrap();
        assert_eq!(ctx.values()["a"], "two");
        assert_eq!(ctx.values()["m"], serde_json::json!({"x": 1, "y": 3}));
        assert!(ctx.set("novalue").is_err());
    }

    #[test]
    fn comments_are_not_rendered_and_lines_are_kept() {
        let ctx = RenderContext::default();
        let out = render(
            "# {{ .Values.nope }}\na: {{ .Values.x | default \"1\" }}\n",
            "f",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "\na: 1\n");
        let e = render("# c\n\nb: {{ .Values.nope }}\n", "f", &ctx).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f:3: template names .Values.nope, which has no value"),
            "{e}"
        );
    }

    #[test]
    fn aliases_apply_to_v1_1_0_only() {
        let mut ctx = RenderContext::new(RunInfo {
            id: "r1".into(),
            ..RunInfo::default()
        });
        ctx.image_aliases.insert("bash".into(), "reg/bash:5".into());
        let old = render("version: v1.0.0\nx: $ID\n", "f", &ctx).unwrap();
        assert_eq!(old, "version: v1.0.0\nx: $ID\n");
        let new = render("version: v1.1.0\nx: $ID $bash $$ID\n", "f", &ctx).unwrap();
        assert!(
            new.starts_with("version: v1.1.0\nx: r1 reg/bash:5 $ID\nalias: {"),
            "{new}"
        );
    }

    #[test]
    fn alias_block_is_blanked_and_the_table_appended() {
        let mut ctx = RenderContext::new(RunInfo {
            id: "r1".into(),
            ..RunInfo::default()
        });
        ctx.set("img=app").unwrap();
        let text = "version: v1.1.0\nalias:\n  directive: '^'\n  values:\n    me: \"{{ .Values.img }}:^ID\"\nsteps:\n  - cmd: ^me\n";
        let out = render(text, "f", &ctx).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 8);
        assert_eq!(lines[1], "");
        // The value is substituted as rendered; `^ID` inside it is not rescanned.
        assert_eq!(lines[6], "  - cmd: app:^ID");
        assert!(
            lines[7].starts_with("alias: {\"directive\":\"^\",\"values\":{"),
            "{out}"
        );
    }

    #[test]
    fn placeholder_secrets_for_dry_runs() {
        let ctx = RenderContext {
            placeholder_secrets: true,
            ..RenderContext::default()
        };
        assert_eq!(
            render("a: {{ .Secrets.tok }}", "f", &ctx).unwrap(),
            "a: ***"
        );
    }
}
