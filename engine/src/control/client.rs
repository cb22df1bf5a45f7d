//! The commands that talk to a running engine: `conntrail watch`, `sessions`, `session`
//! and `reload`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use flowtable::config::DEFAULT_CONTEXT;

use forensics::expr;
use forensics::units;

use super::default_path;
use super::protocol::{ask, Reply, Request, WatchRow};

/// Where the control socket of a run is.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArg {
    /// The control socket (default: LOG.ctl).
    #[arg(long, global = true)]
    pub control: Option<PathBuf>,
    /// The log of the run, beside which its control socket is.
    #[arg(long, global = true, default_value = "tracker.log")]
    pub log: PathBuf,
}

impl ControlArg {
    fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| default_path(&self.log))
    }
}

/// `conntrail watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    #[command(subcommand)]
    pub action: WatchAction,
    #[command(flatten)]
    pub at: ControlArg,
}

/// What to do with watches.
#[derive(clap::Subcommand, Debug)]
pub enum WatchAction {
    /// Record every connection that starts matching EXPR while the watch lasts (flag
    /// `user`), whatever its outcome. EXPR tests host, net, port, client, server, proto,
    /// ip4/ip6, vlan with and/or/not.
    Add {
        expr: String,
        /// Expire after this long (`30s`, `5m`, `1h`); without it, until deleted.
        #[arg(long = "for", value_parser = parse_for)]
        for_ns: Option<u64>,
    },
    /// The active watches and what each costs each worker.
    List,
    /// Delete a watch.
    Del { id: u32 },
}

fn parse_for(text: &str) -> Result<u64, String> {
    match expr::parse_duration(text) {
        Ok(0) => Err("a watch must last longer than 0".into()),
        Ok(ns) => Ok(ns),
        Err(e) => Err(format!("`{text}` is not {e}")),
    }
}

/// `conntrail sessions`.
#[derive(clap::Args, Debug)]
pub struct SessionsArgs {
    /// Only connections matching this record expression (as `conntrail query`).
    pub expr: Option<String>,
    /// Print JSON Lines.
    #[arg(long)]
    pub json: bool,
    /// At most this many connections, the oldest ids first (0: all).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[command(flatten)]
    pub at: ControlArg,
}

/// `conntrail session`.
#[derive(clap::Args, Debug)]
pub struct SessionArgs {
    /// The connection's id (the first column of `conntrail sessions`).
    pub id: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub at: ControlArg,
}

/// `conntrail reload`.
#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub at: ControlArg,
}

/// Sends a request and turns an error reply into a failure.
fn request(at: &ControlArg, r: &Request) -> Result<Reply> {
    match ask(&at.path(), r)? {
        Reply::Error { message } => bail!("{message}"),
        reply => Ok(reply),
    }
}

/// `conntrail watch add|list|del`.
pub fn run_watch(args: WatchArgs) -> Result<ExitCode> {
    let r = match args.action {
        WatchAction::Add { expr, for_ns } => Request::WatchAdd { expr, for_ns },
        WatchAction::List => Request::WatchList,
        WatchAction::Del { id } => Request::WatchDel { id },
    };
    let reply = request(&args.at, &r)?;
    let mut out = io::stdout().lock();
    if let Reply::Watches {
        message, watches, ..
    } = &reply
    {
        if !message.is_empty() {
            writeln!(out, "{message}")?;
        }
        out.write_all(watch_table(watches).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The watches as a table: id, expiry, cost per worker, expression.
pub fn watch_table(watches: &[WatchRow]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if watches.is_empty() {
        s.push_str("no active watch\n");
        return s;
    }
    let _ = writeln!(
        s,
        "{:>4}  {:<24}  {:>12}  {:>10}  {:>10}  expression",
        "id", "expires", "evaluations", "matches", "ns/eval"
    );
    for w in watches {
        let until = w
            .until_ns
            .map_or_else(|| "never".to_string(), units::utc_text);
        let (evals, matches, ns) = w.costs.iter().fold((0, 0, 0), |(e, m, n), (_, c)| {
            (e + c.evaluations, m + c.matches, n + c.ns)
        });
        let per = ns.checked_div(evals).unwrap_or(0);
        let until: String = until.chars().take(24).collect();
        let _ = writeln!(
            s,
            "{:>4}  {until:<24}  {evals:>12}  {matches:>10}  {per:>10}  {}",
            w.id, w.expr
        );
        for (worker, c) in &w.costs {
            let _ = writeln!(
                s,
                "{:>4}  {:<24}  {:>12}  {:>10}  {:>10}  worker {worker}: {} ns in all",
                "",
                "",
                c.evaluations,
                c.matches,
                c.ns.checked_div(c.evaluations).unwrap_or(0),
                c.ns
            );
        }
    }
    s
}

/// `conntrail sessions`.
pub fn run_sessions(args: SessionsArgs) -> Result<ExitCode> {
    let limit = (args.limit > 0).then_some(args.limit);
    let reply = request(
        &args.at,
        &Request::Sessions {
            expr: args.expr,
            limit,
        },
    )?;
    let Reply::Sessions {
        sessions,
        matching,
        workers,
        answered,
    } = reply
    else {
        bail!("unexpected reply to sessions");
    };
    let mut out = io::stdout().lock();
    if args.json {
        for s in &sessions {
            serde_json::to_writer(&mut out, s)?;
            writeln!(out)?;
        }
    } else {
        writeln!(
            out,
            "{:>18}  {:<5} {:<24} {:<24} {:<6} {:>10} {:>8} {:>10} {:>8} {:>10}",
            "id",
            "proto",
            "client",
            "server",
            "state",
            "age",
            "c2s pkts",
            "c2s bytes",
            "s2c pkts",
            "s2c bytes"
        )?;
        for s in &sessions {
            writeln!(
                out,
                "{:>18}  {:<5} {:<24} {:<24} {:<6} {:>10} {:>8} {:>10} {:>8} {:>10}{}{}",
                s.id,
                s.proto,
                s.client,
                s.server,
                s.state,
                units::duration_text(s.age_ns),
                s.c2s_pkts,
                s.c2s_bytes,
                s.s2c_pkts,
                s.s2c_bytes,
                if s.user { "  user" } else { "" },
                if s.context.is_empty() || s.context == DEFAULT_CONTEXT {
                    String::new()
                } else {
                    format!("  context {}", s.context)
                }
            )?;
        }
        if matching > sessions.len() {
            writeln!(
                out,
                "{matching} open connection(s), the first {} shown (--limit)",
                sessions.len()
            )?;
        } else {
            writeln!(out, "{matching} open connection(s)")?;
        }
    }
    if answered < workers {
        eprintln!(
            "conntrail: only {answered} of {workers} workers answered; the list is incomplete"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `conntrail session ID`.
pub fn run_session(args: SessionArgs) -> Result<ExitCode> {
    let reply = request(&args.at, &Request::Session { id: args.id })?;
    let Reply::Session { text, json } = reply else {
        bail!("unexpected reply to session");
    };
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &json)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "open connection, so far (the reason is that of a stop now):"
        )?;
        out.write_all(text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `conntrail reload`.
pub fn run_reload(args: ReloadArgs) -> Result<ExitCode> {
    match ask(&args.at.path(), &Request::Reload)? {
        Reply::Reloaded { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { message } => {
            eprintln!("conntrail: reload refused: {message}");
            Ok(ExitCode::from(1))
        }
        _ => bail!("unexpected reply to reload"),
    }
}
