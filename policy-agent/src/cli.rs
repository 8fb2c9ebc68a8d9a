//! The users' commands (`simulate`, `explain`, `lint`, `flows`, `status`)
//! with kubectl's conventions: `-f/--filename` (files, folders with `-R`,
//! `-` for stdin), `-o/--output table|wide|json|yaml` (and `html` for
//! `simulate`), exit 0 (fine), 1 (a finding or mismatch CI should stop
//! on), 2 (bad input), and a quiet end when the reader of stdout goes away
//! (`| head`). `simulate` and `explain` also judge the live cluster
//! (`--kube`, with `--context` and `--namespace` as kubectl has them),
//! with candidate files and deletions laid over it (a what-if).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use policy_engine::tools::{self, Input, Output, ToolError};

/// Where manifests come from.
#[derive(Args)]
pub struct ManifestArgs {
    /// Manifest files (YAML/JSON, multi-document, List), folders, or `-`
    /// for stdin.
    #[arg(short = 'f', long = "filename", visible_alias = "manifests", required = true, num_args = 1..)]
    filename: Vec<PathBuf>,
    /// Also read the folders' subfolders.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Unknown fields are warnings instead of errors.
    #[arg(long)]
    lenient: bool,
    /// Count the policies in audit mode (`policy.palisade.dev/mode:
    /// audit`) as enforced; by default they are left out, as the datapath
    /// leaves them out.
    #[arg(long)]
    as_enforced: bool,
}

impl ManifestArgs {
    fn input(self) -> Input {
        Input {
            paths: self.filename,
            recursive: self.recursive,
            lenient: self.lenient,
            as_enforced: self.as_enforced,
            namespace: None,
        }
    }
}

/// The state `simulate` and `explain` judge: manifest files, or the live
/// cluster with candidate files laid over it.
#[derive(Args)]
pub struct StateArgs {
    /// Manifest files (YAML/JSON, multi-document, List), folders, or `-`
    /// for stdin. With `--kube`: candidate objects laid over the cluster's
    /// (each replaces the object of its kind and name, or is added).
    #[arg(short = 'f', long = "filename", visible_alias = "manifests", required_unless_present = "kube", num_args = 1..)]
    filename: Vec<PathBuf>,
    /// Also read the folders' subfolders.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Unknown fields are warnings instead of errors.
    #[arg(long)]
    lenient: bool,
    /// Read the cluster's Pods, Namespaces, NetworkPolicies, Services and
    /// EndpointSlices from the API server (kubeconfig found as kubectl
    /// finds it: $KUBECONFIG, ~/.kube/config, in-cluster). With `-f` or
    /// `--delete`, show what the change would do.
    #[arg(long)]
    kube: bool,
    /// The kubeconfig context to use (`--kube`; default: the current one).
    #[arg(long, requires = "kube")]
    context: Option<String>,
    /// The namespace of `-f` objects that name none and of `--delete NAME`
    /// (`--kube`; default: the context's, else `default`).
    #[arg(short = 'n', long, requires = "kube")]
    namespace: Option<String>,
    /// Delete this NetworkPolicy (`NAMESPACE/NAME`, or `NAME` in
    /// `--namespace`) before judging (`--kube`; repeatable).
    #[arg(long, requires = "kube")]
    delete: Vec<String>,
    /// Count the policies in audit mode (`policy.palisade.dev/mode:
    /// audit`) as enforced; by default they are left out, as the datapath
    /// leaves them out.
    #[arg(long)]
    as_enforced: bool,
}

impl StateArgs {
    fn input(&self, namespace: Option<String>) -> Input {
        Input {
            paths: self.filename.clone(),
            recursive: self.recursive,
            lenient: self.lenient,
            as_enforced: self.as_enforced,
            namespace,
        }
    }
}

/// The live cluster's state, and after an overlay when one is given.
struct LiveState {
    before: policy_engine::model::Snapshot,
    after: Option<policy_engine::model::Snapshot>,
    warnings: Vec<String>,
}

/// A client from the kubeconfig as kubectl finds it (`$KUBECONFIG`,
/// `~/.kube/config`, in-cluster), in `context` if given, and the
/// context's namespace.
async fn kube_client(context: Option<String>) -> anyhow::Result<(kube::Client, String)> {
    let config = match context {
        None => kube::Config::infer().await?,
        Some(context) => {
            let options = kube::config::KubeConfigOptions {
                context: Some(context),
                ..Default::default()
            };
            kube::Config::from_kubeconfig(&options).await?
        }
    };
    let namespace = config.default_namespace.clone();
    Ok((kube::Client::try_from(config)?, namespace))
}

