//! `conntrail filter`: Wireshark and BPF filters for one connection (being written).

use std::process::ExitCode;

use crate::logs::RecordRef;

/// Arguments of `conntrail filter`.
#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    /// The connection, as LOG:ID.
    pub record: RecordRef,
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: FilterArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("filter is not built yet")
}
