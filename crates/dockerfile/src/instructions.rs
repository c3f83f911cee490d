//! AST → typed instructions grouped into stages, with every flag parsed and
//! validated; and [`Dockerfile::expand`], which applies build arguments and
//! variable expansion with Docker's ARG scoping.
//!
//! Lowering reports every error it finds (one per instruction) rather than
//! stopping at the first; positions point at the instruction, or at the
//! flag that is wrong.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Pos, suggest};
use crate::expand::{Env, Lexer};
use crate::parser::{self, Args, Ast, Directive, KeyValue, Node, Warning};

/// Every instruction name BuildKit knows.
pub const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Arguments that are defined without an `ARG` line.
pub const PLATFORM_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// Proxy arguments: passed to RUN's environment when given as build
/// arguments even without an `ARG` line, and kept out of the image history.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A parsed Dockerfile: directives, global `ARG`s and stages.
#[derive(Debug, Clone, Serialize)]
pub struct Dockerfile {
    pub directives: Vec<Directive>,
    pub escape: char,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckDirective>,
    /// `ARG` lines before the first `FROM`.
    pub global_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// `# check=skip=RuleA,RuleB;error=true`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct CheckDirective {
    /// Rule names to skip; `all` skips every rule.
    pub skip: Vec<String>,
    /// Turn warnings into errors.
    pub error: bool,
}

/// One `FROM` and the instructions that follow it.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub index: usize,
    /// The `AS` name, lower-cased.
    pub name: Option<String>,
    /// The image or stage this stage starts from.
    pub base: String,
    pub platform: Option<String>,
    pub pos: Pos,
    pub instructions: Vec<Instruction>,
}

/// An instruction and where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Instruction {
    pub line: u32,
    pub col: u32,
    pub end_line: u32,
    #[serde(flatten)]
    pub command: Command,
    #[serde(skip)]
    pub args_pos: Pos,
}

impl Instruction {
    pub fn pos(&self) -> Pos {
        Pos::new(self.line, self.col)
    }
}

/// The typed instructions.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "instruction", rename_all = "UPPERCASE")]
pub enum Command {
    Run(Run),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Shell { shell: Vec<String> },
    Env { vars: Vec<KeyValue> },
    Label { labels: Vec<KeyValue> },
    Expose { ports: Vec<String> },
    Add(Add),
    Copy(Copy),
    Volume { paths: Vec<String> },
    User { user: String },
    Workdir { path: String },
    Arg { args: Vec<ArgDef> },
    Onbuild { trigger: String, expression: String },
    Stopsignal { signal: String },
    Healthcheck(Healthcheck),
    Maintainer { name: String },
}

/// A command line: exec form (JSON) or shell form.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CommandLine {
    pub args: Vec<String>,
    /// Shell form: run through the stage's `SHELL`.
    pub shell_form: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<InlineFile>,
}

/// A heredoc body used as a file or script.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InlineFile {
    pub name: String,
    /// The body, leading tabs already removed for `<<-`.
    pub content: String,
    /// Variables in the body are expanded (unquoted delimiter).
    pub expand: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<u32>,
}

/// `RUN`.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityMode>,
    #[serde(flatten)]
    pub command: CommandLine,
}

/// Declares a closed set of flag values: an enum written in lowercase
/// (as the Dockerfile and the snapshots spell it), its parse from the
/// exact word, and its text.
macro_rules! flag_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// The value as a Dockerfile writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value for `word` (exact, lowercase), if it is one.
            pub fn parse(word: &str) -> Option<$name> {
                match word {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

flag_values! {
    /// `RUN --network=…`.
    NetworkMode {
        Default = "default",
        /// No network but loopback.
        None = "none",
        Host = "host",
    }
}

flag_values! {
    /// `RUN --security=…`.
    SecurityMode {
        Sandbox = "sandbox",
        /// Every capability, no seccomp filter (BuildKit's entitlement).
        Insecure = "insecure",
    }
}

flag_values! {
    /// `RUN --mount=type=…`.
    MountKind {
        Bind = "bind",
        Cache = "cache",
        Tmpfs = "tmpfs",
        Secret = "secret",
        Ssh = "ssh",
    }
}

flag_values! {
    /// `RUN --mount=type=cache,sharing=…`.
    CacheSharing {
        Shared = "shared",
        Private = "private",
        Locked = "locked",
    }
}

/// `RUN --mount=…`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mount {
    /// Meaningful once expanded: before, a `type=` holding a variable is
    /// in `unexpanded_kind` and this is the default.
    #[serde(rename = "type")]
    pub kind: MountKind,
    /// A `type=` value holding a variable, as written: the kind is only
    /// known (and the mount only checked) after [`Dockerfile::expand`],
    /// as BuildKit does. `None` in an expanded Dockerfile.
    #[serde(rename = "type_unexpanded", skip_serializing_if = "Option::is_none")]
    pub unexpanded_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub readonly: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharing: Option<CacheSharing>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The flag value as written, re-parsed after expansion.
    #[serde(skip)]
    pub raw: String,
    #[serde(skip)]
    pub pos: Pos,
}

impl Mount {
    /// `required` applies to secret and ssh mounts only (a kind still to
    /// be expanded is neither yet).
    fn takes_required(&self) -> bool {
        self.unexpanded_kind.is_none() && matches!(self.kind, MountKind::Secret | MountKind::Ssh)
    }

    /// The kind for a message: as written while it holds a variable.
    fn kind_as_written(&self) -> &str {
        self.unexpanded_kind
            .as_deref()
            .unwrap_or(self.kind.as_str())
    }
}

/// `ADD`.
#[derive(Debug, Clone, Serialize)]
pub struct Add {
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<InlineFile>,
    pub dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_git_dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
}

/// `COPY`.
#[derive(Debug, Clone, Serialize)]
pub struct Copy {
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<InlineFile>,
    pub dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
}

/// `ARG name[=default]`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ArgDef {
    pub name: String,
    pub default: Option<String>,
}