/// Reads the live cluster and lays `-f` and `--delete` over it. Errors
/// are printed; the exit code is 2 for them.
fn live_state(args: &StateArgs) -> Result<LiveState, ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("policy-agent: {e}");
        ExitCode::from(2)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&e))?;
    let (mut before, namespace) = runtime
        .block_on(async {
            let (client, namespace) = kube_client(args.context.clone()).await?;
            let snapshot = policy_agent::source::once::read(client).await?;
            anyhow::Ok((snapshot, namespace))
        })
        .map_err(|e| fail(&format!("reading the cluster: {e:#}")))?;
    if args.as_enforced {
        before.enforce_audited();
    }
    let namespace = args.namespace.clone().unwrap_or(namespace);
    let mut overlay = tools::whatif::Overlay::default();
    let mut warnings = Vec::new();
    if !args.filename.is_empty() {
        let loaded = args
            .input(Some(namespace.clone()))
            .load()
            .map_err(|e| fail(&e))?;
        warnings = loaded.warnings;
        overlay.candidate = loaded.snapshot;
    }
    for d in &args.delete {
        let full = if d.contains('/') {
            d.clone()
        } else {
            format!("{namespace}/{d}")
        };
        let policy = full
            .parse()
            .map_err(|e| fail(&format!("--delete {d}: {e}")))?;
        overlay.delete.push(policy);
    }
    let after = if overlay.is_empty() {
        None
    } else {
        Some(overlay.apply(&before).map_err(|e| fail(&e))?)
    };
    Ok(LiveState {
        before,
        after,
        warnings,
    })
}

/// `simulate`.
#[derive(Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Probes, one JSON object a line (`-` for stdin); a probe's `allowed`
    /// field is the expected verdict (exit 1 on a mismatch). Default: every
    /// pod pair on every declared port.
    #[arg(long)]
    probes: Option<PathBuf>,
    /// `table` (a matrix per port for all pairs), `wide`, `json` (one object
    /// a line), `yaml`, or `html` (one self-contained page: the matrix per
    /// port, the policies involved on hover, changed cells marked). For a
    /// what-if, the probes whose verdict changes.
    #[arg(
        short = 'o',
        long = "output",
        visible_alias = "format",
        default_value = "table"
    )]
    output: Output,
    /// With `--kube` and a change (`-f`, `--delete`): exit 1 when the
    /// change would deny a connection that is allowed now (a CI gate).
    #[arg(long, requires = "kube")]
    fail_on_deny: bool,
}

/// `explain`.
#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Source: `namespace/pod` or an IP address.
    #[arg(long)]
    from: String,
    /// Destination: `namespace/pod`, an IP address, or a Service as
    /// `svc:namespace/name` (judged on each backend).
    #[arg(long)]
    to: String,
    /// Destination port and protocol: `80`, `80/TCP`, `53/udp`, `9/SCTP`.
    #[arg(long)]
    port: String,
    /// `table` (the explanation as text), `wide`, `json` or `yaml`.
    #[arg(
        short = 'o',
        long = "output",
        visible_alias = "format",
        default_value = "table"
    )]
    output: Output,
}

/// `lint`.
#[derive(Args)]
pub struct LintArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    /// Exit 1 when a finding of this severity or worse is reported.
    #[arg(long, default_value = "error", value_parser = ["warning", "error"])]
    fail_on: String,
    /// `table`, `wide` (with the suggested fixes), `json` or `yaml`.
    #[arg(
        short = 'o',
        long = "output",
        visible_alias = "format",
        default_value = "table"
    )]
    output: Output,
}

/// Ends a tool run: a broken pipe quietly, other errors with their message
/// and exit code (2 = bad input).
fn failed(e: &ToolError) -> ExitCode {
    if tools::is_broken_pipe(e) {
        return ExitCode::SUCCESS;
    }
    eprintln!("policy-agent: {e}");
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("policy-agent: warning: {w}");
    }
}

/// `-o html` is `simulate`'s alone.
pub fn no_html(output: Output, command: &str) -> Result<(), ExitCode> {
    if output == Output::Html {
        eprintln!("policy-agent: {command}: -o html is only for simulate");
        return Err(ExitCode::from(2));
    }
    Ok(())
}

