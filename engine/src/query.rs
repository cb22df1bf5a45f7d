//! `conntrail query`: select records with an expression (being written).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `conntrail query`.
#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// Logs, then an optional expression.
    #[arg(required = true)]
    pub args: Vec<String>,
    /// JSON Lines output.
    #[arg(long)]
    pub json: bool,
    /// JSON with Elastic Common Schema field names.
    #[arg(long)]
    pub ecs: bool,
    /// A summary table counted by this field instead of the records.
    #[arg(long, value_name = "reason|flags|server|port")]
    pub count_by: Option<String>,
    /// Unused placeholder for the log list.
    #[arg(skip)]
    pub logs: Vec<PathBuf>,
}

pub fn run(_args: QueryArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("query is not built yet")
}