/// `HEALTHCHECK`: `test` starts with `NONE`, `CMD` or `CMD-SHELL`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

// ---------------------------------------------------------------- flags

#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    Bool,
    String,
    Strings,
}

/// Parsed flag values, in the order written (few per instruction, so a
/// vector beats a map).
#[derive(Default)]
struct Flags {
    values: Vec<(&'static str, String, Pos)>,
}

impl Flags {
    fn string(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(n, _, _)| *n == name)
            .map(|(_, s, _)| s.clone())
    }
    fn bool(&self, name: &str) -> Option<bool> {
        self.values
            .iter()
            .rev()
            .find(|(n, _, _)| *n == name)
            .map(|(_, s, _)| s == "true")
    }
    fn strings(&self, name: &str) -> Vec<(String, Pos)> {
        self.values
            .iter()
            .filter(|(n, _, _)| *n == name)
            .map(|(_, s, p)| (s.clone(), *p))
            .collect()
    }
}

fn parse_flags(
    node: &Node,
    instruction: &str,
    specs: &[(&'static str, FlagKind)],
) -> Result<Flags, Error> {
    let mut flags = Flags::default();
    for flag in &node.flags {
        if flag.text == "--" {
            break;
        }
        let body = flag.text.strip_prefix("--").unwrap_or(&flag.text);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(&(spec_name, kind)) = specs.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = specs.iter().map(|(n, _)| *n).collect();
            return Err(Error::new(
                flag.pos,
                ErrorKind::UnknownFlag {
                    instruction: instruction.to_string(),
                    flag: name.to_string(),
                    suggestion: suggest(name, &names).map(|s| format!("--{s}")),
                },
            ));
        };
        if kind != FlagKind::Strings && flags.values.iter().any(|(n, _, _)| *n == spec_name) {
            return Err(Error::new(
                flag.pos,
                ErrorKind::DuplicateFlag(name.to_string()),
            ));
        }
        let value = match kind {
            FlagKind::Bool => match value {
                Some("") => {
                    return Err(Error::new(
                        flag.pos,
                        ErrorKind::FlagMissingValue(name.to_string()),
                    ));
                }
                None => "true".to_string(),
                Some(v) if v.eq_ignore_ascii_case("true") => "true".to_string(),
                Some(v) if v.eq_ignore_ascii_case("false") => "false".to_string(),
                Some(v) => {
                    return Err(Error::new(
                        flag.pos,
                        ErrorKind::FlagNotBool {
                            flag: name.to_string(),
                            value: v.to_string(),
                        },
                    ));
                }
            },
            FlagKind::String | FlagKind::Strings => match value {
                Some(v) => v.to_string(),
                None => {
                    return Err(Error::new(
                        flag.pos,
                        ErrorKind::FlagMissingValue(name.to_string()),
                    ));
                }
            },
        };
        flags.values.push((spec_name, value, flag.pos));
    }
    Ok(flags)
}

// ---------------------------------------------------------------- lowering

/// Lowers an AST into stages. Returns every error found.
pub fn lower(ast: Ast) -> Result<Dockerfile, Vec<Error>> {
    let mut errors = Vec::new();
    let mut df = Dockerfile {
        directives: ast.directives,
        escape: ast.escape,
        check: None,
        global_args: Vec::new(),
        stages: Vec::new(),
        warnings: ast.warnings,
    };
    for d in &df.directives {
        if d.name == "check" {
            match parse_check(&d.value) {
                Ok(c) => df.check = Some(c),
                Err(msg) => errors.push(Error::new(
                    Pos::new(d.line, 1),
                    ErrorKind::InvalidCheck(msg),
                )),
            }
        }
    }
    for mut node in ast.nodes {
        if node.keyword.eq_ignore_ascii_case("from") {
            match lower_from(&mut node, df.stages.len()) {
                Ok(stage) => {
                    if let Some(n) = &stage.name
                        && df.stages.iter().any(|s| s.name.as_ref() == Some(n))
                    {
                        errors.push(Error::new(
                            node.pos,
                            ErrorKind::DuplicateStageName(n.clone()),
                        ));
                    }
                    df.stages.push(stage);
                }
                Err(e) => {
                    errors.push(e);
                    // Keep the following instructions attached to a stage so
                    // that their own errors are still reported.
                    df.stages.push(Stage {
                        index: df.stages.len(),
                        name: None,
                        base: String::new(),
                        platform: None,
                        pos: node.pos,
                        instructions: Vec::new(),
                    });
                }
            }
            continue;
        }
        let ins = match lower_instruction(&mut node) {
            Ok(i) => i,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match df.stages.last_mut() {
            Some(stage) => stage.instructions.push(ins),
            None if matches!(ins.command, Command::Arg { .. }) => df.global_args.push(ins),
            None => errors.push(Error::new(
                node.pos,
                ErrorKind::NoBuildStage(node.keyword.to_ascii_uppercase()),
            )),
        }
    }
    if errors.is_empty() {
        Ok(df)
    } else {
        Err(errors)
    }
}

fn parse_check(value: &str) -> Result<CheckDirective, String> {
    let mut check = CheckDirective::default();
    for part in value.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("\"{part}\" is not key=value"));
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "skip" => {
                check.skip = v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
            }
            "error" => {
                check.error = match v.trim().to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("error must be true or false, not \"{v}\"")),
                };
            }
            other => return Err(format!("unknown key \"{other}\" (expected skip or error)")),
        }
    }
    Ok(check)
}

fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn lower_from(node: &mut Node, index: usize) -> Result<Stage, Error> {
    let words = match &mut node.args {
        Args::Words(w) => std::mem::take(w),
        _ => Vec::new(),
    };
    let args = words.as_slice();
    let name = match args {
        [_] => None,
        [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let lower = name.to_ascii_lowercase();
            if !is_valid_stage_name(&lower) {
                return Err(Error::new(
                    node.args_pos,
                    ErrorKind::InvalidStageName(name.clone()),
                ));
            }
            Some(lower)
        }
        _ => return Err(Error::new(node.pos, ErrorKind::FromArguments)),
    };
    let flags = parse_flags(node, "FROM", &[("platform", FlagKind::String)])?;
    Ok(Stage {
        index,
        name,
        base: args[0].clone(),
        platform: flags.string("platform"),
        pos: node.pos,
        instructions: Vec::new(),
    })
}

fn words_of(args: &mut Args) -> Vec<String> {
    match args {
        Args::Words(w) | Args::Json(w) => std::mem::take(w),
        Args::Text(t) => vec![std::mem::take(t)],
        _ => Vec::new(),
    }
}

fn command_line(node: &mut Node) -> CommandLine {
    let (args, shell_form) = match &mut node.args {
        Args::Json(v) => (std::mem::take(v), false),
        Args::Text(t) => (vec![std::mem::take(t)], true),
        _ => (Vec::new(), true),
    };
    CommandLine {
        args,
        shell_form,
        heredocs: node.heredocs.iter().map(inline_file).collect(),
    }
}

fn inline_file(h: &parser::Heredoc) -> InlineFile {
    InlineFile {
        name: h.name.clone(),
        content: if h.chomp {
            parser::chomp_tabs(&h.content)
        } else {
            h.content.clone()
        },
        expand: h.expand,
        fd: h.fd,
    }
}

fn no_flags(node: &Node, instruction: &str) -> Result<(), Error> {
    parse_flags(node, instruction, &[]).map(|_| ())
}

/// Sources (files and heredocs) and the destination of `ADD`/`COPY`.
fn sources_and_dest(
    node: &mut Node,
    instruction: &str,
) -> Result<(Vec<String>, Vec<InlineFile>, String), Error> {
    let json = matches!(node.args, Args::Json(_));
    let words = words_of(&mut node.args);
    if words.len() < 2 {
        return Err(Error::new(
            node.pos,
            ErrorKind::NoDestination(instruction.to_string()),
        ));
    }
    let (srcs, dest) = words.split_at(words.len() - 1);
    let dest = dest[0].clone();
    if !json && parser::parse_heredoc_ref(&dest).is_some() {
        return Err(Error::new(
            node.args_pos,
            ErrorKind::BadHeredoc {
                instruction: instruction.to_string(),
                what: "a destination".to_string(),
            },
        ));
    }
    let mut sources = Vec::new();
    let mut inline = Vec::new();
    for src in srcs {
        match parser::parse_heredoc_ref(src).filter(|_| !json) {
            Some(h) => {
                let doc = node.heredocs.iter().find(|d| d.name == h.name);
                let content = doc.map(|d| d.content.clone()).unwrap_or_default();
                inline.push(InlineFile {
                    name: h.name,
                    content: if h.chomp {
                        parser::chomp_tabs(&content)
                    } else {
                        content
                    },
                    expand: h.expand,
                    fd: None,
                });
            }
            None => sources.push(src.clone()),
        }
    }
    Ok((sources, inline, dest))
}

