//! The command line: `probe validate` and `probe run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::logging::{self, LogFormat};
use crate::report::{OutputFormat, Status};
use crate::run::{self, RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "probe",
    version,
    about = "Synthetic-probe health checker for Discord bots",
    long_about = "Synthetic-probe health checker for Discord bots. Probes a bot's exporter \
                  and HTTP endpoints (and, with a prober account, the bot itself on Discord), \
                  and reports results on the terminal or as Prometheus metrics."
)]
pub struct Cli {
    /// Log format on stderr: human-readable text, or JSON lines in the bot's log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, in RUST_LOG syntax (e.g. `info`, `twi_probe=debug`).
    /// Default: `error` for `run` and `validate`, whose results go to stdout.
    #[arg(long, global = true, env = "PROBE_LOG")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a probes.yaml: print `ok` and one line per probe, or every error found.
    Validate {
        /// The configuration file.
        #[arg(long, short, env = "PROBE_CONFIG", default_value = "probes.yaml")]
        config: PathBuf,
    },
    /// Run probes now and print their results. Exit status: 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN (Nagios plugin convention).
    Run {
        /// The configuration file.
        #[arg(long, short, env = "PROBE_CONFIG", default_value = "probes.yaml")]
        config: PathBuf,
        /// Run only this probe (repeatable). Default: all probes.
        #[arg(long = "probe", short = 'p', value_name = "NAME")]
        probes: Vec<String>,
        /// Run each probe N times and print a summary per probe.
        #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        /// Pause between two runs of the same probe (with --count). Default
        /// 1s, or the config's discord.send_interval when command probes run
        /// and it is longer (so no run waits for its channel's send budget).
        #[arg(long, value_parser = parse_duration)]
        interval: Option<Duration>,
        /// Output: one text line per result, or one JSON object per line.
        #[arg(long, short = 'f', value_enum, default_value = "text")]
        format: OutputFormat,
        /// Also write this run's metrics (Prometheus text format) to FILE,
        /// atomically; e.g. for node_exporter's textfile collector.
        #[arg(long, value_name = "FILE")]
        metrics_file: Option<PathBuf>,
        /// Run against an in-process sandbox built from the config (the
        /// target bot simulated under its user id, the probes' guilds and
        /// channels): a real round trip with no credentials.
        #[arg(long)]
        sandbox: bool,
    },
    /// Probe on schedule and serve /metrics for Prometheus, until SIGINT or
    /// SIGTERM (which drain in-flight runs). SIGHUP or POST /-/reload re-reads
    /// the config.
    Serve {
        /// The configuration file.
        #[arg(long, short, env = "PROBE_CONFIG", default_value = "probes.yaml")]
        config: PathBuf,
        /// Address of /metrics, /healthz, /ready and /-/reload (default:
        /// serve.listen from the config, else 0.0.0.0:9477).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Probe an in-process sandbox built from the config, with a
        /// simulated bot that behaves like a real one (a latency mix with a
        /// long tail, an occasional error reply, a short outage now and then)
        /// and simulated users running its slash commands.
        #[arg(long)]
        sandbox: bool,
        /// With --sandbox: about how often the simulated bot has a
        /// spontaneous 20-40 s outage (each gap drawn between half and one
        /// and a half times this), or `off`.
        #[arg(long, value_name = "DURATION|off", default_value = "10m", value_parser = twi_sandbox::parse_outage_rate)]
        sandbox_outages: twi_sandbox::OutageRate,
        /// With --sandbox: how many slash commands the simulated users run
        /// per minute (0: none).
        #[arg(long, default_value_t = 4.0, requires = "sandbox")]
        sandbox_commands_per_minute: f64,
        /// Allow POST /-/reload (refused with 403 otherwise, as in
        /// Prometheus); SIGHUP always reloads.
        #[arg(long = "web.enable-lifecycle")]
        web_enable_lifecycle: bool,
        /// Close a connection that has not sent a complete request head this
        /// long after opening or after its previous response (slow or idle
        /// clients).
        #[arg(long = "web.read-timeout", value_parser = parse_duration, default_value = "10s")]
        web_read_timeout: Duration,
        /// Connections served at once; more wait to be accepted.
        #[arg(long = "web.max-connections", default_value_t = crate::web::listener::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        web_max_connections: u64,
    },
    /// Run the local Discord stand-in (REST v10, Gateway v10, a simulated
    /// Twi Bot Shard) in the foreground until SIGINT or SIGTERM.
    Sandbox {
        /// Sandbox configuration (YAML); the built-in default world when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address of the REST and control server; the gateway and the bot's
        /// exporter listen on the same IP, on free ports.
        #[arg(long, default_value = DEFAULT_SANDBOX_LISTEN)]
        listen: std::net::SocketAddr,
        /// Write the JSON description (URLs, accounts with tokens, ids) to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        describe: Option<PathBuf>,
    },
}

