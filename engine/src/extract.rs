//! `conntrail extract`: the packets of one connection from captures (being written).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::logs::RecordRef;

/// Arguments of `conntrail extract`.
#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// The connection, as LOG:ID.
    pub record: RecordRef,
    /// Captures to take its packets from.
    #[arg(long = "pcap", required = true)]
    pub pcaps: Vec<PathBuf>,
    /// Output capture.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

pub fn run(_args: ExtractArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("extract is not built yet")
}