fn lower_instruction(node: &mut Node) -> Result<Instruction, Error> {
    let kw: &str = INSTRUCTIONS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(&node.keyword))
        .copied()
        .unwrap_or("");
    let pos = node.pos;
    let at_least_one = || Error::new(pos, ErrorKind::AtLeastOneArgument(kw.to_string()));
    let exactly_one = || Error::new(pos, ErrorKind::ExactlyOneArgument(kw.to_string()));
    let text = |node: &mut Node| match &mut node.args {
        Args::Text(t) => Some(std::mem::take(t)),
        _ => None,
    };
    let command = match kw {
        "RUN" => {
            let flags = parse_flags(
                node,
                "RUN",
                &[
                    ("mount", FlagKind::Strings),
                    ("network", FlagKind::String),
                    ("security", FlagKind::String),
                ],
            )?;
            let mut mounts = Vec::new();
            for (raw, pos) in flags.strings("mount") {
                mounts.push(parse_mount(&raw, pos, None)?);
            }
            let network = match flags.string("network") {
                None => None,
                Some(n) => Some(NetworkMode::parse(&n).ok_or_else(|| {
                    Error::new(flag_pos(node, "network"), ErrorKind::InvalidNetwork(n))
                })?),
            };
            let security = match flags.string("security") {
                None => None,
                Some(v) => Some(SecurityMode::parse(&v).ok_or_else(|| {
                    Error::new(flag_pos(node, "security"), ErrorKind::InvalidSecurity(v))
                })?),
            };
            Command::Run(Run {
                mounts,
                network,
                security,
                command: command_line(node),
            })
        }
        "CMD" | "ENTRYPOINT" => {
            no_flags(node, kw)?;
            let cl = command_line(node);
            if kw == "CMD" {
                Command::Cmd(cl)
            } else {
                Command::Entrypoint(cl)
            }
        }
        "SHELL" => {
            no_flags(node, kw)?;
            match &mut node.args {
                Args::Json(v) if !v.is_empty() => Command::Shell {
                    shell: std::mem::take(v),
                },
                Args::Json(_) | Args::Empty => return Err(at_least_one()),
                _ => {
                    return Err(Error::new(
                        node.args_pos,
                        ErrorKind::NotJson(kw.to_string()),
                    ));
                }
            }
        }
        "ENV" | "LABEL" => {
            no_flags(node, kw)?;
            let kvs = match &mut node.args {
                Args::KeyValues(k) => std::mem::take(k),
                _ => return Err(at_least_one()),
            };
            if kvs.iter().any(|kv| kv.key.is_empty()) {
                return Err(Error::new(
                    node.args_pos,
                    ErrorKind::BlankName(kw.to_string()),
                ));
            }
            if kw == "ENV" {
                Command::Env { vars: kvs }
            } else {
                Command::Label { labels: kvs }
            }
        }
        "EXPOSE" => {
            no_flags(node, kw)?;
            let mut ports = words_of(&mut node.args);
            if ports.is_empty() {
                return Err(at_least_one());
            }
            ports.sort();
            Command::Expose { ports }
        }
        "ADD" => {
            let flags = parse_flags(
                node,
                "ADD",
                &[
                    ("chown", FlagKind::String),
                    ("chmod", FlagKind::String),
                    ("link", FlagKind::Bool),
                    ("keep-git-dir", FlagKind::Bool),
                    ("checksum", FlagKind::String),
                    ("unpack", FlagKind::Bool),
                    ("exclude", FlagKind::Strings),
                ],
            )?;
            let (sources, inline, dest) = sources_and_dest(node, "ADD")?;
            Command::Add(Add {
                sources,
                inline,
                dest,
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.bool("link").unwrap_or(false),
                checksum: flags.string("checksum"),
                keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
                unpack: flags.bool("unpack"),
                excludes: flags
                    .strings("exclude")
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
            })
        }
        "COPY" => {
            let flags = parse_flags(
                node,
                "COPY",
                &[
                    ("chown", FlagKind::String),
                    ("from", FlagKind::String),
                    ("chmod", FlagKind::String),
                    ("link", FlagKind::Bool),
                    ("parents", FlagKind::Bool),
                    ("exclude", FlagKind::Strings),
                ],
            )?;
            let (sources, inline, dest) = sources_and_dest(node, "COPY")?;
            Command::Copy(Copy {
                sources,
                inline,
                dest,
                from: flags.string("from"),
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.bool("link").unwrap_or(false),
                parents: flags.bool("parents").unwrap_or(false),
                excludes: flags
                    .strings("exclude")
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
            })
        }
        "VOLUME" => {
            no_flags(node, kw)?;
            let paths = words_of(&mut node.args);
            if paths.is_empty() {
                return Err(at_least_one());
            }
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err(Error::new(node.args_pos, ErrorKind::EmptyVolume));
            }
            Command::Volume { paths }
        }
        "USER" | "WORKDIR" | "STOPSIGNAL" | "MAINTAINER" => {
            no_flags(node, kw)?;
            let Some(t) = text(node) else {
                return Err(exactly_one());
            };
            match kw {
                "USER" => Command::User { user: t },
                "WORKDIR" => Command::Workdir { path: t },
                "STOPSIGNAL" => Command::Stopsignal { signal: t },
                _ => Command::Maintainer { name: t },
            }
        }
        "ARG" => {
            // BuildKit does not parse flags on ARG: they are ignored.
            let words = words_of(&mut node.args);
            if words.is_empty() {
                return Err(at_least_one());
            }
            let mut args = Vec::with_capacity(words.len());
            for w in words {
                let def = match w.split_once('=') {
                    Some(("", _)) => {
                        return Err(Error::new(
                            node.args_pos,
                            ErrorKind::BlankName(kw.to_string()),
                        ));
                    }
                    Some((k, v)) => ArgDef {
                        name: k.to_string(),
                        default: Some(v.to_string()),
                    },
                    None => ArgDef {
                        name: w,
                        default: None,
                    },
                };
                args.push(def);
            }
            Command::Arg { args }
        }
        "ONBUILD" => {
            let Args::Sub(sub) = &node.args else {
                return Err(at_least_one());
            };
            no_flags(node, kw)?;
            let trigger = sub.keyword.to_ascii_uppercase();
            match trigger.as_str() {
                "ONBUILD" => return Err(Error::new(sub.pos, ErrorKind::OnbuildChain)),
                "MAINTAINER" | "FROM" => {
                    return Err(Error::new(sub.pos, ErrorKind::OnbuildTrigger(trigger)));
                }
                _ => {}
            }
            let mut expression = sub.original.clone();
            for h in &node.heredocs {
                expression.push('\n');
                expression.push_str(&h.content);
                expression.push_str(&h.name);
            }
            Command::Onbuild {
                trigger,
                expression,
            }
        }
        "HEALTHCHECK" => Command::Healthcheck(lower_healthcheck(node)?),
        "FROM" => return Err(Error::new(node.pos, ErrorKind::FromArguments)),
        _ => {
            return Err(Error::new(
                node.pos,
                ErrorKind::UnknownInstruction {
                    name: node.keyword.clone(),
                    suggestion: suggest(&node.keyword, INSTRUCTIONS).map(str::to_string),
                },
            ));
        }
    };
    Ok(Instruction {
        line: node.pos.line,
        col: node.pos.col,
        end_line: node.end_line,
        command,
        args_pos: node.args_pos,
    })
}

fn flag_pos(node: &Node, name: &str) -> Pos {
    let prefix = format!("--{name}");
    node.flags
        .iter()
        .rev()
        .find(|f| f.text == prefix || f.text.starts_with(&format!("{prefix}=")))
        .map_or(node.pos, |f| f.pos)
}

