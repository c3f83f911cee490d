//! `slipway build --local`: build on this machine with the daemonless
//! builder, from a [`LocalBuild`] whose flags `build_args` has checked,
//! and push to the `-t` references (or write an OCI tarball). The pool
//! path is `remote.rs`; neither knows the other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use builder::data_dir::DataDir;
use builder::{
    BuildRequest, BuildResult, Compression, LayerOptions, LayerStore, OciArchive, Progress,
};
use sandbox::{InitCommand, Mode, Sandbox, SandboxConfig};

/// A local build, every flag read and checked.
pub(crate) struct LocalBuild {
    pub tags: Vec<oci::Reference>,
    /// Push to `tags` (not with `--no-push` or an OCI tarball output).
    pub push: bool,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--ssh`: agent sockets by id.
    pub ssh: BTreeMap<String, PathBuf>,
    pub cache_from: Vec<oci::Reference>,
    /// Where to export the cache, and whether a failed export is only a warning.
    pub cache_to: Option<crate::build_args::CacheTo>,
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`, and the creation time it gives.
    pub epoch: Option<u64>,
    pub created: String,
    pub platform: regclient::Platform,
    pub client: Arc<regclient::Client>,
    pub progress: Progress,
    /// `--memory`/`--cpus` of every RUN.
    pub run_limits: sandbox::Limits,
    pub allow_insecure: bool,
    pub unpack: builder::unpack::Limits,
    pub oci_archive: Option<OciArchive>,
    /// The data dir as given (`--data` or the default); opened by [`run`].
    pub data: PathBuf,
    pub context: PathBuf,
    pub file: Option<PathBuf>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub iidfile: Option<PathBuf>,
    pub metadata_file: Option<PathBuf>,
}

/// What a build runs with on this machine: the data dir (locked against
/// prune while this lives), the layer store and the sandbox.
struct Machine {
    data: DataDir,
    _in_use: builder::prune::BuildLock,
    store: LayerStore,
    sandbox: Sandbox,
}

impl Machine {
    fn open(b: &LocalBuild) -> Result<Machine> {
        // The sandbox mounts host paths: every path it sees must be absolute.
        let data = DataDir::open(&b.data)?;
        // Held until the build ends: `slipway prune` waits for it.
        let in_use = builder::prune::BuildLock::shared(&data).context("locking the build data")?;
        let mode = Mode::detect().context("detecting how to isolate RUN steps")?;
        let store = LayerStore::open(data.layers(), matches!(mode, Mode::UserNamespace { .. }))
            .context("opening the layer store")?
            .with_limits(b.unpack);
        let init = InitCommand {
            program: std::env::current_exe().context("locating the slipway binary")?,
            args: vec!["sandbox-init".into()],
        };
        let sandbox = Sandbox::new(SandboxConfig::new(mode, init, data.sandbox()));
        Ok(Machine {
            data,
            _in_use: in_use,
            store,
            sandbox,
        })
    }
}

pub(crate) async fn run(b: LocalBuild) -> Result<()> {
    let machine = Machine::open(&b)?;
    let context = b
        .context
        .canonicalize()
        .with_context(|| format!("build context {}", b.context.display()))?;
    let request = request(&b, &machine.data, context);
    let result = builder::build(
        &request,
        &b.client,
        &machine.store,
        &machine.sandbox,
        &mut tokio::io::stdout(),
        &mut tokio::io::stderr(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&request.work_dir);
    report(&b, &result?)
}

/// The builder's request: the checked flags, with the data dir's places.
fn request(b: &LocalBuild, data: &DataDir, context: PathBuf) -> BuildRequest {
    let context_excludes = builder::data_dir::excluded_in(&context, data.root());
    BuildRequest {
        dockerfile: b.file.clone().unwrap_or_else(|| context.join("Dockerfile")),
        context,
        tags: if b.push { b.tags.clone() } else { Vec::new() },
        build_args: b.build_args.clone(),
        target: b.target.clone(),
        platform: b.platform.clone(),
        work_dir: data.work_for("build"),
        layer_options: LayerOptions {
            compression: b.compression,
            source_date_epoch: b.epoch,
        },
        created: b.created.clone(),
        cache_dir: (!b.no_cache).then(|| data.cache()),
        secrets: b.secrets.clone(),
        labels: b.labels.clone(),
        run_limits: b.run_limits.clone(),
        allow_insecure: b.allow_insecure,
        cache_mounts_dir: data.cache_mounts(),
        oci_archive: b.oci_archive.clone(),
        ssh: b.ssh.clone(),
        cache_from: b.cache_from.clone(),
        cache_to: b.cache_to.as_ref().map(|(r, _)| r.clone()),
        cache_to_ignore_error: b.cache_to.as_ref().is_some_and(|(_, i)| *i),
        context_excludes,
        progress: b.progress,
    }
}

/// `--iidfile`, `--metadata-file`, and each pushed reference on stdout.
fn report(b: &LocalBuild, result: &BuildResult) -> Result<()> {
    if let Some(path) = &b.iidfile {
        std::fs::write(path, result.manifest_digest.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &b.metadata_file {
        // The keys buildx writes with --metadata-file.
        let names: Vec<String> = b.tags.iter().map(ToString::to_string).collect();
        let metadata = serde_json::json!({
            "containerimage.digest": result.manifest_digest.to_string(),
            "containerimage.config.digest": oci::Digest::sha256(&result.config).to_string(),
            "containerimage.descriptor": {
                "mediaType": oci::media_type::OCI_MANIFEST,
                "digest": result.manifest_digest.to_string(),
                "size": result.manifest.len(),
            },
            "image.name": names.join(","),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&metadata)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for r in &result.pushed {
        println!("{r}@{}", result.manifest_digest);
    }
    Ok(())
}
