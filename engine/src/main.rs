//! The `conntrail` command line.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use engine::pipeline::replay::{ReplayOptions, ReplaySummary};
use engine::pipeline::summary;
use flowtable::config::{Config, DEFAULT_TOML};
use flowtable::packet::Malformed;
use flowtable::table::RecordMode;
use forensics::evidence::LogTarget;
use forensics::exit;
use synth::proxy::{write_proxy, ProxyOptions};
use synth::SynthOptions;

#[derive(Parser)]
#[command(
    name = "conntrail",
    version,
    about = "Poll-mode connection tracker: keeps the trail of every anomalous TCP/UDP/ICMP connection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Record {
    /// Only connections that tripped a trigger.
    Anomalous,
    /// Every connection (flag `all` added).
    All,
}

#[derive(Subcommand)]
enum Command {
    /// Replay pcap/pcapng captures through the workers into a log.
    Replay {
        /// Configuration file (TOML); defaults apply without one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Worker threads, each pinned to a core with its own flow table.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Which connections to record.
        #[arg(long, value_enum, default_value_t = Record::Anomalous)]
        record: Record,
        /// The log to write (rotated segments are LOG.1, LOG.2, ...): a new one, unless
        /// `--overwrite` or `--append` says what to do with an existing one. Never one of
        /// the captures, nor a file that is not a conntrail log.
        #[arg(long)]
        log: PathBuf,
        /// Replace the log if it exists (only a conntrail log: its old segments are
        /// removed).
        #[arg(long, conflicts_with = "append")]
        overwrite: bool,
        /// Add to the log if it exists, after its last intact record; record ids go on from
        /// where it stopped.
        #[arg(long)]
        append: bool,
        /// The interface the captures were taken on, for those that do not name it (pcap
        /// files; pcapng interfaces without a name): `[[context]]` interfaces match it.
        #[arg(long)]
        interface: Option<String>,
        /// Capture files, replayed in order; `-` reads one from standard input.
        #[arg(required = true)]
        pcaps: Vec<PathBuf>,
        #[command(flatten)]
        export: engine::nats::ExportArgs,
    },
    /// Decode a log: one block per record, or JSON Lines.
    Show(forensics::show::ShowArgs),
    /// Write a deterministic capture of concurrent flows with known anomalies, and its
    /// ground truth (PCAP.truth.jsonl); with `--proxy`, the two sides of a reverse proxy.
    Synth {
        /// The capture; with `--proxy`, the prefix of PREFIX.front.pcap, PREFIX.back.pcap,
        /// PREFIX.conntrace.jsonl (the proxy's log) and PREFIX.truth.jsonl.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Replace the files it writes if they exist.
        #[arg(long)]
        overwrite: bool,
        #[arg(long, default_value_t = 1000, conflicts_with = "proxy")]
        flows: u64,
        #[arg(long, default_value_t = 20000, conflicts_with = "proxy")]
        packets: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of flows with an anomaly (0..1).
        #[arg(long, default_value_t = 0.2, conflicts_with = "proxy")]
        anomaly_share: f64,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// Write requests through a reverse proxy instead: client -> proxy and proxy ->
        /// server captures with the proxy's conntrace log, for `conntrail correlate`.
        #[arg(long)]
        proxy: bool,
        /// Requests through the proxy (with `--proxy`).
        #[arg(long, default_value_t = 200, requires = "proxy")]
        requests: u64,
        /// Share of the requests that fail (with `--proxy`, 0..1).
        #[arg(long, default_value_t = 0.3, requires = "proxy")]
        failure_share: f64,
        /// Share of the clients that come over IPv6 (with `--proxy`, 0..1).
        #[arg(long, default_value_t = 0.15, requires = "proxy")]
        v6_share: f64,
    },
    /// Select records with an expression; a one-line-per-session table, JSON, or counts.
    Query(forensics::query::QueryArgs),
    /// A baseline and a problematic connection side by side.
    Diff(forensics::diff::DiffArgs),
    /// Follow requests through a reverse proxy: front-end and back-end connections.
    Correlate(forensics::correlate::CorrelateArgs),
    /// Wireshark display filter and BPF filter for one connection.
    Filter(forensics::filter::FilterArgs),
    /// Write the packets of one connection from captures to a new capture.
    Extract(forensics::extract::ExtractArgs),
    /// Capture live traffic with AF_XDP on the `[[capture]]` queues of the config into a log,
    /// until SIGINT or SIGTERM.
    Run(engine::pipeline::live::RunArgs),
    /// Ship the records of a log to NATS JetStream, from where an earlier export stopped.
    Export(engine::nats::ExportCmdArgs),
    /// Print the counters a running (or stopped) `conntrail run` publishes every second.
    Stats(engine::observe::stats::StatsArgs),
    /// Write the records that crashed engines left in their shared-memory rings to their
    /// logs, exactly once (the engine also does this when it starts).
    Recover(engine::crash::RecoverArgs),
    /// Runtime watches of a running `conntrail run`: connections that start matching an
    /// expression are recorded (flag `user`) whatever their outcome.
    Watch(engine::control::WatchArgs),
    /// The open connections of a running `conntrail run`.
    Sessions(engine::control::SessionsArgs),
    /// One open connection of a running `conntrail run`, with its tracking points so far.
    Session(engine::control::SessionArgs),
    /// Make a running `conntrail run` re-read the thresholds of its configuration file.
    Reload(engine::control::ReloadArgs),
    /// Check or print configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print the shell completion script for bash, zsh or fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the conntrail(1) man page, or write one page per command into a directory.
    Manpage {
        /// Write conntrail.1 and conntrail-COMMAND.1 for every command here.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Replace pages that already exist in DIR.
        #[arg(long, requires = "dir")]
        overwrite: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a file: errors name the file, line and key.
    Check { file: PathBuf },
    /// Print the documented default configuration.
    Default,
}

/// What every command's exit status means: the scheme of `forensics::exit`.
const EXIT_STATUS: &str = "Exit status:
  0  done, nothing lost and no damage seen
  1  damage found in an input (output complete up to it; each place reported on stderr)
  2  usage or configuration error, or a refusal (nothing written)
  3  records written to the log but not all shipped to NATS (--export)
  4  records lost (full ring, or no space left for the log); the highest that applies wins";

/// One example invocation of each subcommand, for its `--help`.
fn example(name: &str) -> Option<&'static str> {
    Some(match name {
        "replay" => "conntrail replay --record all --log trace.log capture.pcap",
        "show" => "conntrail show trace.log:3",
        "synth" => "conntrail synth -o synth.pcap --flows 100 --packets 2000",
        "query" => "conntrail query trace.log reason=tcp-rst-server and port 443",
        "diff" => "conntrail diff trace.log:1 trace.log:3",
        "correlate" => "conntrail correlate --conntrace proxy.conntrace.jsonl front.log back.log",
        "filter" => "conntrail filter trace.log:3",
        "extract" => "conntrail extract --pcap capture.pcap -o conn3.pcap trace.log:3",
        "run" => "conntrail run --config conntrail.toml --log tracker.log",
        "export" => "conntrail export --config conntrail.toml tracker.log",
        "stats" => "conntrail stats tracker.log.stats.json",
        "recover" => "conntrail recover --config conntrail.toml",
        "watch" => "conntrail watch --log tracker.log list",
        "sessions" => "conntrail sessions --log tracker.log port 443",
        "session" => "conntrail session --log tracker.log 17",
        "reload" => "conntrail reload --log tracker.log",
        "config" => "conntrail config check conntrail.toml",
        "completions" => "conntrail completions bash > /etc/bash_completion.d/conntrail",
        "manpage" => "conntrail manpage --dir /usr/local/share/man/man1",
        _ => return None,
    })
}