fn lower_healthcheck(node: &Node) -> Result<Healthcheck, Error> {
    let Args::Healthcheck { kind, cmd } = &node.args else {
        return Err(Error::new(
            node.pos,
            ErrorKind::AtLeastOneArgument("HEALTHCHECK".into()),
        ));
    };
    let typ = kind.to_ascii_uppercase();
    if typ == "NONE" {
        if !matches!(**cmd, Args::Empty) {
            return Err(Error::new(node.args_pos, ErrorKind::HealthcheckNoneArgs));
        }
        return Ok(Healthcheck {
            test: vec![typ],
            interval_ns: None,
            timeout_ns: None,
            start_period_ns: None,
            start_interval_ns: None,
            retries: None,
        });
    }
    let flags = parse_flags(
        node,
        "HEALTHCHECK",
        &[
            ("interval", FlagKind::String),
            ("timeout", FlagKind::String),
            ("start-period", FlagKind::String),
            ("start-interval", FlagKind::String),
            ("retries", FlagKind::String),
        ],
    )?;
    if typ != "CMD" {
        return Err(Error::new(
            node.args_pos,
            ErrorKind::HealthcheckType(kind.clone()),
        ));
    }
    let mut test = vec![];
    match &**cmd {
        Args::Json(v) if !v.is_empty() => {
            test.push("CMD".to_string());
            test.extend(v.iter().cloned());
        }
        Args::Text(t) => {
            test.push("CMD-SHELL".to_string());
            test.push(t.clone());
        }
        _ => return Err(Error::new(node.args_pos, ErrorKind::HealthcheckMissingCmd)),
    }
    let duration = |name: &str| -> Result<Option<u64>, Error> {
        let Some(v) = flags.string(name) else {
            return Ok(None);
        };
        let pos = flag_pos(node, name);
        if v.is_empty() {
            return Ok(None);
        }
        let ns = parse_go_duration(&v).ok_or_else(|| {
            Error::new(
                pos,
                ErrorKind::InvalidDuration {
                    flag: name.to_string(),
                    value: v.clone(),
                },
            )
        })?;
        if ns < 0 {
            return Err(Error::new(
                pos,
                ErrorKind::DurationNegative(name.to_string()),
            ));
        }
        if ns != 0 && ns < 1_000_000 {
            return Err(Error::new(
                pos,
                ErrorKind::DurationTooShort(name.to_string()),
            ));
        }
        Ok(Some(ns as u64))
    };
    let retries = match flags.string("retries").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => {
            let pos = flag_pos(node, "retries");
            let n: i64 = v
                .parse()
                .ok()
                .filter(|n: &i64| i32::try_from(*n).is_ok())
                .ok_or_else(|| Error::new(pos, ErrorKind::InvalidRetries(v.clone())))?;
            if n < 0 {
                return Err(Error::new(pos, ErrorKind::NegativeRetries(n)));
            }
            Some(n as u32)
        }
    };
    Ok(Healthcheck {
        test,
        interval_ns: duration("interval")?,
        timeout_ns: duration("timeout")?,
        start_period_ns: duration("start-period")?,
        start_interval_ns: duration("start-interval")?,
        retries,
    })
}

/// Parses a Go duration (`1h2m3.5s`, `300ms`, `-1s`) into nanoseconds.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * unit;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    let ns = total as i64;
    Some(if neg { -ns } else { ns })
}

