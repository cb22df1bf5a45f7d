//! `conntrail correlate`: one request through a reverse proxy (being written).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `conntrail correlate`.
#[derive(clap::Args, Debug)]
pub struct CorrelateArgs {
    /// Proxy conntrace logs (JSON).
    #[arg(long = "conntrace")]
    pub conntrace: Vec<PathBuf>,
    /// Without conntrace logs: the proxy's address.
    #[arg(long)]
    pub proxy: Option<IpAddr>,
    /// conntrail logs (front-end and back-end sides may be in different logs).
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub ecs: bool,
}

pub fn run(_args: CorrelateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("correlate is not built yet")
}
