//! `conntrail diff`: a baseline and a problematic connection side by side (being written).

use std::process::ExitCode;

use crate::logs::RecordRef;

/// Arguments of `conntrail diff`.
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The good connection, as LOG:ID.
    pub baseline: RecordRef,
    /// The bad connection, as LOG:ID.
    pub problem: RecordRef,
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: DiffArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("diff is not built yet")
}
