//! The finished target stage out of the build: `--label`s set, the image
//! assembled, pushed to every tag, written as an OCI archive, and the
//! build's steps exported as a registry cache (`--cache-to`).

use std::sync::Arc;

use layer::diff::NewLayer;
use oci::Reference;
use regclient::Client;
use serde_json::json;
use tokio::io::AsyncWrite;

use super::error::step_err_as;
use super::{BuildError, BuildResult, StageCtx, StageState, say, step_err};
use crate::fault::Fault;
use crate::image::BuiltImage;
use crate::remote_cache::DoneStep;

/// Finish the target stage `st` and send it where the request says.
pub(super) async fn finish<W: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    mut st: StageState,
    done_steps: &[DoneStep],
    out: &mut W,
) -> Result<BuildResult, BuildError> {
    let (req, client, tty) = (cx.req, cx.client, cx.tty);
    if !req.labels.is_empty() {
        // `--label`: on the image built, as buildx does.
        let cfg = st.image.container_config();
        let entry = cfg.entry("Labels").or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        if let Some(map) = entry.as_object_mut() {
            for (k, v) in &req.labels {
                map.insert(k.clone(), json!(v));
            }
        }
    }
    let built = st
        .image
        .finish_with(&req.created, req.fixed_time().is_some())
        .map_err(step_err("assembling the image"))?;
    let mut pushed = Vec::new();
    for tag in &req.tags {
        say(out, tty, &format!("pushing {tag}")).await;
        push(client, st.origin.as_ref(), &st.new_layers, &built, tag).await?;
        pushed.push(tag.clone());
    }
    if let Some(archive) = &req.oci_archive {
        let dest = &archive.dest;
        say(out, tty, &format!("writing {}", dest.display())).await;
        crate::oci_archive::write(
            client,
            st.origin.as_ref(),
            &st.new_layers,
            &built,
            archive.name.as_ref(),
            &req.work_dir,
            dest,
        )
        .await
        .map_err(step_err(format!("writing {}", dest.display())))?;
    }
    if let Some(to) = &req.cache_to {
        let exported = crate::remote_cache::export(client, to, done_steps, pushed.first()).await;
        let line = match exported {
            Ok(Some(d)) => format!("exported cache to {to} ({d})"),
            Ok(None) => format!("cache at {to} is up to date"),
            Err(e) if req.cache_to_ignore_error => format!("warning: --cache-to {to}: {e}"),
            Err(e) => return Err(step_err_as(Fault::Network, format!("--cache-to {to}"))(e)),
        };
        say(out, tty, &line).await;
    }
    say(out, tty, &format!("built {}", built.manifest_digest)).await;
    Ok(BuildResult {
        manifest_digest: built.manifest_digest,
        config: built.config,
        manifest: built.manifest,
        pushed,
    })
}

/// Push the image to `tag`: the base's blobs (mounted or copied from where
/// the base came from), the new layers, the config, then the manifest.
async fn push(
    client: &Arc<Client>,
    origin: Option<&(Reference, regclient::FetchedManifest)>,
    new_layers: &[NewLayer],
    built: &BuiltImage,
    tag: &Reference,
) -> Result<(), BuildError> {
    let host = tag.api_host().to_owned();
    // A push fails at the registry (or on the way to it).
    let ctx = || format!("pushing {tag}");
    // Base blobs (mounted or copied) and new layers all at once, a few at
    // a time, as `docker push` does.
    let mut blobs: Vec<
        futures_util::future::BoxFuture<'_, Result<regclient::Pushed, regclient::RegClientError>>,
    > = Vec::new();
    if let Some((base, base_manifest)) = origin
        && let oci::ManifestKind::Image { layers, .. } = &base_manifest.manifest.kind
    {
        for l in layers {
            blobs.push(Box::pin(client.copy_blob(base, tag, l.clone())));
        }
    }
    for l in new_layers {
        blobs.push(Box::pin(client.push_file(
            &host,
            &tag.repository,
            &l.info.digest,
            l.info.size,
            &l.file,
        )));
    }
    {
        use futures_util::{StreamExt, TryStreamExt};
        futures_util::stream::iter(blobs)
            .buffer_unordered(client.parallelism())
            .try_collect::<Vec<_>>()
            .await
            .map_err(step_err_as(Fault::Network, ctx()))?;
    }
    let cfg = bytes::Bytes::from(built.config.clone());
    client
        .push_blob(
            &host,
            &tag.repository,
            &built.config_digest,
            cfg.len() as u64,
            || reqwest::Body::from(cfg.clone()),
        )
        .await
        .map_err(step_err_as(Fault::Network, ctx()))?;
    client
        .put_manifest(
            tag,
            oci::media_type::OCI_MANIFEST,
            built.manifest.clone().into(),
        )
        .await
        .map_err(step_err_as(Fault::Network, ctx()))?;
    Ok(())
}
