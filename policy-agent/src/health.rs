//! The agent's HTTP endpoint for kubelet probes and Prometheus:
//! `/healthz` (the process serves), `/readyz` (CNI socket up, and
//! [`Agent::readiness`](crate::reconcile::Agent::readiness): every watch
//! listed and in sync, the last apply succeeded; the body says why not)
//! and `/metrics` (OpenMetrics text, served with its own content type):
//! endpoints, unenforced pods, applies and their latency, CNI ADD latency,
//! watch errors, apply failures, drops by reason, build info, and verdict
//! counters per local pod (pruned when the pod leaves the node).
//!
//! Any pod without egress isolation can reach this port, so the server
//! bounds what a client can hold: at most [`MAX_PER_PEER`] connections
//! from one address and [`MAX_CONNECTIONS`] in all (more are closed as
//! soon as they are accepted; a pod cannot send from another's address,
//! the datapath drops spoofed sources, so the kubelet's probes from the
//! node keep their own share), [`HEADER_TIMEOUT`] to
//! send a request's headers, one request per connection and
//! [`CONNECTION_TIMEOUT`] for all of it; a failed accept is retried
//! ([`crate::accept`]); and nothing it serves takes the agent's lock: it
//! reads the [`AgentView`] the agent publishes (see [`crate::shared`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::accept::AcceptBackoff;
use crate::flows::FlowHub;
use crate::shared::{AgentView, ViewRx};

/// Most connections served at once; more are closed when accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// Most connections served at once from one address.
pub const MAX_PER_PEER: usize = 8;

/// Open connections, in all and per peer address.
#[derive(Debug, Default)]
struct Slots {
    open: std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

/// One connection's place in [`Slots`], given back on drop.
struct Slot {
    slots: Arc<Slots>,
    peer: std::net::IpAddr,
}

impl Slots {
    /// A place for a connection from `peer`, if the limits allow one.
    fn take(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().ok()?;
        let (total, per_peer) = &mut *open;
        let mine = per_peer.entry(peer).or_default();
        if *total >= MAX_CONNECTIONS || *mine >= MAX_PER_PEER {
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot {
            slots: self.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock() {
            let (total, per_peer) = &mut *open;
            *total = total.saturating_sub(1);
            if let Some(n) = per_peer.get_mut(&self.peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_peer.remove(&self.peer);
                }
            }
        }
    }
}

/// How long a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may last, request and answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Palisade's health and metrics port in the install (`--health-addr
/// NODE_IP:9969`): not Prometheus's 9090, Calico's 9091 or Cilium's
/// 9962–9965.
pub const DEFAULT_PORT: u16 = 9969;

/// Parses `--health-addr`: `IP:PORT`, with an IPv6 address in brackets or
/// bare (`fd00::1:9969`, as `$(HOST_IP):9969` gives on an IPv6 node).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || format!("{text:?} is not IP:PORT");
    let (ip, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, port))
}

/// The content type of what [`render`] writes (prometheus-client's text
/// encoder writes OpenMetrics 1.0, ending in `# EOF`).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Process-wide latency histograms and error counters, fed where the events
/// happen (CNI server, state feeder, watchers) and rendered by [`render`].
#[derive(Debug)]
pub struct AgentMetrics {
    /// CNI ADD, from the request to its answer (seconds).
    pub cni_add: Histogram,
    /// A new cluster state, from its arrival to its enforcement (seconds).
    pub apply_latency: Histogram,
    /// Cluster states that could not be applied.
    pub apply_failures: Counter,
    /// Watch errors by kind of object.
    pub watch_errors: Family<Vec<(String, String)>, Counter>,
    /// Failed accepts by server (`cni`, `health`).
    pub accept_errors: Family<Vec<(String, String)>, Counter>,
    /// Health connections closed at once because [`MAX_CONNECTIONS`], or
    /// [`MAX_PER_PEER`] from their address, were open.
    pub connections_refused: Counter,
    /// Kubernetes Events about enforcement, by outcome (`written`,
    /// `merged` into a series, `dropped` by a full queue, `skipped` for a
    /// policy gone, `failed`); see [`crate::events`].
    pub api_events: Family<Vec<(String, String)>, Counter>,
}