/// Reports a simulate outcome's warnings, errors and mismatches.
fn report(
    warnings: &[String],
    errors: &[String],
    mismatches: &[tools::simulate::Mismatch],
    probes: usize,
) {
    warn_all(warnings);
    for e in errors {
        eprintln!("policy-agent: error: {e}");
    }
    for m in mismatches {
        eprintln!("policy-agent: mismatch: {m}");
    }
    if !mismatches.is_empty() {
        eprintln!(
            "policy-agent: {} of {probes} probe(s) differ from their expected verdict",
            mismatches.len(),
        );
    }
}

/// `policy-agent simulate`.
pub fn simulate(args: SimulateArgs) -> ExitCode {
    let code = |c: i32| ExitCode::from(u8::try_from(c).unwrap_or(1));
    let stdout = std::io::stdout();
    if !args.state.kube {
        let opts = tools::simulate::Options {
            input: args.state.input(None),
            probes: args.probes,
            output: args.output,
        };
        return match tools::simulate::run(&opts, &mut stdout.lock()) {
            Ok(o) => {
                report(&o.warnings, &o.errors, &o.mismatches, o.probes);
                code(o.exit_code())
            }
            Err(e) => failed(&e),
        };
    }
    let state = match live_state(&args.state) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some(after) = state.after else {
        let opts = tools::simulate::Options {
            input: Input::default(),
            probes: args.probes,
            output: args.output,
        };
        return match tools::simulate::run_on(
            state.before,
            state.warnings,
            &opts,
            &mut stdout.lock(),
        ) {
            Ok(o) => {
                report(&o.warnings, &o.errors, &o.mismatches, o.probes);
                code(o.exit_code())
            }
            Err(e) => failed(&e),
        };
    };
    let opts = tools::whatif::Options {
        probes: args.probes,
        output: args.output,
        fail_on_deny: args.fail_on_deny,
    };
    match tools::whatif::run(
        state.before,
        after,
        state.warnings,
        &opts,
        &mut stdout.lock(),
    ) {
        Ok(o) => {
            report(&o.warnings, &o.errors, &o.mismatches, o.probes);
            if args.fail_on_deny && o.newly_denied > 0 {
                eprintln!(
                    "policy-agent: the change would deny {} connection(s) allowed now",
                    o.newly_denied
                );
            }
            code(o.exit_code(args.fail_on_deny))
        }
        Err(e) => failed(&e),
    }
}

/// `policy-agent explain`.
pub fn explain(args: ExplainArgs) -> ExitCode {
    if let Err(code) = no_html(args.output, "explain") {
        return code;
    }
    let stdout = std::io::stdout();
    let mut opts = tools::explain::Options {
        input: Input::default(),
        from: args.from,
        to: args.to,
        port: args.port,
        output: args.output,
    };
    let result = if args.state.kube {
        let state = match live_state(&args.state) {
            Ok(s) => s,
            Err(code) => return code,
        };
        warn_all(&state.warnings);
        match state.after {
            Some(after) => {
                tools::explain::run_on(after, Some(state.before), &opts, &mut stdout.lock())
            }
            None => tools::explain::run_on(state.before, None, &opts, &mut stdout.lock()),
        }
    } else {
        opts.input = args.state.input(None);
        tools::explain::run(&opts, &mut stdout.lock())
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

/// `policy-agent lint`.
pub fn lint(args: LintArgs) -> ExitCode {
    if let Err(code) = no_html(args.output, "lint") {
        return code;
    }
    let fail_on = if args.fail_on == "warning" {
        tools::lint::Severity::Warning
    } else {
        tools::lint::Severity::Error
    };
    let opts = tools::lint::Options {
        input: args.manifests.input(),
        output: args.output,
    };
    let stdout = std::io::stdout();
    match tools::lint::run(&opts, &mut stdout.lock()) {
        Ok(report) => {
            warn_all(&report.warnings);
            ExitCode::from(u8::from(
                report.findings.iter().any(|f| f.severity >= fail_on),
            ))
        }
        Err(e) => failed(&e),
    }
}

/// The attribution part of a `flows` table line: ` by ns/policy
/// spec.ingress[0]` for an allowed connection, ` isolated by a, b; no rule
/// matches` for a drop (policies of the pod's own namespace by name alone).
pub fn attribution(r: &agent_api::FlowRecord) -> String {
    if let Some(policy) = &r.policy {
        return match &r.rule {
            Some(rule) => format!(" by {policy} {rule}"),
            None => format!(" by {policy}"),
        };
    }
    if r.isolated_by.is_empty() {
        return String::new();
    }
    let own = r.pod.split_once('/').map(|(ns, _)| ns);
    let names: Vec<&str> = r
        .isolated_by
        .iter()
        .map(|p| match p.split_once('/') {
            Some((ns, name)) if Some(ns) == own => name,
            _ => p.as_str(),
        })
        .collect();
    if r.verdict == "would-drop" {
        return format!(
            " isolated by {} (audit mode); no rule matches, passed",
            names.join(", ")
        );
    }
    format!(" isolated by {}; no rule matches", names.join(", "))
}

/// Prints `policy-agent flows --counters`.
pub fn counters(rows: &[agent_api::CounterRow], output: Output) {
    let mut out = std::io::stdout().lock();
    let _ = match output {
        Output::Json => rows
            .iter()
            .try_for_each(|c| writeln!(out, "{}", serde_json::to_string(c).unwrap_or_default())),
        Output::Yaml => {
            let doc = serde_json::to_value(rows).unwrap_or_default();
            tools::table::write_yaml(&mut out, &doc)
        }
        Output::Table | Output::Wide | Output::Html => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|c| {
                    vec![
                        c.pod.clone(),
                        c.direction.to_uppercase(),
                        c.verdict.to_uppercase(),
                        c.count.to_string(),
                    ]
                })
                .collect();
            tools::table::write(&mut out, &["POD", "DIRECTION", "VERDICT", "COUNT"], &table)
        }
    };
}