/// `--log-level`'s default for `serve` and `sandbox`.
pub const DEFAULT_SERVE_LOG: &str = "warn,twi_probe=info,twi_sandbox=info";

/// Default address of `probe sandbox`: loopback only, away from the bot's 8000.
pub const DEFAULT_SANDBOX_LISTEN: &str = "127.0.0.1:6990";

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The long-running commands log their own lines at info and the
    // libraries' (serenity's shard manager, hyper, ...) only from warn.
    let default_level = match cli.command {
        Command::Sandbox { .. } | Command::Serve { .. } => DEFAULT_SERVE_LOG,
        _ => "error",
    };
    if let Err(e) = logging::init(
        cli.log_format,
        cli.log_level.as_deref().unwrap_or(default_level),
    ) {
        eprintln!("error: {e}");
        return ExitCode::from(3);
    }
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run {
            config,
            probes,
            count,
            interval,
            format,
            metrics_file,
            sandbox,
        } => {
            let options = RunOptions {
                probes,
                count,
                interval,
                format,
                metrics_file,
            };
            ExitCode::from(run_command(&config, &options, sandbox).code())
        }
        Command::Sandbox {
            config,
            listen,
            describe,
        } => sandbox_command(config.as_deref(), listen, describe.as_deref()),
        Command::Serve {
            config,
            listen,
            sandbox,
            sandbox_outages,
            sandbox_commands_per_minute,
            web_enable_lifecycle,
            web_read_timeout,
            web_max_connections,
        } => serve_command(
            config,
            listen,
            sandbox.then_some(sandbox_outages),
            sandbox_commands_per_minute,
            crate::serve::ServeOptions {
                enable_lifecycle: web_enable_lifecycle,
                web: crate::web::listener::Limits {
                    read_timeout: web_read_timeout,
                    // At most 100,000 (the parser's range).
                    max_connections: web_max_connections as usize,
                },
                ..Default::default()
            },
        ),
    }
}

