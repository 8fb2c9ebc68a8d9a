//! The agent's HTTP endpoint for kubelet probes and Prometheus:
//! `/healthz` (the process serves), `/readyz` (CNI socket up, and
//! [`Agent::readiness`](crate::reconcile::Agent::readiness): every watch
//! listed and in sync, the last apply succeeded; the body says why not)
//! and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::cni_server::SharedAgent;
use crate::dataplane::Dataplane;
use crate::flows::FlowHub;

/// What the endpoint reports on.
pub struct HealthState<D: Dataplane> {
    /// The agent.
    pub agent: SharedAgent<D>,
    /// Verdict counters.
    pub hub: Arc<FlowHub>,
    /// Set once the CNI socket is up.
    pub ready: Arc<AtomicBool>,
}

impl<D: Dataplane> Clone for HealthState<D> {
    fn clone(&self) -> Self {
        Self {
            agent: self.agent.clone(),
            hub: self.hub.clone(),
            ready: self.ready.clone(),
        }
    }
}

/// Serves on `addr` forever.
pub async fn serve<D: Dataplane + 'static>(
    addr: SocketAddr,
    state: HealthState<D>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&req, &state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "health connection");
            }
        });
    }
}

async fn respond<D: Dataplane>(
    req: &Request<Incoming>,
    state: &HealthState<D>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness(state).await {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => match metrics(state).await {
            Ok(body) => text(StatusCode::OK, body),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `Ok` when the agent may say it is ready, else why not.
pub async fn readiness<D: Dataplane>(state: &HealthState<D>) -> Result<(), String> {
    if !state.ready.load(Ordering::Relaxed) {
        return Err("the CNI socket is not bound yet".into());
    }
    state.agent.lock().await.readiness()
}

/// Renders the metrics from the agent's current state.
pub async fn metrics<D: Dataplane>(state: &HealthState<D>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("palisade");
    let (endpoints, applies, invalid, drops, unenforced) = {
        let agent = state.agent.lock().await;
        (
            agent.endpoints().len(),
            agent.applies(),
            agent.invalid_policies(),
            agent.dataplane().drop_counts(),
            agent.unenforced().len(),
        )
    };
    let ready = readiness(state).await.is_ok();
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
        "invalid_policies",
        "Policies that failed to compile (they fail closed)",
        gauge(invalid),
    );
    registry.register(
        "ready",
        "1 while every watch is in sync and the last apply succeeded",
        gauge(usize::from(ready)),
    );
    let applied: Counter = Counter::default();
    applied.inc_by(applies);
    registry.register(
        "applies",
        "Compiled states written to the dataplane",
        applied,
    );
    let verdicts = Family::<Vec<(String, String)>, Counter>::default();
    for row in state.hub.counters() {
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
    let dropped = Family::<Vec<(String, String)>, Counter>::default();
    for (code, n) in drops {
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
                    .build(),
            )
            .unwrap();
        let hub = FlowHub::new();
        hub.publish(agent_api::FlowRecord {
            time_ns: 1,
            pod: "default/a".into(),
            direction: "ingress".into(),
            verdict: "dropped".into(),
            reason: "no rule".into(),
            protocol: "TCP".into(),
            src: "10.0.0.1".into(),
            sport: 1,
            dst: "10.0.0.2".into(),
            dport: 80,
            peer: None,
            rule: None,
            suppressed: 0,
        });
        let state = HealthState {
            agent,
            hub,
            ready: Arc::new(AtomicBool::new(true)),
        };
        let text = metrics(&state).await.unwrap();
        assert!(text.contains("palisade_endpoints 0"), "{text}");
        assert!(text.contains("palisade_applies_total 1"), "{text}");
        assert!(text.contains("palisade_ready 1"), "{text}");
        assert!(
            text.contains(r#"palisade_drops_total{reason="spoofed source"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"palisade_verdicts_total{pod="default/a",direction="ingress",verdict="dropped"} 1"#),
            "{text}"
        );
    }
}
