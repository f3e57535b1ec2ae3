//! System "direct": every node downloads the object from the origin with curl.

use anyhow::Result;

use super::clients::{launch, wait_exits};
use super::origin::url;
use super::{Ctx, Run};

pub fn run(ctx: &Ctx<'_>) -> Result<Run> {
    let out = ctx.dir.join("out");
    std::fs::create_dir_all(&out)?;
    let url = url(&ctx.fleet.origin);
    let mut l = launch(
        ctx.registry,
        &ctx.fleet.agents,
        &ctx.dir.join("logs"),
        |_| Vec::new(),
        |node| {
            let file = out.join(&node.name).display().to_string();
            let args = ["-sS", "--fail", "-o", &file, &url];
            ("curl".into(), args.iter().map(|s| s.to_string()).collect())
        },
    )?;
    let completions = wait_exits(&mut l, ctx.timeout);
    Ok(Run {
        t0: Some(l.t0),
        spread: l.spread,
        completions,
        outputs: ctx.fleet.agents.iter().map(|n| out.join(&n.name)).collect(),
        ..Run::default()
    })
}