/// Expands one word for `--mount` values.
type Expander<'a> = &'a dyn Fn(&str) -> Result<String, Error>;
/// Looks up a variable.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses a `--mount` value. With an expander, every value is expanded
/// and checked; without one, values holding variables are kept as written
/// and checked after expansion (as BuildKit does).
fn parse_mount(raw: &str, pos: Pos, expander: Option<Expander<'_>>) -> Result<Mount, Error> {
    let err = |msg: String| Error::new(pos, ErrorKind::Mount(msg));
    let fields = csv_fields(raw).map_err(|m| err(format!("failed to parse csv mounts: {m}")))?;
    let mut m = Mount {
        kind: MountKind::Bind,
        unexpanded_kind: None,
        from: None,
        source: None,
        target: None,
        readonly: false,
        id: None,
        sharing: None,
        required: false,
        size: None,
        mode: None,
        uid: None,
        gid: None,
        env: None,
        raw: raw.to_string(),
        pos,
    };
    let mut ro_auto = true;
    let mut deferred_type = false;
    let parse_bool = |key: &str, v: &str| -> Result<bool, Error> {
        match v.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(true),
            "0" | "f" | "false" => Ok(false),
            _ => Err(err(format!("invalid value for {key}: {v}"))),
        }
    };
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(mut value) = value else {
            match key.as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" => {
                    if m.takes_required() {
                        m.required = true;
                    } else {
                        return Err(err(format!(
                            "unexpected key '{key}' for mount type '{}'",
                            m.kind_as_written()
                        )));
                    }
                }
                _ => {
                    return Err(err(format!(
                        "invalid field '{field}' must be a key=value pair"
                    )));
                }
            }
            continue;
        };
        let mut deferred = false;
        match expander {
            Some(exp) => value = exp(&value)?,
            None => {
                if key == "from"
                    && let Some(i) = value.find('$')
                    && i != value.len() - 1
                {
                    return Err(Error::new(pos, ErrorKind::FromVariable));
                }
                deferred = value.contains('$');
            }
        }
        match key.as_str() {
            "type" => {
                if deferred {
                    deferred_type = true;
                    m.unexpanded_kind = Some(value);
                    continue;
                }
                m.kind = MountKind::parse(&value.to_ascii_lowercase()).ok_or_else(|| {
                    err(format!(
                        "unsupported mount type \"{value}\" (expected bind, cache, tmpfs, secret or ssh)"
                    ))
                })?;
                m.unexpanded_kind = None;
            }
            "from" => m.from = Some(value),
            "source" | "src" => m.source = Some(value),
            "target" | "dst" | "destination" => m.target = Some(value),
            "id" => m.id = Some(value),
            "env" => m.env = Some(value),
            _ if deferred => {}
            "readonly" | "ro" => {
                m.readonly = parse_bool(&key, &value)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&key, &value)?;
                ro_auto = false;
            }
            "required" => {
                if m.takes_required() {
                    m.required = parse_bool(&key, &value)?;
                } else {
                    return Err(err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.kind_as_written()
                    )));
                }
            }
            "size" => {
                if m.kind == MountKind::Tmpfs && m.unexpanded_kind.is_none() {
                    m.size = Some(
                        parse_ram_bytes(&value)
                            .ok_or_else(|| err(format!("invalid value for size: {value}")))?,
                    );
                } else {
                    return Err(err(format!(
                        "unexpected key 'size' for mount type '{}'",
                        m.kind_as_written()
                    )));
                }
            }
            "sharing" => {
                m.sharing = Some(
                    CacheSharing::parse(&value.to_ascii_lowercase()).ok_or_else(|| {
                        err(format!(
                            "unsupported sharing value \"{value}\" (expected shared, private or locked)"
                        ))
                    })?,
                );
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(&value, 8)
                        .map_err(|_| err(format!("invalid value {value} for mode")))?,
                );
            }
            "uid" => {
                m.uid = Some(
                    value
                        .parse()
                        .map_err(|_| err(format!("invalid value {value} for uid")))?,
                )
            }
            "gid" => {
                m.gid = Some(
                    value
                        .parse()
                        .map_err(|_| err(format!("invalid value {value} for gid")))?,
                )
            }
            _ => {
                const KEYS: &[&str] = &[
                    "type",
                    "from",
                    "source",
                    "target",
                    "readonly",
                    "id",
                    "sharing",
                    "required",
                    "size",
                    "mode",
                    "uid",
                    "gid",
                    "src",
                    "dst",
                    "destination",
                    "ro",
                    "rw",
                    "readwrite",
                    "env",
                ];
                let hint = suggest(&key, KEYS)
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                return Err(err(format!("unexpected key '{key}' in '{field}'{hint}")));
            }
        }
    }
    if deferred_type {
        return Ok(m);
    }
    let file_info = matches!(
        m.kind,
        MountKind::Secret | MountKind::Ssh | MountKind::Cache
    );
    if !file_info {
        for (name, set) in [
            ("mode", m.mode.is_some()),
            ("uid", m.uid.is_some()),
            ("gid", m.gid.is_some()),
        ] {
            if set {
                return Err(err(format!(
                    "{name} not allowed for \"{}\" type mounts",
                    m.kind
                )));
            }
        }
    }
    if ro_auto {
        m.readonly = !matches!(m.kind, MountKind::Cache | MountKind::Tmpfs);
    }
    if m.kind == MountKind::Secret {
        if m.from.is_some() {
            return Err(err("secret mount should not have a from".into()));
        }
        if m.sharing.is_some() {
            return Err(err("secret mount should not define sharing".into()));
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() && m.env.is_none() {
            return Err(err(
                "invalid secret mount. one of source, target required".into()
            ));
        }
        if m.source.is_some() && m.id.is_some() {
            return Err(err("both source and id can't be set".into()));
        }
    }
    if m.sharing.is_some() && m.kind != MountKind::Cache {
        return Err(err(format!(
            "invalid cache sharing set for {} mount",
            m.kind
        )));
    }
    Ok(m)
}

/// Splits a CSV record (RFC 4180 quoting) into fields.
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = s.chars().peekable();
    let mut at_start = true;
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            '"' if at_start => in_quotes = true,
            '"' => return Err(format!("bare \" in non-quoted field \"{field}\"")),
            _ => field.push(c),
        }
        at_start = false;
    }
    if in_quotes {
        return Err("extraneous or missing \" in quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

/// `64m`, `1.5GiB`, `1024` → bytes (binary multiples, like docker/go-units).
fn parse_ram_bytes(s: &str) -> Option<u64> {
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let num: f64 = s[..num_len].parse().ok()?;
    let unit = s[num_len..].trim_start_matches(' ').to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    let v = num * mult;
    (v.is_finite() && v < u64::MAX as f64).then_some(v as u64)
}

// ---------------------------------------------------------------- expansion

/// An `os/arch[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: String,
}

impl Platform {
    /// Parses `linux/amd64`, `linux/arm64/v8` …
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?.to_ascii_lowercase();
        let arch = parts.next().filter(|p| !p.is_empty())?.to_ascii_lowercase();
        let variant = parts.next().unwrap_or_default().to_ascii_lowercase();
        if parts.next().is_some() {
            return None;
        }
        Some(Platform { os, arch, variant })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// What a build supplies: `--build-arg`s and platforms.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub build_args: BTreeMap<String, String>,
    pub build_platform: Platform,
    pub target_platform: Platform,
    /// The environment of each stage's base image (stage index → its
    /// `Env`), when the caller has it: expansion then sees it as Docker
    /// does (`ENV PATH=$PATH:/x` keeps the base image's `PATH`).
    pub base_env: BTreeMap<usize, BTreeMap<String, String>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        let p = Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: String::new(),
        };
        BuildOptions {
            build_args: BTreeMap::new(),
            build_platform: p.clone(),
            target_platform: p,
            base_env: BTreeMap::new(),
        }
    }
}

