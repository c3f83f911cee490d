//! The stage graph: which stage depends on which (`FROM <stage>`,
//! `COPY --from=<stage|index>`, `RUN --mount=from=<stage>`), the stages a
//! target needs, and the order in which they can build: stages of one
//! level depend only on earlier levels, so a level builds in parallel.
//!
//! References that name no stage are images (`scratch` is neither).

use serde::Serialize;

use crate::error::{Error, ErrorKind, Pos};
use crate::instructions::{Command, Dockerfile};

/// How a stage uses another stage or an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    From,
    CopyFrom,
    MountFrom,
}

/// A reference from one stage to another, or to an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub via: Via,
    pub pos: Pos,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// One stage in the graph.
#[derive(Debug, Clone, Serialize)]
pub struct StageNode {
    pub index: usize,
    pub name: Option<String>,
    pub deps: Vec<Dependency>,
}

/// The graph for one target.
#[derive(Debug, Clone, Serialize)]
pub struct StageGraph {
    pub stages: Vec<StageNode>,
    pub target: usize,
    /// Stages the target needs, in index order.
    pub needed: Vec<usize>,
    /// Needed stages grouped into levels that can build in parallel.
    pub levels: Vec<Vec<usize>>,
}

impl StageGraph {
    /// Builds the graph of `df` for `target` (a stage name, or the last
    /// stage when `None`). Use an expanded [`Dockerfile`] so that
    /// `COPY --from=$STAGE` is resolved.
    pub fn new(df: &Dockerfile, target: Option<&str>) -> Result<StageGraph, Error> {
        let find = |name: &str| {
            let lower = name.to_ascii_lowercase();
            df.stages
                .iter()
                .position(|s| s.name.as_deref() == Some(lower.as_str()))
        };
        let mut stages = Vec::with_capacity(df.stages.len());
        for stage in &df.stages {
            let mut deps = Vec::new();
            match find(&stage.base) {
                Some(i) => deps.push(Dependency {
                    via: Via::From,
                    pos: stage.pos,
                    stage: Some(i),
                    image: None,
                }),
                None if stage.base.eq_ignore_ascii_case("scratch") || stage.base.is_empty() => {}
                None => deps.push(Dependency {
                    via: Via::From,
                    pos: stage.pos,
                    stage: None,
                    image: Some(stage.base.clone()),
                }),
            }
            for ins in &stage.instructions {
                let mut refs: Vec<(Via, &str)> = Vec::new();
                match &ins.command {
                    Command::Copy(c) => {
                        if let Some(f) = &c.from {
                            refs.push((Via::CopyFrom, f));
                        }
                    }
                    Command::Run(r) => {
                        for m in &r.mounts {
                            if let Some(f) = &m.from {
                                refs.push((Via::MountFrom, f));
                            }
                        }
                    }
                    _ => {}
                }
                for (via, r) in refs {
                    let target = match r.parse::<usize>() {
                        Ok(i) if r.bytes().all(|b| b.is_ascii_digit()) => {
                            if i >= stage.index {
                                return Err(Error::new(
                                    ins.pos(),
                                    ErrorKind::StageIndex(r.to_string()),
                                ));
                            }
                            Some(i)
                        }
                        _ => find(r),
                    };
                    deps.push(Dependency {
                        via,
                        pos: ins.pos(),
                        stage: target,
                        image: target.is_none().then(|| r.to_string()),
                    });
                }
            }
            stages.push(StageNode {
                index: stage.index,
                name: stage.name.clone(),
                deps,
            });
        }
        let target = match target {
            Some(t) => find(t).ok_or_else(|| {
                Error::new(Pos::new(1, 1), ErrorKind::TargetNotFound(t.to_string()))
            })?,
            None => stages
                .len()
                .checked_sub(1)
                .ok_or_else(|| Error::new(Pos::new(1, 1), ErrorKind::NoStages))?,
        };

        // Depth-first from the target: levels and cycle detection.
        let mut level: Vec<Option<usize>> = vec![None; stages.len()];
        let mut on_path = vec![false; stages.len()];
        visit(&stages, target, &mut level, &mut on_path)?;
        let needed: Vec<usize> = (0..stages.len()).filter(|&i| level[i].is_some()).collect();
        let depth = needed
            .iter()
            .filter_map(|&i| level[i])
            .max()
            .map_or(0, |d| d + 1);
        let mut levels = vec![Vec::new(); depth];
        for &i in &needed {
            if let Some(l) = level[i] {
                levels[l].push(i);
            }
        }
        Ok(StageGraph {
            stages,
            target,
            needed,
            levels,
        })
    }
}

/// Computes the level of every stage reachable from `root` (0 = needs no
/// other stage), iteratively so that long chains cannot exhaust the stack.
fn visit(
    stages: &[StageNode],
    root: usize,
    level: &mut [Option<usize>],
    on_path: &mut [bool],
) -> Result<(), Error> {
    let cycle = |d: usize, pos: Pos| {
        let name = stages[d].name.clone().unwrap_or_else(|| d.to_string());
        Error::new(pos, ErrorKind::CircularDependency(name))
    };
    // (stage, next dependency to look at, level so far)
    let mut stack: Vec<(usize, usize, usize)> = vec![(root, 0, 0)];
    on_path[root] = true;
    while let Some(top) = stack.last_mut() {
        let (i, next, l) = *top;
        if let Some(dep) = stages[i].deps.get(next) {
            top.1 += 1;
            let Some(d) = dep.stage else { continue };
            if on_path[d] {
                return Err(cycle(d, dep.pos));
            }
            if let Some(dl) = level[d] {
                top.2 = l.max(dl + 1);
                continue;
            }
            on_path[d] = true;
            stack.push((d, 0, 0));
        } else {
            stack.pop();
            on_path[i] = false;
            level[i] = Some(l);
            if let Some(parent) = stack.last_mut() {
                parent.2 = parent.2.max(l + 1);
            }
        }
    }
    Ok(())
}