/// `status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The agent's socket.
    #[arg(long, default_value = agent_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// `table`, `wide` (with sandbox, addresses and policies), `json` or
    /// `yaml`.
    #[arg(
        short = 'o',
        long = "output",
        visible_alias = "format",
        default_value = "table"
    )]
    output: Output,
    /// Summarize the whole cluster from the API server instead (kubeconfig
    /// found as kubectl finds it): each node's agent ready or not, its
    /// last apply, the policies it could not enforce.
    #[arg(long)]
    kube: bool,
    /// NAMESPACE/NAME of the agents' DaemonSet (`--kube`).
    #[arg(
        long,
        default_value = "palisade-system/palisade-agent",
        requires = "kube"
    )]
    daemonset: String,
}

/// `policy-agent status`: exit 1 when a pod of the node is not enforced, or
/// is denied all traffic because its policy does not fit a map. With
/// `--kube`, exit 1 when a node's agent is not ready or could not enforce a
/// policy.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if let Err(code) = no_html(args.output, "status") {
        return Ok(code);
    }
    if args.kube {
        return status_kube(&args);
    }
    let answer = agent_api::call(
        &args.socket,
        &agent_api::Request::AgentStatus,
        std::time::Duration::from_secs(5),
    )?;
    let status = match answer {
        agent_api::Response::AgentStatus { status } => status,
        // An agent that cannot enforce says why (see `unloaded`).
        agent_api::Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("the agent did not answer with its status: {other:?}"),
    };
    let mut out = std::io::stdout().lock();
    let written = write_status(&status, args.output, &mut out);
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other?,
    }
    for pod in &status.unenforced {
        eprintln!("policy-agent: warning: pod {pod} runs on this node without enforcement");
    }
    for veth in &status.quarantined {
        eprintln!(
            "policy-agent: warning: host veth {veth} is isolated both ways until its pod is known"
        );
    }
    let mut denied = false;
    for e in &status.endpoints {
        if let Some(map) = &e.map_full {
            denied = true;
            eprintln!(
                "policy-agent: warning: pod {} is denied all traffic: its policy does not fit the {map} map",
                e.pod
            );
        }
    }
    Ok(ExitCode::from(u8::from(
        !status.unenforced.is_empty() || denied,
    )))
}

