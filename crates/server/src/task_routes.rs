//! `/api/v1` for tasks: stored secrets (`/secrets`), stored tasks
//! (`/tasks`) and their runs. A task run is a run whose spec carries the
//! task file; the server checks the file (rendered with placeholders) when
//! it is queued, so a broken file fails at submit with its line, and adds
//! the stored secrets it names to the lease.

use std::collections::BTreeMap;

use api::{ContextSource, RunRequest, SecretValue, TaskDef, TaskRunRequest, TaskSpec};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use registry::auth::Principal;
use serde::Deserialize;

use crate::Server;
use crate::routes::{
    R, S, admin, bad, caller, conflict, forbidden, internal, may_build, not_found, own_registry,
    queue_run, user, valid_name,
};

/// The repository a task run's images live under before a push step.
pub(crate) fn task_repository(run: &str, name: &str) -> String {
    format!("slipway-tasks/{run}/{name}")
}

fn secret_owner(name: &str) -> Vec<u8> {
    format!("secret\0{name}").into_bytes()
}

/// Secret names as tasks reference them: ids a task file can spell.
fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

// ---- stored secrets (admin) ----

pub(crate) async fn put_secret(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(v): Json<SecretValue>,
) -> R<Response> {
    admin(&s, &headers)?;
    if !valid_secret_name(&name) {
        return Err(bad(format!(
            "secret name {name:?}: 1-100 letters, digits, '-', '_' or '.'"
        )));
    }
    if v.value.is_empty() || v.value.len() > 64 * 1024 {
        return Err(bad("value: 1 byte to 64 KiB"));
    }
    let mut m = BTreeMap::new();
    m.insert("value".to_owned(), v.value);
    let sealed = s
        .sealer
        .seal_for(&m, &secret_owner(&name))
        .map_err(internal)?;
    s.db.put_secret(&name, &sealed).await?;
    tracing::info!(secret = name, "secret stored");
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn delete_secret(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> R<Response> {
    admin(&s, &headers)?;
    if !s.db.delete_secret(&name).await? {
        return Err(not_found(format!("no secret {name}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn list_secrets(State(s): S, headers: HeaderMap) -> R<Response> {
    admin(&s, &headers)?;
    let list: Vec<api::SecretInfo> = s.db.secrets().await?.into_iter().map(|(i, _)| i).collect();
    Ok(Json(list).into_response())
}

/// Add the values of the stored secrets `task` names (checked at submit)
/// to a lease's secrets; a value given with the run wins.
pub(crate) async fn add_stored_secrets(
    s: &Server,
    task: &TaskSpec,
    secrets: &mut BTreeMap<String, String>,
) -> R<()> {
    if task.stored_secrets.is_empty() {
        return Ok(());
    }
    let stored = s.db.secrets().await?;
    for name in &task.stored_secrets {
        if secrets.contains_key(name) {
            continue;
        }
        let Some((_, sealed)) = stored.iter().find(|(i, _)| &i.name == name) else {
            // Deleted since the run was queued: the task sees it missing
            // and fails naming it.
            continue;
        };
        let mut m = s
            .sealer
            .open_for(sealed, &secret_owner(name))
            .map_err(internal)?;
        if let Some(v) = m.remove("value") {
            secrets.insert(name.clone(), v);
        }
    }
    Ok(())
}

// ---- checking a task file at submit ----

/// Render and plan `task` with placeholders (the run's id and date are not
/// known yet): a broken file is refused with its line before it queues.
/// Records which stored secrets it reads; only admin tokens' runs may read
/// stored secrets (a scoped token passes its own with `--set-secret`).
pub(crate) async fn check_task(
    s: &Server,
    who: &Principal,
    task: &mut TaskSpec,
    given: &BTreeMap<String, String>,
    pool: &api::Pool,
) -> R<()> {
    if task.file.len() > 1024 * 1024 {
        return Err(bad("task file: at most 1 MiB"));
    }
    if task.origin.is_empty() {
        task.origin = "acb.yaml".into();
    }
    task.image_aliases = s.config.image_aliases.clone();
    let mut ctx = tasks::RenderContext::new(tasks::RunInfo {
        id: "queued".into(),
        registry: s.config.registry_host.clone(),
        ..Default::default()
    });
    ctx.placeholder_secrets = true;
    ctx.image_aliases = task.image_aliases.clone();
    for (i, v) in task.values.iter().enumerate() {
        ctx.add_values_yaml(v, &format!("values file {}", i + 1))
            .map_err(|e| bad(e.to_string()))?;
    }
    for kv in &task.set {
        ctx.set(kv).map_err(|e| bad(format!("--set {kv}: {e}")))?;
    }
    let policy = tasks::Policy {
        allow_privileged: pool.allow_insecure,
    };
    let plan =
        tasks::load(&task.file, &task.origin, &ctx, &policy).map_err(|e| bad(e.to_string()))?;
    let stored = s.db.secrets().await?;
    task.stored_secrets.clear();
    for sec in &plan.secrets {
        if given.contains_key(&sec.id) {
            continue;
        }
        if !stored.iter().any(|(i, _)| i.name == sec.id) {
            return Err(bad(format!(
                "{}: secret {:?} is not stored: store it with `slipway secret set {} --value-stdin`, or pass --set-secret {}=VALUE",
                task.origin, sec.id, sec.id, sec.id
            )));
        }
        if !matches!(who, Principal::Admin { .. }) {
            return Err(forbidden(format!(
                "{}: secret {:?}: only an admin token's runs read stored secrets; pass it with --set-secret",
                task.origin, sec.id
            )));
        }
        task.stored_secrets.push(sec.id.clone());
    }
    Ok(())
}

// ---- stored tasks ----

fn check_def(def: &TaskDef) -> R<()> {
    if !valid_name(&def.name) {
        return Err(bad(format!(
            "task name {:?}: use 1-50 lowercase letters, digits and dashes",
            def.name
        )));
    }
    if !matches!(def.status.as_str(), "Enabled" | "Disabled") {
        return Err(bad("status: Enabled or Disabled"));
    }
    if let Some(c) = &def.context
        && !["https://", "http://", "git://", "ssh://"]
            .iter()
            .any(|p| c.starts_with(p))
    {
        return Err(bad(format!(
            "context {c:?}: a stored task's context is a git or tarball URL"
        )));
    }
    Ok(())
}

async fn store_task(
    s: &Server,
    headers: &HeaderMap,
    mut def: TaskDef,
    replace: bool,
) -> R<Response> {
    let who = admin(s, headers)?;
    check_def(&def)?;
    let Some(pool) = s.db.pool(&def.pool).await? else {
        return Err(not_found(format!("pool {} does not exist", def.pool)));
    };
    // The file is checked now, so `task create` fails where the file is wrong.
    check_task(s, &who, &mut def.task, &BTreeMap::new(), &pool).await?;
    if !s.db.put_task(&def, replace).await? {
        return Err(if replace {
            not_found(format!("no task {}", def.name))
        } else {
            conflict(format!("task {} exists (use update)", def.name))
        });
    }
    let stored =
        s.db.task(&def.name)
            .await?
            .ok_or_else(|| internal("task vanished"))?;
    let status = if replace {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(stored)).into_response())
}

pub(crate) async fn create_task(
    State(s): S,
    headers: HeaderMap,
    Json(def): Json<TaskDef>,
) -> R<Response> {
    store_task(&s, &headers, def, false).await
}

pub(crate) async fn update_task(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(def): Json<TaskDef>,
) -> R<Response> {
    if def.name != name {
        return Err(bad("the body's name must match the path"));
    }
    store_task(&s, &headers, def, true).await
}

/// Task `name`, if `who` may build on its pool.
async fn task_for(s: &Server, who: &Principal, name: &str) -> R<TaskDef> {
    let def =
        s.db.task(name)
            .await?
            .ok_or_else(|| not_found(format!("no task {name}")))?;
    may_build(who, &def.pool)?;
    Ok(def)
}

pub(crate) async fn show_task(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> R<Response> {
    let who = user(&s, &headers)?;
    let def = task_for(&s, &who, &name).await?;
    Ok(Json(def).into_response())
}

pub(crate) async fn list_tasks(State(s): S, headers: HeaderMap) -> R<Response> {
    let who = user(&s, &headers)?;
    let list: Vec<TaskDef> =
        s.db.tasks()
            .await?
            .into_iter()
            .filter(|t| may_build(&who, &t.pool).is_ok())
            .collect();
    Ok(Json(list).into_response())
}

pub(crate) async fn delete_task(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> R<Response> {
    admin(&s, &headers)?;
    if !s.db.delete_task(&name).await? {
        return Err(not_found(format!("no task {name}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn run_task(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<TaskRunRequest>,
) -> R<Response> {
    let c = caller(&s, &headers)?;
    let def = task_for(&s, &c.who, &name).await?;
    if def.status != "Enabled" {
        return Err(conflict(format!(
            "task {name} is disabled (slipway task update {name} --status Enabled)"
        )));
    }
    let context = match (req.context, &def.context) {
        (Some(c), _) => c,
        (None, Some(url)) => ContextSource::Url { url: url.clone() },
        (None, None) => {
            return Err(bad(format!(
                "task {name} has no context: give one (slipway task run {name} -c DIR|URL)"
            )));
        }
    };
    let mut task = def.task.clone();
    task.name = Some(name.clone());
    task.set.extend(req.set);
    let run_req = RunRequest {
        pool: def.pool.clone(),
        build: api::BuildSpec::for_task(context, task),
        secrets: req.secrets,
        timeout_secs: req.timeout_secs.or(def.timeout_secs),
    };
    let own = own_registry(&s, &headers);
    let run = queue_run(&s, &c, &own, run_req).await?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct RunsQuery {
    limit: Option<u32>,
}

pub(crate) async fn task_runs(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<RunsQuery>,
) -> R<Response> {
    let who = user(&s, &headers)?;
    let def = task_for(&s, &who, &name).await?;
    let limit = q.limit.unwrap_or(20).min(1000) as usize;
    let runs: Vec<api::Run> =
        s.db.list_runs(Some(&def.pool), None, None, 1000)
            .await?
            .into_iter()
            .filter(|r| {
                r.build
                    .task
                    .as_ref()
                    .is_some_and(|t| t.name.as_deref() == Some(name.as_str()))
            })
            .take(limit)
            .collect();
    Ok(Json(runs).into_response())
}