/// Each subcommand's `--help` ends with an example and the exit statuses.
fn with_help(cli: clap::Command) -> clap::Command {
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    names.iter().fold(cli, |cli, name| {
        cli.mut_subcommand(name, |sub| {
            let mut text = sub
                .get_after_help()
                .map(|h| format!("{h}\n\n"))
                .unwrap_or_default();
            if let Some(e) = example(sub.get_name()) {
                text.push_str(&format!("Example:\n  {e}\n\n"));
            }
            text.push_str(EXIT_STATUS);
            sub.after_help(text)
        })
    })
}

/// `conntrail manpage`: conntrail(1) on stdout, or with `dir` a page per command there.
fn manpages(dir: Option<&Path>, overwrite: bool) -> Result<ExitCode> {
    let mut cli = with_help(Cli::command());
    cli.build();
    let render = |cmd: clap::Command| -> Result<Vec<u8>> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        Ok(page)
    };
    let Some(dir) = dir else {
        io::stdout().write_all(&render(cli)?)?;
        return Ok(ExitCode::SUCCESS);
    };
    let mut pages = vec![(dir.join("conntrail.1"), cli.clone())];
    for sub in cli.get_subcommands().filter(|c| c.get_name() != "help") {
        let name = format!("conntrail-{}", sub.get_name());
        pages.push((
            dir.join(format!("{name}.1")),
            sub.clone().name(name.clone()).bin_name(name),
        ));
    }
    let paths: Vec<&Path> = pages.iter().map(|(p, _)| p.as_path()).collect();
    forensics::evidence::check_outputs(
        "manpage",
        &paths,
        &forensics::evidence::Inputs::default(),
        overwrite,
    )?;
    for (path, cmd) in &pages {
        let page = render(cmd.clone())?;
        let mut file = forensics::evidence::create_output(path)?;
        file.write_all(&page)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{} man pages written to {}", pages.len(), dir.display());
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        None => Ok(Config::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            Ok(Config::parse(&text, &p.display().to_string())?)
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::from_arg_matches(&with_help(Cli::command()).get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("conntrail: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Replay {
            config,
            workers,
            record,
            log,
            overwrite,
            append,
            interface,
            pcaps,
            export,
        } => {
            let cfg = load_config(config.as_deref())?;
            let opts = ReplayOptions {
                workers,
                mode: match record {
                    Record::Anomalous => RecordMode::Anomalous,
                    Record::All => RecordMode::All,
                },
                log,
                captures: pcaps,
                progress: io::stderr().is_terminal(),
                interface,
                log_target: match (overwrite, append) {
                    (true, _) => LogTarget::Overwrite,
                    (_, true) => LogTarget::Continue,
                    _ => LogTarget::New,
                },
            };
            let prepared = engine::pipeline::replay::prepare(&cfg, &opts)?;
            let shipping = engine::nats::start(
                &cfg,
                &export,
                &engine::contexts::log_paths(&cfg, &opts.log)?,
            )?;
            let summary = match prepared.run(&cfg, &opts) {
                Ok(summary) => summary,
                Err(e) => {
                    if let Some(shipping) = shipping {
                        shipping.abandon();
                    }
                    return Err(e);
                }
            };
            print_summary(&summary)?;
            let shipped = match shipping {
                Some(shipping) => shipping.finish()?,
                None => ExitCode::SUCCESS,
            };
            let damaged = summary.captures.iter().any(|(_, c)| c.is_damaged());
            Ok(exit::of_run(shipped, summary.records_lost(), damaged))
        }
        Command::Show(a) => forensics::show::run(a),
        Command::Synth {
            output,
            overwrite,
            flows,
            packets,
            seed,
            anomaly_share,
            duration_s,
            proxy,
            requests,
            failure_share,
            v6_share,
        } => {
            if proxy {
                let opts = ProxyOptions {
                    requests,
                    seed,
                    duration_s,
                    failure_share,
                    v6_share,
                };
                return synth_proxy(&opts, &output, overwrite);
            }
            let truth = truth_path(&output);
            let inputs = forensics::evidence::Inputs::default();
            forensics::evidence::check_outputs("synth", &[&output, &truth], &inputs, overwrite)?;
            let opts = SynthOptions {
                flows,
                packets,
                seed,
                anomaly_share,
                duration_s,
            };
            let s = synth::write(&opts, &output, &truth)?;
            println!("capture: {}", output.display());
            println!("truth: {}", truth.display());
            println!("flows: {}", s.flows);
            println!("packets: {}", s.packets);
            for (class, n) in &s.by_class {
                println!("  {class}: {n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Query(a) => forensics::query::run(a),
        Command::Diff(a) => forensics::diff::run(a),
        Command::Correlate(a) => forensics::correlate::run(a),
        Command::Filter(a) => forensics::filter::run(a),
        Command::Extract(a) => forensics::extract::run(a),
        Command::Run(a) => engine::pipeline::live::run(a),
        Command::Export(a) => engine::nats::run_export(a),
        Command::Stats(a) => engine::observe::stats::run(a),
        Command::Recover(a) => engine::crash::run(a),
        Command::Watch(a) => engine::control::run_watch(a),
        Command::Sessions(a) => engine::control::run_sessions(a),
        Command::Session(a) => engine::control::run_session(a),
        Command::Reload(a) => engine::control::run_reload(a),
        Command::Completions { shell } => {
            let mut cli = with_help(Cli::command());
            clap_complete::generate(shell, &mut cli, "conntrail", &mut io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage { dir, overwrite } => manpages(dir.as_deref(), overwrite),
        Command::Config { action } => match action {
            ConfigAction::Default => {
                print!("{DEFAULT_TOML}");
                Ok(ExitCode::SUCCESS)
            }
            ConfigAction::Check { file } => {
                let cfg = load_config(Some(&file))?;
                for warning in engine::preflight::check_config(&cfg)? {
                    eprintln!("conntrail: warning: {warning}");
                }
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

/// `synth --proxy -o PREFIX`: the four files beside each other, and what they hold.
fn synth_proxy(opts: &ProxyOptions, prefix: &Path, overwrite: bool) -> Result<ExitCode> {
    let with = |suffix: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let (front, back) = (with(".front.pcap"), with(".back.pcap"));
    let (conntrace, truth) = (with(".conntrace.jsonl"), with(".truth.jsonl"));
    let outputs: [&Path; 4] = [&front, &back, &conntrace, &truth];
    let inputs = forensics::evidence::Inputs::default();
    forensics::evidence::check_outputs("synth", &outputs, &inputs, overwrite)?;
    let s = write_proxy(opts, &front, &back, &conntrace, &truth)?;
    println!(
        "front capture: {} ({} packets)",
        front.display(),
        s.front_packets
    );
    println!(
        "back capture: {} ({} packets)",
        back.display(),
        s.back_packets
    );
    println!("conntrace: {}", conntrace.display());
    println!("truth: {}", truth.display());
    println!("requests: {}", s.requests);
    for (outcome, n) in &s.by_outcome {
        println!("  {outcome}: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `X.pcap` -> `X.pcap.truth.jsonl`.
fn truth_path(pcap: &Path) -> PathBuf {
    let mut s = pcap.as_os_str().to_owned();
    s.push(".truth.jsonl");
    PathBuf::from(s)
}

fn print_summary(s: &ReplaySummary) -> Result<()> {
    let mut out = io::stdout().lock();
    let secs = s.elapsed.as_secs_f64();
    summary::write_totals(
        &mut out,
        &summary::Totals {
            packets: s.packets(),
            flows: s.flows(),
            records: s.records(),
            ring_drops: s.ring_drops(),
            elapsed: s.elapsed,
        },
    )?;
    writeln!(out, "pps: {:.0}", s.pps())?;
    // Each thread's CPU time against the elapsed time: the busiest thread sets the pace.
    let share = |cpu: std::time::Duration| 100.0 * cpu.as_secs_f64() / secs.max(1e-9);
    let mut threads = vec![format!("reader {:.0} %", share(s.reader_cpu))];
    for w in &s.workers {
        threads.push(format!("worker {} {:.0} %", w.worker, share(w.cpu)));
    }
    threads.push(format!("recorder {:.0} %", share(s.recorder_cpu)));
    writeln!(out, "thread cpu / elapsed: {}", threads.join(", "))?;
    let mut malformed = [0u64; Malformed::COUNT];
    for w in &s.workers {
        for (a, b) in malformed.iter_mut().zip(w.malformed) {
            *a += b;
        }
    }
    let tables: Vec<_> = s.workers.iter().map(|w| &w.table).collect();
    summary::write_closed(&mut out, &tables, &s.contexts)?;
    let not_ip = malformed[Malformed::NotIp.index()];
    let bad: Vec<String> = Malformed::ALL
        .iter()
        .zip(malformed)
        .filter(|(r, n)| *n > 0 && **r != Malformed::NotIp)
        .map(|(r, n)| format!("{} {n}", r.as_str()))
        .collect();
    writeln!(out, "not ip (ARP, STP, ...): {not_ip}")?;
    writeln!(
        out,
        "malformed: {}",
        if bad.is_empty() {
            "0".to_string()
        } else {
            bad.join(", ")
        }
    )?;
    for (path, c) in &s.captures {
        if c.unsupported_link > 0 {
            writeln!(
                out,
                "{}: {} frames of an unsupported link type",
                path.display(),
                c.unsupported_link
            )?;
        }
        for d in &c.damage {
            eprintln!("conntrail: {}: capture damaged {d}", path.display());
        }
        if c.damage_unlisted > 0 {
            eprintln!(
                "conntrail: {}: {} more damaged places",
                path.display(),
                c.damage_unlisted
            );
        }
    }
    for w in &s.workers {
        writeln!(
            out,
            "worker {} (core {}): ip packets {}, flows {}, records {}, ring drops {}, evictions {}, non-ip or malformed {}, {} bytes per connection slot",
            w.worker,
            w.core.map_or_else(|| "unpinned".to_string(), |c| c.to_string()),
            w.table.packets,
            w.table.flows_created,
            w.records,
            w.ring_drops,
            w.table.evictions,
            w.malformed_total(),
            w.bytes_per_flow
        )?;
    }
    writeln!(
        out,
        "log: {} bytes in {} segment(s)",
        s.log_bytes, s.log_segments
    )?;
    let w = &s.log_writer;
    if w.segments_deleted > 0 {
        writeln!(
            out,
            "log retention: {} old segment(s) deleted ({} bytes)",
            w.segments_deleted, w.bytes_deleted
        )?;
    }
    if w.frames_lost > 0 {
        writeln!(
            out,
            "log full: {} record(s) lost for lack of space ({} failed writes)",
            w.frames_lost, w.no_space_errors
        )?;
    }
    exit::warn_records_lost(s.ring_drops(), s.ring_checksum_failures, w.frames_lost);
    Ok(())
}