fn status_kube(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let (ns, ds) = args
        .daemonset
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--daemonset {:?} is not NAMESPACE/NAME", args.daemonset))?;
    let summary = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = kube::Client::try_default().await?;
            anyhow::Ok(policy_agent::events::cluster::read(client, ns, ds).await?)
        })?;
    let mut out = std::io::stdout().lock();
    let written = match args.output {
        Output::Json => tools::table::write_json(&mut out, &serde_json::to_value(&summary)?),
        Output::Yaml => tools::table::write_yaml(&mut out, &serde_json::to_value(&summary)?),
        Output::Table | Output::Wide | Output::Html => write_cluster(&summary, &mut out),
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other?,
    }
    Ok(ExitCode::from(u8::from(!summary.healthy())))
}

fn write_cluster(
    summary: &policy_agent::events::cluster::ClusterSummary,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = summary
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.agent.to_uppercase(),
                n.last_apply
                    .as_ref()
                    .map_or("-".into(), |s| format!("{} {}", s.time, s.policy)),
                n.warnings.len().to_string(),
            ]
        })
        .collect();
    tools::table::write(out, &["NODE", "AGENT", "LAST APPLY", "WARNINGS"], &rows)?;
    for n in &summary.nodes {
        if let Some(s) = &n.last_apply {
            writeln!(out, "{}: last apply: {}: {}", n.node, s.policy, s.note)?;
        }
        for w in &n.warnings {
            writeln!(
                out,
                "{}: could not enforce {} ({}, {}x): {}",
                n.node, w.policy, w.reason, w.count, w.note
            )?;
        }
    }
    Ok(())
}

fn write_status(
    status: &agent_api::AgentStatus,
    output: Output,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let doc = || serde_json::to_value(status).unwrap_or_default();
    match output {
        Output::Json => tools::table::write_json(out, &doc()),
        Output::Yaml => tools::table::write_yaml(out, &doc()),
        Output::Table | Output::Wide | Output::Html => {
            let wide = output == Output::Wide;
            let side = |isolated: bool, rules: usize| {
                if isolated {
                    format!("isolated ({rules} allow)")
                } else {
                    "open".to_string()
                }
            };
            let mut rows: Vec<Vec<String>> = status
                .endpoints
                .iter()
                .map(|e| {
                    let mut row = vec![
                        e.pod.clone(),
                        e.interface.clone(),
                        e.endpoint_id.to_string(),
                        e.identity.map_or("-".into(), |i| i.to_string()),
                        side(e.ingress_isolated, e.ingress_rules),
                        side(e.egress_isolated, e.egress_rules),
                        match &e.map_full {
                            Some(map) => format!("DENIED ({map} map full)"),
                            None => "enforced".into(),
                        },
                    ];
                    if wide {
                        row.extend([
                            e.ips.join(","),
                            e.container_id.chars().take(12).collect(),
                            e.policies.join(","),
                        ]);
                    }
                    row
                })
                .collect();
            for pod in &status.unenforced {
                let mut row = vec![pod.clone()];
                row.extend(["-", "-", "-", "-", "-", "NOT ENFORCED"].map(String::from));
                if wide {
                    row.extend(["-", "-", "-"].map(String::from));
                }
                rows.push(row);
            }
            for veth in &status.quarantined {
                let mut row = vec!["-".to_string(), veth.clone()];
                row.extend(["-", "-", "-", "-", "QUARANTINED"].map(String::from));
                if wide {
                    row.extend(["-", "-", "-"].map(String::from));
                }
                rows.push(row);
            }
            let mut head = vec![
                "POD",
                "INTERFACE",
                "ENDPOINT",
                "IDENTITY",
                "INGRESS",
                "EGRESS",
                "STATE",
            ];
            if wide {
                head.extend(["IPS", "SANDBOX", "POLICIES"]);
            }
            tools::table::write(out, &head, &rows)?;
            let last = status
                .last_apply_unix_ms
                .and_then(|ms| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?
                        .as_millis();
                    Some(format!(
                        "{:.1}s ago",
                        now.saturating_sub(u128::from(ms)) as f64 / 1000.0
                    ))
                })
                .unwrap_or_else(|| "never".into());
            writeln!(
                out,
                "node {}: {} endpoint(s), {} not enforced, {} invalid polic(ies), {} over budget, {} apply(s), last apply {last}",
                status.node.as_deref().unwrap_or("-"),
                status.endpoints.len(),
                status.unenforced.len(),
                status.invalid_policies,
                status.over_budget_policies.len(),
                status.applies
            )?;
            for p in &status.over_budget_policies {
                writeln!(out, "  over budget (fails closed): {p}")?;
            }
            Ok(())
        }
    }
}
