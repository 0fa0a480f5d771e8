//! `cellgate` subcommands.
//!
//! Exit codes: 0 success; 1 the rules are invalid or a command failed;
//! `rules diff` follows diff(1): 0 no change, 1 changes, 2 trouble.
//! Usage errors are clap's (exit 2).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use cellgate_rules::explain::{self, Explanation, Query};
use cellgate_rules::{RuleSet, RulesDiff};

use crate::Error;

#[derive(Debug, Parser)]
#[command(
    name = "cellgate",
    version,
    about = "Multi-tenant message gateway for cell-based (LDC) deployments"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check, explain and compare routing rules files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Run the gateway (HTTP/1.1, h2c, HTTPS with h2) with an embedded broker per cell.
    Serve(crate::serve::ServeArgs),
    /// Run only the router (no message API): the same options as `serve`;
    /// its listener answers /healthz, /readyz and /metrics.
    Router(crate::serve::ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate a rules file (or directory); print every problem as file:line:col: message.
    Check {
        /// A YAML file, or a directory of them.
        file: PathBuf,
    },
    /// Show what the rules do with one message: names, unit headers, copies, receivers.
    Explain(ExplainArgs),
    /// Show what changes from OLD to NEW, and what would need a restart.
    Diff { old: PathBuf, new: PathBuf },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub cell: String,
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub uid: Option<String>,
    #[arg(long)]
    pub tag: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cli`, writing results to `out` and problems to `err`; returns the exit code.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    // diff(1) keeps 1 for "they differ", so its failures are 2.
    let (result, failed) = match cli.command {
        Command::Rules(RulesCommand::Check { file }) => (check(&file, out), 1),
        Command::Rules(RulesCommand::Explain(args)) => (explain_cmd(&args, out), 1),
        Command::Rules(RulesCommand::Diff { old, new }) => (diff(&old, &new, out), 2),
        Command::Serve(args) => (crate::serve::run(args, out).map(|()| 0), 1),
        Command::Router(mut args) => {
            args.router_only = true;
            args.no_router = false;
            (crate::serve::run(args, out).map(|()| 0), 1)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            failed
        }
    }
}

fn check(file: &std::path::Path, out: &mut dyn Write) -> Result<u8, Error> {
    let r = cellgate_rules::load(file)?;
    writeln!(
        out,
        "{}: ok: {} cells in {} cities, {} tenants, sha256 {}",
        file.display(),
        r.cells().len(),
        r.cities().len(),
        r.tenants().len(),
        r.meta().sha256
    )?;
    Ok(0)
}

fn explain_cmd(a: &ExplainArgs, out: &mut dyn Write) -> Result<u8, Error> {
    let r = cellgate_rules::load(&a.file)?;
    let q = Query {
        tenant: &a.tenant,
        cell: &a.cell,
        topic: &a.topic,
        group: a.group.as_deref(),
        uid: a.uid.as_deref(),
        tag: a.tag.as_deref(),
    };
    let e = explain::explain(&r, &q)?;
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &e)?;
        writeln!(out)?;
    } else {
        write_explanation(&e, out)?;
    }
    Ok(0)
}

// Long on purpose: one `writeln!` per line of output, in reading order, so
// the layout reads top to bottom like what it prints.
fn write_explanation(e: &Explanation, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "tenant {}  cell {} ({}, city {})  rules version {}",
        e.tenant, e.cell, e.zone, e.city, e.rules_version
    )?;
    writeln!(out, "physical topic   {}", e.physical_topic)?;
    if !e.topic_allowed {
        writeln!(
            out,
            "  warning: tenant {}'s topic patterns do not allow this topic; the gateway refuses it",
            e.tenant
        )?;
    }
    if e.group_allowed == Some(false) {
        writeln!(
            out,
            "  warning: tenant {}'s group patterns do not allow this group; the gateway refuses it",
            e.tenant
        )?;
    }
    if let (Some(g), Some(r), Some(d)) = (&e.physical_group, &e.retry_topic, &e.dlq_topic) {
        writeln!(out, "physical group   {g}")?;
        writeln!(out, "retry topic      {r}")?;
        writeln!(out, "dead letters     {d}")?;
    }
    if let Some(s) = &e.shard {
        writeln!(out, "uid shard        {s}")?;
    }
    writeln!(out, "unit headers")?;
    for (k, v) in &e.unit_headers {
        writeln!(out, "  {k:<22} {v}")?;
    }
    match &e.route {
        Some(r) => writeln!(out, "route            {r}")?,
        None => writeln!(out, "route            none matches: not replicated")?,
    }
    writeln!(out, "router copies")?;
    if e.copies.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for c in &e.copies {
        writeln!(
            out,
            "  {} -> {:<6} for {:<6} {}",
            e.cell, c.target, c.copy_for, c.physical_topic
        )?;
    }
    writeln!(out, "receivers")?;
    for (kind, cells) in &e.receivers {
        let cells = if cells.is_empty() {
            "(none)".to_owned()
        } else {
            cells.join(" ")
        };
        writeln!(out, "  {kind:<6} {cells}")?;
    }
    Ok(())
}

fn diff(old: &std::path::Path, new: &std::path::Path, out: &mut dyn Write) -> Result<u8, Error> {
    let a: RuleSet = cellgate_rules::load(old)?;
    let b: RuleSet = cellgate_rules::load(new)?;
    let d = RulesDiff::between(&a, &b);
    writeln!(out, "{d}")?;
    let restart = cellgate_rules::restart_required(&a, &b);
    for p in restart.iter() {
        writeln!(out, "restart required: {p}")?;
    }
    Ok(if d.is_empty() { 0 } else { 1 })
}