/// `sandbox`: run against an in-process sandbox whose bot has outages at
/// this rate and whose simulated users run this many slash commands a
/// minute.
fn serve_command(
    path: PathBuf,
    listen: Option<std::net::SocketAddr>,
    sandbox: Option<twi_sandbox::OutageRate>,
    sandbox_commands_per_minute: f64,
    mut options: crate::serve::ServeOptions,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async {
        // Fail fast on a bad config, before anything listens.
        let config = Config::load(&path).map_err(|e| e.to_string())?;
        let mut sandbox_handle = None;
        if let Some(outages) = sandbox {
            let mut sb_config = crate::sandbox::sandbox_for(&config);
            sb_config.bot.behaviour = twi_sandbox::BotBehaviour::realistic();
            let sb = twi_sandbox::Sandbox::start(
                sb_config,
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            )
            .await?;
            let description = sb.description().clone();
            options.token = description
                .accounts
                .iter()
                .find(|a| a.name == "prober")
                .map(|a| crate::config::Secret::new(a.token.clone()));
            let d = description.clone();
            options.rewrite = Some(std::sync::Arc::new(move |c| {
                crate::sandbox::point_at_sandbox(&c, &d)
            }));
            eprintln!(
                "sandbox: Discord stand-in at {} (control {}), simulated {} exporting at {}",
                description.api_base,
                description.control_url,
                config.target.name,
                description.exporter_url.clone().unwrap_or_default()
            );
            eprintln!("sandbox: {}", outages.describe());
            twi_sandbox::occasional_outages(sb.control().clone(), outages);
            // Real traffic for `interactions` probes: users' slash commands.
            twi_sandbox::simulated_users(sb.control().clone(), sandbox_commands_per_minute);
            sandbox_handle = Some(sb);
        }
        let addr = listen.unwrap_or(config.serve.listen);
        // The service loads its own copy: this one would stay for the
        // process's life (~0.5 KB per probe).
        let probes = config.probes.len();
        drop(config);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let service = crate::serve::Service::start(path.clone(), options).await?;
        eprintln!(
            "serving http://{local}/metrics and the status page http://{local}/ ({} probes from {}; /healthz, /ready, POST /-/reload)",
            probes,
            path.display()
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = tokio::spawn(handle_signals(service.clone(), shutdown.clone()));
        let served = crate::serve::run(service, listener, shutdown).await;
        signals.abort();
        if let Some(sb) = sandbox_handle {
            sb.shutdown().await;
        }
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP reloads; SIGINT or SIGTERM starts the draining shutdown.
async fn handle_signals(
    service: std::sync::Arc<crate::serve::Service>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            wait_for_signal().await;
            shutdown.cancel();
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => { let _ = service.reload().await; }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = &service;
        wait_for_signal().await;
    }
    tracing::info!("shutting down: draining in-flight probe runs");
    shutdown.cancel();
}

/// The stand-in runs on one thread: on this kind of machine a single
/// scheduler writes dispatches sooner than two that hand work across (see
/// docs/benchmarks.md), and the sandbox must not distort what it serves.
fn sandbox_command(
    config: Option<&std::path::Path>,
    listen: std::net::SocketAddr,
    describe: Option<&std::path::Path>,
) -> ExitCode {
    let cfg = match config {
        Some(path) => match twi_sandbox::SandboxConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => twi_sandbox::SandboxConfig::default(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let sandbox = match twi_sandbox::Sandbox::start(cfg, listen).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let text = serde_json::to_string_pretty(sandbox.description()).expect("serializable");
        let written = match describe {
            Some(path) => std::fs::write(path, format!("{text}\n"))
                .map_err(|e| format!("cannot write {}: {e}", path.display())),
            None => {
                println!("{text}");
                Ok(())
            }
        };
        if let Err(e) = written {
            eprintln!("{e}");
            sandbox.shutdown().await;
            return ExitCode::FAILURE;
        }
        eprintln!(
            "sandbox: REST {} · gateway {} · control {} (Ctrl-C to stop)",
            sandbox.description().api_base,
            sandbox.description().gateway_url,
            sandbox.description().control_url
        );
        wait_for_signal().await;
        sandbox.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for problem in config.secret_problems() {
                eprintln!(
                    "warning: {}: {problem} (needed by `probe run` and `probe serve` for Discord probes)",
                    config.source.display()
                );
            }
            for crowded in crate::config::turns::crowded_channels(&config) {
                eprintln!("warning: {}: {crowded}", config.source.display());
            }
            println!("ok: {} ({} probes)", path.display(), config.probes.len());
            for p in &config.probes {
                println!(
                    "  {:<24} {:<9} {}, timeout {}",
                    p.name,
                    p.kind.name(),
                    p.schedule,
                    humantime::format_duration(p.timeout)
                );
            }
            for m in config.modules.values() {
                println!(
                    "  {:<24} {:<9} module for GET /probe, timeout {}",
                    m.name,
                    m.kind(),
                    humantime::format_duration(m.template.timeout)
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error{}",
                path.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

fn run_command(path: &std::path::Path, options: &RunOptions, sandbox: bool) -> Status {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Status::Unknown;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return Status::Unknown;
        }
    };
    let mut stdout = std::io::stdout();
    let outcome = runtime.block_on(async {
        if !sandbox {
            return run::run(&config, options, &mut stdout).await;
        }
        run::check_selection(&config, &options.probes)?;
        let sb_config = crate::sandbox::sandbox_for(&config);
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let sb = twi_sandbox::Sandbox::start(sb_config, listen).await?;
        // One slash command every 2 s: a one-shot `interactions` probe sees
        // one within its timeout.
        twi_sandbox::simulated_users(sb.control().clone(), 30.0);
        let description = sb.description().clone();
        eprintln!(
            "sandbox: running {} against an in-process Discord stand-in at {} (simulated {})",
            config.source.display(),
            description.api_base,
            config.target.name
        );
        let pointed = crate::sandbox::point_at_sandbox(&config, &description);
        let token = description
            .accounts
            .iter()
            .find(|a| a.name == "prober")
            .map(|a| crate::config::Secret::new(a.token.clone()));
        let result = run::run_with_token(&pointed, options, token, &mut stdout).await;
        sb.shutdown().await;
        result
    });
    match outcome {
        Ok(status) => status,
        Err(problem) => {
            eprintln!("{problem}");
            Status::Unknown
        }
    }
}
