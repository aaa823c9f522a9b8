//! The command line: `serve`, `check`, `routes`, `crd`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
use crate::routes::{Action, RouteTable};
use crate::telemetry::{self, LogFormat};

const EXAMPLES: &str = "\
Examples:
  postern serve --config examples/quickstart.yaml
  postern check --config config.yaml
  postern routes --config config.yaml --output json
  postern serve --config settings.yaml --kubernetes --kubeconfig ~/.kube/config
  postern crd | kubectl apply -f -
  postern --log-format json serve --config /etc/postern/config.yaml";

#[derive(Parser)]
#[command(name = "postern", version, about = "Identity-aware access proxy and Kubernetes ingress controller", after_help = EXAMPLES)]
struct Cli {
    /// Log output: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (RUST_LOG syntax); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The YAML config file (Pomerium's keys).
        #[arg(long, short)]
        config: PathBuf,
        /// How long in-flight requests may finish after SIGTERM/SIGINT (e.g. 30s).
        #[arg(long, default_value = "30s", value_parser = parse_grace)]
        shutdown_grace: Duration,
        /// Also take routes from the cluster (as `kubernetes.enabled: true`).
        #[arg(long)]
        kubernetes: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the Route CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
    /// Validate a config file and print every problem; exit 1 if there is any.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the compiled route table in match order.
    Routes {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
        /// Include the routes a running controller builds from the cluster
        /// (one sync; nothing is written to the cluster).
        #[arg(long)]
        kubernetes: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// Which cluster to talk to: these, else the in-cluster service account,
/// else `KUBECONFIG` / `~/.kube/config`.
#[derive(clap::Args)]
struct ClusterArgs {
    /// A kubeconfig file.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig.
    #[arg(long)]
    context: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crate::k8s::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Serve { config, shutdown_grace, kubernetes, cluster } => {
            let cluster = crate::serve::Cluster {
                enable: kubernetes,
                client: crate::k8s::ClientOptions { kubeconfig: cluster.kubeconfig, context: cluster.context },
            };
            // Held to the end: dropping it writes out the queued access log.
            let _logs = telemetry::init_logging(cli.log_format, &cli.log_level);
            // Control work only (reload, metrics, signals); requests run on
            // the per-core workers that `serve` starts.
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("postern: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::serve::run(config, shutdown_grace, cluster)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(crate::serve::ServeError::Config(config::Error::Invalid { problems, .. })) => {
                    for p in &problems {
                        tracing::error!(problem = %p, "invalid config");
                    }
                    eprintln!("postern: {} problem(s) in the config; not starting", problems.len());
                    ExitCode::FAILURE
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    eprintln!("postern: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => check(&config),
        Command::Routes { config, output, kubernetes, cluster } => {
            let cluster = kubernetes
                .then_some(crate::k8s::ClientOptions { kubeconfig: cluster.kubeconfig, context: cluster.context });
            routes(&config, output, cluster)
        }
    }
}

/// Loads and compiles, printing every problem; the table if all went well.
fn load_and_compile(path: &Path) -> Result<(RouteTable, Vec<config::Problem>), String> {
    match config::load(path) {
        Ok(Config { settings, routes, mut problems }) => {
            let (table, compile_problems) = RouteTable::compile(&settings, routes);
            problems.extend(compile_problems);
            Ok((table, problems))
        }
        Err(config::Error::Invalid { mut problems, routes }) => {
            // Settings are unusable, but route problems are still worth
            // reporting in the same pass.
            let (_, compile_problems) = RouteTable::compile(&config::Settings::default(), routes);
            problems.extend(compile_problems);
            let mut text: String = problems.iter().map(|p| format!("{p}\n")).collect();
            text.push_str(&format!("{} problem(s)\n", problems.len()));
            Err(text)
        }
        Err(e) => Err(format!("{e}\n")),
    }
}

fn check(path: &Path) -> ExitCode {
    match load_and_compile(path) {
        Ok((table, problems)) if problems.is_empty() => {
            println!("{}: OK ({} routes)", path.display(), table.len());
            ExitCode::SUCCESS
        }
        Ok((_, problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s)", problems.len());
            ExitCode::FAILURE
        }
        Err(text) => {
            eprint!("{text}");
            ExitCode::FAILURE
        }
    }
}

fn routes(path: &Path, output: Output, cluster: Option<crate::k8s::ClientOptions>) -> ExitCode {
    let (mut table, mut problems) = match load_and_compile(path) {
        Ok(t) => t,
        Err(text) => {
            eprint!("{text}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(options) = cluster {
        match cluster_table(path, &options) {
            Ok((t, p)) => (table, problems) = (t, p),
            Err(e) => {
                eprintln!("postern: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for p in &problems {
        eprintln!("{p} (left out)");
    }
    let rows: Vec<serde_json::Value> = table
        .routes_in_match_order()
        .into_iter()
        .map(|r| {
            let (kind, upstreams) = match &r.action {
                Action::Forward(u) => {
                    ("forward", u.targets.iter().map(|t| format!("{t} (weight {})", t.weight)).collect::<Vec<_>>())
                }
                Action::Respond(d) => ("respond", vec![format!("{} {}", d.status, d.content_type)]),
            };
            let mut flags = Vec::new();
            if r.policy.is_public() {
                flags.push("public");
            }
            if r.allow_websockets {
                flags.push("websockets");
            }
            if matches!(&r.action, Action::Forward(u) if u.tls.skip_verify) {
                flags.push("tls_skip_verify");
            }
            if r.prefix_rewrite.is_some() {
                flags.push("prefix_rewrite");
            }
            serde_json::json!({
                "from": r.from.to_string(),
                "host": r.from.host,
                "port": r.from.port,
                "path": r.rule.to_string(),
                "action": kind,
                "upstreams": upstreams,
                "flags": flags,
                "origin": r.origin.to_string(),
                "name": r.name.as_str(),
            })
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
        Output::Table => print_table(&rows),
    }
    if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The file's routes followed by the cluster's, as `serve --kubernetes`
/// would compile them.
fn cluster_table(
    path: &Path,
    options: &crate::k8s::ClientOptions,
) -> Result<(RouteTable, Vec<config::Problem>), String> {
    let Config { settings, routes, mut problems } = config::load(path).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let cluster = runtime.block_on(async {
        let client = crate::k8s::client(options).await.map_err(|e| e.to_string())?;
        let check_settings = settings.clone();
        let check: crate::k8s::Check = std::sync::Arc::new(move |spec| RouteTable::check(&check_settings, spec));
        crate::k8s::snapshot(client, settings.kubernetes.clone(), check, Duration::from_secs(30))
            .await
            .ok_or_else(|| "the cluster did not sync within 30s".to_string())
    })?;
    let (table, compile_problems) =
        RouteTable::compile(&settings, routes.into_iter().chain(cluster.routes().map(|s| (**s).clone())).collect());
    problems.extend(compile_problems);
    Ok((table, problems))
}

fn print_table(rows: &[serde_json::Value]) {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let join = |v: &serde_json::Value| {
                v.as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            };
            [
                r["from"].as_str().unwrap_or("").to_string(),
                r["path"].as_str().unwrap_or("").to_string(),
                join(&r["upstreams"]),
                join(&r["flags"]),
                r["origin"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    let header = ["FROM", "PATH", "TO", "FLAGS", "ORIGIN"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
}
