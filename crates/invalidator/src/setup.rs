//! `setup`: creates the DDL event triggers, the publication and the slot
//! (in that order, see `cm_worker::setup`), and flushes the cache when it
//! created the slot.

use std::process::ExitCode;

use anyhow::{Context, Result};
use cm_invalidator::config::InvalidatorConfig;
use cm_worker::setup::{creates_slot, flush_cache_for_new_slot, missing_steps, run_steps};

use crate::cache;

/// Runs `setup` (`--dry-run`: prints the steps only).
pub async fn command(config: &InvalidatorConfig, dry_run: bool) -> Result<ExitCode> {
    let client = crate::connect(config).await?;
    let options = config.setup_options();
    let steps = missing_steps(&client, &options).await?;
    if steps.is_empty() {
        println!("nothing to do: DDL triggers, publication and slot exist");
        return Ok(ExitCode::SUCCESS);
    }
    for step in &steps {
        println!(
            "{}{step}",
            if dry_run { "would run: " } else { "running: " }
        );
    }
    let creates_slot = creates_slot(&steps);
    if dry_run {
        if creates_slot {
            println!("would flush the cache (epoch bump): a new slot never streams earlier writes");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The cache configuration is checked before anything is created.
    let cache = if creates_slot {
        Some(cache::store_and_space(config).await?)
    } else {
        None
    };
    run_steps(&client, &options, &steps)
        .await
        .context("config section postgres")?;
    if let Some((store, space)) = cache {
        flush_cache_for_new_slot(store.as_ref(), &space)
            .await
            .context(
                "the slot was created, but flushing the cache (epoch bump) failed; \
                 `cm-invalidator run` flushes it when it starts, as it finds a slot it did not confirm",
            )?;
        println!("flushed the cache (epoch bump): nothing cached before the new slot is served");
    }
    println!("done");
    Ok(ExitCode::SUCCESS)
}