impl AgentMetrics {
    /// Counts a watch error on `kind` (`Pod`, `Namespace`, ...).
    pub fn watch_error(&self, kind: &str) {
        self.watch_errors
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    /// Counts an enforcement Event's `outcome`.
    pub fn api_event(&self, outcome: &str) {
        self.api_events
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc();
    }

    /// Counts a failed accept on `server`.
    pub fn accept_error(&self, server: &str) {
        self.accept_errors
            .get_or_create(&vec![("server".to_string(), server.to_string())])
            .inc();
    }
}

/// The process's [`AgentMetrics`].
pub fn metrics() -> &'static AgentMetrics {
    static METRICS: std::sync::OnceLock<AgentMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| AgentMetrics {
        // 100 µs .. ~13 s.
        cni_add: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        apply_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        apply_failures: Counter::default(),
        watch_errors: Family::default(),
        accept_errors: Family::default(),
        connections_refused: Counter::default(),
        api_events: Family::default(),
    })
}

/// Observes the time from its creation to its drop into a histogram.
pub struct Timer<'a> {
    histogram: &'a Histogram,
    started: std::time::Instant,
}

impl<'a> Timer<'a> {
    /// Starts timing.
    pub fn new(histogram: &'a Histogram) -> Self {
        Timer {
            histogram,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// What the endpoint reports on.
#[derive(Clone)]
pub struct HealthState {
    /// The agent's last published view.
    pub view: ViewRx,
    /// Verdict counters.
    pub hub: Arc<FlowHub>,
    /// Set once the CNI socket is up.
    pub ready: Arc<AtomicBool>,
}

/// Serves on `addr` until the task is aborted (see the module doc for
/// the bounds); only binding can fail.
pub async fn serve(addr: SocketAddr, state: HealthState) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    let slots = Arc::new(Slots::default());
    let mut backoff = AcceptBackoff::new("health");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let Some(slot) = slots.take(peer.ip()) else {
            metrics().connections_refused.inc();
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&req, &state)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "health connection"),
                Err(_) => tracing::debug!("health connection timed out"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

fn respond(req: &Request<Incoming>, state: &HealthState) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness(state) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => match render(state) {
            Ok(body) => {
                let mut resp = text(StatusCode::OK, body);
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(METRICS_CONTENT_TYPE),
                );
                resp
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `Ok` when the agent may say it is ready, else why not (as of the
/// agent's last published view).
pub fn readiness(state: &HealthState) -> Result<(), String> {
    if !state.ready.load(Ordering::Relaxed) {
        return Err("the CNI socket is not bound yet".into());
    }
    state.view.borrow().readiness.clone()
}

/// Renders the metrics from the agent's last published view (OpenMetrics
/// text, [`METRICS_CONTENT_TYPE`]).
pub fn render(state: &HealthState) -> Result<String, std::fmt::Error> {
    let view = state.view.borrow().clone();
    render_view(&view, &state.hub, readiness(state).is_ok())
}

/// Renders the metrics of `view` (see [`render`]); `ready` is what
/// `palisade_ready` says.
pub fn render_view(
    view: &AgentView,
    hub: &FlowHub,
    ready: bool,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("palisade");
    let endpoints = view.endpoints;
    let applies = view.applies;
    let invalid = view.invalid_policies;
    let unenforced = view.unenforced;
    let fit = &view.fit;
    let over = &view.over_budget;
    // Per-pod series only for the pods on the node now.
    hub.retain_pods(&view.live_pods);
    hub.retain_policies(&view.live_policies);
    let m = metrics();
    registry.register(
        "cni_add_duration_seconds",
        "CNI ADD, from the request to its answer",
        m.cni_add.clone(),
    );
    registry.register(
        "apply_duration_seconds",
        "A new cluster state, from its arrival to its enforcement",
        m.apply_latency.clone(),
    );
    registry.register(
        "apply_failures",
        "Cluster states that could not be applied",
        m.apply_failures.clone(),
    );
    registry.register(
        "api_events",
        "Kubernetes Events about enforcement, by outcome",
        m.api_events.clone(),
    );
    registry.register(
        "watch_errors",
        "Errors of the cluster state watches, by kind",
        m.watch_errors.clone(),
    );
    registry.register(
        "accept_errors",
        "Failed accepts of the agent's servers (retried), by server",
        m.accept_errors.clone(),
    );
    registry.register(
        "health_connections_refused",
        "Connections to the health port closed at once because the most it serves (in all or from that address) were open",
        m.connections_refused.clone(),
    );
    let build = Family::<Vec<(String, String)>, Gauge>::default();
    build
        .get_or_create(&vec![
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("layout".into(), policy_common::LAYOUT_VERSION.to_string()),
        ])
        .set(1);
    registry.register("build_info", "The agent's version and map layout", build);
    let gauge = |v: usize| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    registry.register("endpoints", "Local pods enforced", gauge(endpoints));
    registry.register(
        "unenforced_pods",
        "Running pods of this node without enforcement (no endpoint)",
        gauge(unenforced),
    );
    registry.register(
        "quarantined_veths",
        "Host veths isolated both ways because no pod is known for them",
        gauge(view.quarantined),
    );
    registry.register(
        "invalid_policies",
        "Policies that failed to compile (they fail closed)",
        gauge(invalid),
    );
    let over_budget = Family::<Vec<(String, String)>, Gauge>::default();
    for p in over {
        over_budget
            .get_or_create(&vec![
                ("namespace".to_string(), p.namespace.clone()),
                ("policy".to_string(), p.name.clone()),
            ])
            .set(1);
    }
    registry.register(
        "policy_over_budget",
        "Policies over their budget (entries, address classes or CIDR map room): 1 per policy; they fail closed for the pods they select",
        over_budget,
    );
    registry.register(
        "ready",
        "1 while every watch is in sync and the last apply succeeded",
        gauge(usize::from(ready)),
    );
    registry.register(
        "dataplane_loaded",
        "1 once the eBPF programs and maps are loaded (0: the agent cannot enforce, see /readyz)",
        gauge(1),
    );
    let full = Family::<Vec<(String, String)>, Gauge>::default();
    let entries = Family::<Vec<(String, String)>, Gauge>::default();
    let room = Family::<Vec<(String, String)>, Gauge>::default();
    for map in policy_engine::capacity::MapKind::ALL {
        let label = vec![("map".to_string(), map.name().to_string())];
        let denied = fit.denied.values().filter(|(_, d)| d.map == map).count();
        full.get_or_create(&label)
            .set(i64::try_from(denied).unwrap_or(i64::MAX));
        if let Some(n) = fit.needed.get(&map) {
            entries
                .get_or_create(&label)
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        if let Some(cap) = fit.capacity {
            room.get_or_create(&label)
                .set(i64::try_from(cap.of(map)).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "map_full_endpoints",
        "Local pods denied all traffic because their policy does not fit a map, by map",
        full,
    );
    registry.register(
        "map_entries",
        "Entries per generation the compiled state needs, by map",
        entries,
    );
    registry.register(
        "map_capacity",
        "Entries per generation each map has room for",
        room,
    );
    let applied: Counter = Counter::default();
    applied.inc_by(applies);
    registry.register(
        "applies",
        "Compiled states written to the dataplane",
        applied,
    );
    let verdicts = Family::<Vec<(String, String)>, Counter>::default();
    for row in hub.counters() {
        verdicts
            .get_or_create(&vec![
                ("pod".into(), row.pod),
                ("direction".into(), row.direction),
                ("verdict".into(), row.verdict),
            ])
            .inc_by(row.count);
    }
    registry.register(
        "verdicts",
        "Verdict events by local pod, direction and verdict",
        verdicts,
    );
    let by_policy = Family::<Vec<(String, String)>, Counter>::default();
    for row in hub.policy_counters() {
        let (namespace, name) = row.policy.split_once('/').unwrap_or(("", &row.policy));
        by_policy
            .get_or_create(&vec![
                ("namespace".into(), namespace.into()),
                ("policy".into(), name.into()),
                ("verdict".into(), row.verdict),
            ])
            .inc_by(row.count);
    }
    registry.register(
        "policy_verdicts",
        "Connections by NetworkPolicy: allowed by one of its rules, or dropped while it isolated the pod (a drop counts for every policy isolating the pod); series go with the policy",
        by_policy,
    );
    let dropped = Family::<Vec<(String, String)>, Counter>::default();
    for (code, n) in view.drops.iter().map(|(c, n)| (*c, *n)) {
        dropped
            .get_or_create(&vec![(
                "reason".into(),
                crate::flows::reason_text(code).into(),
            )])
            .inc_by(n);
    }
    registry.register(
        "drops",
        "Packets the datapath dropped, by reason (exact, counted in the kernel)",
        dropped,
    );
    let ct_entries = Family::<Vec<(String, String)>, Gauge>::default();
    let ct_refused = Family::<Vec<(String, String)>, Counter>::default();
    for (pod, u) in &view.conntrack {
        for (direction, entries, refused) in [
            ("ingress", u.entries_ingress, u.refused_ingress),
            ("egress", u.entries_egress, u.refused_egress),
        ] {
            let label = vec![
                ("pod".to_string(), pod.clone()),
                ("direction".to_string(), direction.to_string()),
            ];
            ct_entries
                .get_or_create(&label)
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
            ct_refused.get_or_create(&label).inc_by(refused);
        }
    }
    registry.register(
        "conntrack_entries",
        "Conntrack entries each local pod holds, by the direction of the flow's first packet (corrected every 10 s)",
        ct_entries,
    );
    registry.register(
        "conntrack_refused",
        "New flows of each local pod dropped because it held its conntrack budget (--conntrack-per-endpoint), by direction",
        ct_refused,
    );
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::reconcile::Agent;

    #[tokio::test]
    async fn metrics_report_endpoints_applies_and_verdicts() {
        let mut dataplane = FakeDataplane::default();
        dataplane.drops.insert(policy_common::reason::SPOOFED, 7);
        let agent = Arc::new(tokio::sync::Mutex::new(Agent::new(dataplane, vec![])));
        agent
            .lock()
            .await
            .set_snapshot(
                policy_engine::testutil::ClusterBuilder::new()
                    .ns("default", &[])
                    .pod("default/a", &[], &["10.0.0.2"])
                    .policy(
                        "metadata: {name: deny, namespace: default}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
                    )
                    .build(),
            )
            .unwrap();
        agent
            .lock()
            .await
            .add(crate::reconcile::NewEndpoint {
                container_id: "c1".into(),
                pod: policy_engine::model::PodRef::new("default", "a"),
                ifname: "veth-a".into(),
                pod_ifname: "eth0".into(),
                ips: vec![],
            })
            .unwrap();
        {
            let mut a = agent.lock().await;
            let ep = a.endpoints().iter().map(|e| e.ep_id).next().unwrap();
            let usage = crate::dataplane::ConntrackUsage {
                entries_egress: 12,
                refused_egress: 5,
                ..Default::default()
            };
            a.dataplane_mut().conntrack.insert(ep, usage);
            // An endpoint id no local pod holds (gone): no series.
            a.dataplane_mut().conntrack.insert(ep + 100, usage);
        }
        let hub = FlowHub::new();
        let record = |pod: &str| agent_api::FlowRecord {
            time_ns: 1,
            pod: pod.into(),
            direction: "ingress".into(),
            verdict: "dropped".into(),
            reason: "no rule".into(),
            protocol: "TCP".into(),
            src: "10.0.0.1".into(),
            sport: 1,
            dst: "10.0.0.2".into(),
            dport: 80,
            peer: None,
            policy: None,
            rule: None,
            isolated_by: Vec::new(),
            suppressed: 0,
            service: None,
        };
        hub.publish(record("default/a"));
        hub.publish(record("default/gone"));
        // Attributed: one isolating policy of the node, one gone.
        hub.publish(agent_api::FlowRecord {
            isolated_by: vec!["default/deny".into(), "default/deleted".into()],
            ..record("default/gone")
        });
        let (tx, view) = crate::shared::view_channel();
        tx.send_replace(Arc::new(AgentView::of(&*agent.lock().await)));
        let state = HealthState {
            view,
            hub,
            ready: Arc::new(AtomicBool::new(true)),
        };
        agent_api_add_timing();
        let text = render(&state).unwrap();
        assert!(text.contains("palisade_endpoints 1"), "{text}");
        assert!(text.contains("palisade_applies_total 2"), "{text}");
        assert!(text.contains("palisade_ready 1"), "{text}");
        assert!(
            text.contains(r#"palisade_drops_total{reason="spoofed source"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"palisade_verdicts_total{pod="default/a",direction="ingress",verdict="dropped"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"palisade_conntrack_entries{pod="default/a",direction="egress"} 12"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"palisade_conntrack_refused_total{pod="default/a",direction="egress"} 5"#
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("palisade_conntrack_refused_total{").count(),
            2,
            "one series per local pod and direction: {text}"
        );
        assert!(
            text.contains(
                r#"palisade_policy_verdicts_total{namespace="default",policy="deny",verdict="dropped"} 1"#
            ),
            "{text}"
        );
        assert!(
            !text.contains(r#"policy="deleted""#),
            "per-policy series of policies gone are pruned: {text}"
        );
        assert!(
            !text.contains(r#"pod="default/gone""#),
            "per-pod series of pods gone from the node are pruned: {text}"
        );
        assert!(text.contains("palisade_build_info{version=\""), "{text}");
        assert!(
            text.contains("palisade_cni_add_duration_seconds_count"),
            "{text}"
        );
        assert!(
            text.contains("palisade_apply_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("palisade_watch_errors_total{kind=\"Pod\"}"),
            "{text}"
        );
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics, as the content type says: {text}"
        );
    }

    #[test]
    fn connections_are_bounded_per_peer_and_given_back() {
        let slots = Arc::new(Slots::default());
        let pod: std::net::IpAddr = "10.244.0.5".parse().unwrap();
        let node: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<Slot> = (0..MAX_PER_PEER).filter_map(|_| slots.take(pod)).collect();
        assert_eq!(held.len(), MAX_PER_PEER);
        assert!(
            slots.take(pod).is_none(),
            "one address holds its share only"
        );
        assert!(slots.take(node).is_some(), "others keep theirs");
        drop(held);
        assert!(slots.take(pod).is_some(), "given back on close");
    }

    #[test]
    fn health_addresses_parse_with_bare_ipv6() {
        assert_eq!(
            parse_addr("10.0.0.5:9969").unwrap(),
            "10.0.0.5:9969".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_addr("fd00::1:9969").unwrap(),
            "[fd00::1]:9969".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_addr("[fd00::1]:9969").unwrap(),
            "[fd00::1]:9969".parse::<SocketAddr>().unwrap()
        );
        for bad in ["", "10.0.0.5", ":9969", "$(HOST_IP):9969", "10.0.0.5:x"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    fn agent_api_add_timing() {
        drop(Timer::new(&metrics().cni_add));
        metrics().watch_error("Pod");
    }

    /// Served while the agent's lock is held (by a long apply, say): the
    /// endpoint reads the published view only.
    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_without_the_agent_lock() {
        let agent = Arc::new(tokio::sync::Mutex::new(Agent::new(
            FakeDataplane::default(),
            vec![],
        )));
        let (tx, view) = crate::shared::view_channel();
        let _publisher = crate::shared::spawn_publisher(agent.clone(), tx);
        let state = HealthState {
            view: view.clone(),
            hub: FlowHub::new(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let mut published = view;
        published.changed().await.unwrap();
        let _held = agent.lock().await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        tokio::spawn(serve(addr, state));
        let mut reply = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    s.read_to_string(&mut reply),
                )
                .await
                .expect("no answer within 5 s while the agent lock is held")
                .unwrap();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let head = reply.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{reply}");
        assert!(
            head.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{reply}"
        );
        assert!(
            reply.contains("palisade_ready 0") && reply.contains("# EOF"),
            "{reply}"
        );
    }
}