impl BuildOptions {
    /// The automatic platform arguments (`TARGETARCH` …).
    pub fn platform_args(&self) -> BTreeMap<String, String> {
        let b = &self.build_platform;
        let t = &self.target_platform;
        [
            ("BUILDPLATFORM", b.to_string()),
            ("BUILDOS", b.os.clone()),
            ("BUILDARCH", b.arch.clone()),
            ("BUILDVARIANT", b.variant.clone()),
            ("TARGETPLATFORM", t.to_string()),
            ("TARGETOS", t.os.clone()),
            ("TARGETARCH", t.arch.clone()),
            ("TARGETVARIANT", t.variant.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Variables visible to an instruction: `ENV` shadows `ARG`.
struct Scope<'a> {
    env: &'a BTreeMap<String, String>,
    args: &'a BTreeMap<String, String>,
}

impl Env for Scope<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .or_else(|| self.args.get(name))
            .map(String::as_str)
    }
}

impl Dockerfile {
    /// Applies build arguments and expands variables in every instruction
    /// that Docker expands (FROM, ENV, LABEL, ARG, ADD, COPY, WORKDIR, USER,
    /// VOLUME, EXPOSE, STOPSIGNAL, RUN --mount). RUN/CMD/ENTRYPOINT/SHELL/
    /// HEALTHCHECK/ONBUILD are left for the shell. A base image's own
    /// environment is known only through [`BuildOptions::base_env`]; stages
    /// built on earlier stages inherit their ENV.
    pub fn expand(&self, opts: &BuildOptions) -> Result<Dockerfile, Vec<Error>> {
        let lex = Lexer::new(self.escape);
        let mut errors = Vec::new();
        let mut out = self.clone();
        let auto = opts.platform_args();
        let supplied = |name: &str| -> Option<String> {
            opts.build_args
                .get(name)
                .or_else(|| auto.get(name))
                .cloned()
        };

        // Global scope: platform args are predefined.
        let mut global = auto.clone();
        let empty = BTreeMap::new();
        for ins in &mut out.global_args {
            let pos = ins.args_pos;
            if let Command::Arg { args } = &mut ins.command {
                let scope = Scope {
                    env: &empty,
                    args: &global,
                };
                let mut values = Vec::new();
                for a in args.iter_mut() {
                    match expand_arg(&lex, a, &scope, pos, &supplied, None) {
                        Ok(v) => values.push((a.name.clone(), v)),
                        Err(e) => errors.push(e),
                    }
                }
                for (k, v) in values {
                    match v {
                        Some(v) => {
                            global.insert(k, v);
                        }
                        None => {
                            global.remove(&k);
                        }
                    }
                }
            }
        }
        let declared_globals: Vec<String> = self
            .global_args
            .iter()
            .flat_map(|i| match &i.command {
                Command::Arg { args } => args.iter().map(|a| a.name.clone()).collect(),
                _ => Vec::new(),
            })
            .collect();

        let mut final_envs: Vec<BTreeMap<String, String>> = Vec::new();
        let names: Vec<Option<String>> = out.stages.iter().map(|s| s.name.clone()).collect();
        for stage in &mut out.stages {
            let gscope = Scope {
                env: &empty,
                args: &global,
            };
            match lex.process_word(&stage.base, &gscope) {
                Ok(b) if b.is_empty() => errors.push(Error::new(
                    stage.pos,
                    ErrorKind::BlankBaseName(stage.base.clone()),
                )),
                Ok(b) => stage.base = b,
                Err(reason) => errors.push(Error::new(
                    stage.pos,
                    ErrorKind::Expand {
                        word: stage.base.clone(),
                        reason,
                    },
                )),
            }
            if let Some(p) = &stage.platform {
                match lex.process_word(p, &gscope) {
                    Ok(v) => stage.platform = Some(v),
                    Err(reason) => errors.push(Error::new(
                        stage.pos,
                        ErrorKind::Expand {
                            word: p.clone(),
                            reason,
                        },
                    )),
                }
            }
            let parent = names[..stage.index]
                .iter()
                .position(|n| n.as_deref() == Some(stage.base.to_ascii_lowercase().as_str()));
            let mut env = parent
                .and_then(|p| final_envs.get(p).cloned())
                .or_else(|| opts.base_env.get(&stage.index).cloned())
                .unwrap_or_default();
            let mut args: BTreeMap<String, String> = BTreeMap::new();
            for ins in &mut stage.instructions {
                if let Err(e) = expand_instruction(
                    &lex,
                    ins,
                    &mut env,
                    &mut args,
                    &supplied,
                    &global,
                    &declared_globals,
                ) {
                    errors.push(e);
                }
            }
            final_envs.push(env);
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

fn expand_err(pos: Pos, word: &str, reason: crate::expand::ExpandError) -> Error {
    Error::new(
        pos,
        ErrorKind::Expand {
            word: word.to_string(),
            reason,
        },
    )
}

/// Expands an ARG definition in place and returns the value it takes.
fn expand_arg(
    lex: &Lexer,
    a: &mut ArgDef,
    scope: &dyn Env,
    pos: Pos,
    supplied: &dyn Fn(&str) -> Option<String>,
    inherited: Option<Lookup<'_>>,
) -> Result<Option<String>, Error> {
    a.name = lex
        .process_word(&a.name, scope)
        .map_err(|r| expand_err(pos, &a.name, r))?;
    if let Some(d) = &a.default {
        a.default = Some(
            lex.process_word(d, scope)
                .map_err(|r| expand_err(pos, d, r))?,
        );
    }
    if let Some(v) = supplied(&a.name) {
        return Ok(Some(v));
    }
    if let Some(d) = &a.default {
        return Ok(Some(d.clone()));
    }
    Ok(inherited.and_then(|f| f(&a.name)))
}

fn expand_instruction(
    lex: &Lexer,
    ins: &mut Instruction,
    env: &mut BTreeMap<String, String>,
    args: &mut BTreeMap<String, String>,
    supplied: &dyn Fn(&str) -> Option<String>,
    global: &BTreeMap<String, String>,
    declared_globals: &[String],
) -> Result<(), Error> {
    let pos = ins.args_pos;
    let scope = Scope { env, args };
    let word = |w: &str| {
        lex.process_word(w, &scope)
            .map_err(|r| expand_err(pos, w, r))
    };
    let opt = |w: &Option<String>| -> Result<Option<String>, Error> {
        w.as_ref().map(|v| word(v)).transpose()
    };
    let list =
        |ws: &[String]| -> Result<Vec<String>, Error> { ws.iter().map(|w| word(w)).collect() };
    let kvs = |kv: &[KeyValue]| -> Result<Vec<KeyValue>, Error> {
        kv.iter()
            .map(|p| {
                Ok(KeyValue {
                    key: word(&p.key)?,
                    value: word(&p.value)?,
                    legacy: p.legacy,
                })
            })
            .collect()
    };
    let mut body_lex = *lex;
    body_lex.skip_quotes = true;
    let inline = |files: &[InlineFile]| -> Result<Vec<InlineFile>, Error> {
        files
            .iter()
            .map(|f| {
                let mut f = f.clone();
                if f.expand {
                    f.content = body_lex
                        .process_word(&f.content, &scope)
                        .map_err(|r| expand_err(pos, &f.name, r))?;
                }
                Ok(f)
            })
            .collect()
    };
    match &mut ins.command {
        Command::Env { vars } => {
            let new = kvs(vars)?;
            for kv in &new {
                env.insert(kv.key.clone(), kv.value.clone());
            }
            *vars = new;
        }
        Command::Label { labels } => *labels = kvs(labels)?,
        Command::Add(a) => {
            a.sources = list(&a.sources)?;
            a.dest = word(&a.dest)?;
            a.chown = opt(&a.chown)?;
            a.chmod = opt(&a.chmod)?;
            a.checksum = opt(&a.checksum)?;
            a.inline = inline(&a.inline)?;
        }
        Command::Copy(c) => {
            c.sources = list(&c.sources)?;
            c.dest = word(&c.dest)?;
            c.chown = opt(&c.chown)?;
            c.chmod = opt(&c.chmod)?;
            c.from = opt(&c.from)?;
            c.inline = inline(&c.inline)?;
        }
        Command::Workdir { path } => *path = word(path)?,
        Command::User { user } => *user = word(user)?,
        Command::Stopsignal { signal } => *signal = word(signal)?,
        Command::Volume { paths } => *paths = list(paths)?,
        Command::Expose { ports } => {
            let mut out = Vec::new();
            for p in ports.iter() {
                out.extend(
                    lex.process_words(p, &scope)
                        .map_err(|r| expand_err(pos, p, r))?,
                );
            }
            *ports = out;
        }
        Command::Run(run) => {
            let exp = |w: &str| -> Result<String, Error> {
                lex.process_word(w, &scope)
                    .map_err(|r| expand_err(pos, w, r))
            };
            let mut mounts = Vec::with_capacity(run.mounts.len());
            for m in &run.mounts {
                mounts.push(parse_mount(&m.raw, m.pos, Some(&exp))?);
            }
            run.mounts = mounts;
        }
        Command::Arg { args: defs } => {
            let mut values = Vec::new();
            for a in defs.iter_mut() {
                let inherited = |name: &str| -> Option<String> {
                    declared_globals
                        .iter()
                        .any(|g| g == name)
                        .then(|| global.get(name).cloned())
                        .flatten()
                };
                let v = expand_arg(lex, a, &scope, pos, supplied, Some(&inherited))?;
                values.push((a.name.clone(), v));
            }
            for (k, v) in values {
                match v {
                    Some(v) => {
                        args.insert(k, v);
                    }
                    None => {
                        args.remove(&k);
                    }
                }
            }
        }
        Command::Cmd(_)
        | Command::Entrypoint(_)
        | Command::Shell { .. }
        | Command::Onbuild { .. }
        | Command::Healthcheck(_)
        | Command::Maintainer { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("-2ms"), Some(-2_000_000));
    }

    #[test]
    fn base_env_is_seen_by_expansion() {
        let df = crate::parse("FROM img\nENV PATH=$PATH:/extra\nWORKDIR $HOME/app\n").unwrap();
        let mut opts = BuildOptions::default();
        opts.base_env.insert(
            0,
            BTreeMap::from([
                ("PATH".to_string(), "/usr/bin".to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ]),
        );
        let out = df.expand(&opts).unwrap();
        match &out.stages[0].instructions[0].command {
            Command::Env { vars } => assert_eq!(vars[0].value, "/usr/bin:/extra"),
            other => panic!("{other:?}"),
        }
        match &out.stages[0].instructions[1].command {
            Command::Workdir { path } => assert_eq!(path, "/root/app"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv() {
        assert_eq!(
            csv_fields("type=bind,\"source=a,b\",ro").unwrap(),
            vec!["type=bind", "source=a,b", "ro"]
        );
    }

    #[test]
    fn ram() {
        assert_eq!(parse_ram_bytes("64m"), Some(64 << 20));
        assert_eq!(parse_ram_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_ram_bytes("x"), None);
    }
}
