//! An agent that cannot enforce, saying so.
//!
//! When the node cannot run Palisade's programs (the kernel lacks BTF or
//! room under `RLIMIT_MEMLOCK`, a seccomp profile refuses `bpf(2)`, the
//! runtime does not grant `CAP_BPF`, ...), crash-looping would hide the
//! reason in the restart count, and the chain entry, if it were written,
//! would fail every pod's CNI ADD on the node. Instead the agent stays up
//! and reports the reason everywhere users look, while the node's pods
//! keep starting without Palisade (the chain entry is written only by an
//! agent that enforces, see [`crate::uninstall::ChainKeeper`]):
//!
//! - its log, once, at error level;
//! - `/readyz` answers 503 with the reason (the DaemonSet is not ready),
//!   `/healthz` 200 (restarting would not help);
//! - `/metrics`: `palisade_dataplane_loaded 0`, `palisade_ready 0`;
//! - its CNI socket answers every request, `policy-agent status` and a
//!   CNI ADD from an entry a previous agent left included, with an error
//!   naming the reason (fail closed where the node was enforced before).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use agent_api::Response;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::health::{text, METRICS_CONTENT_TYPE};

/// The sentence every answer carries.
pub fn message(reason: &str) -> String {
    format!("the Palisade agent on this node cannot enforce policies: {reason}")
}

/// The metrics of an agent that cannot enforce (OpenMetrics text).
pub fn render() -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("palisade");
    let zero = || Gauge::<i64>::default();
    registry.register(
        "ready",
        "1 while every watch is in sync and the last apply succeeded",
        zero(),
    );
    registry.register(
        "dataplane_loaded",
        "1 once the eBPF programs and maps are loaded (0: the agent cannot enforce, see /readyz)",
        zero(),
    );
    let build = Family::<Vec<(String, String)>, Gauge>::default();
    build
        .get_or_create(&vec![
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("layout".into(), policy_common::LAYOUT_VERSION.to_string()),
        ])
        .set(1);
    registry.register("build_info", "The agent's version and map layout", build);
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr` forever.
pub async fn serve_health(addr: SocketAddr, reason: Arc<str>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics (not ready: cannot enforce)");
    loop {
        let (stream, _) = listener.accept().await?;
        let reason = reason.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let reason = reason.clone();
                    async move {
                        Ok::<_, Infallible>(match req.uri().path() {
                            "/healthz" => text(StatusCode::OK, "ok\n".into()),
                            "/readyz" => text(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {}\n", message(&reason)),
                            ),
                            "/metrics" => match render() {
                                Ok(body) => {
                                    let mut resp = text(StatusCode::OK, body);
                                    resp.headers_mut().insert(
                                        hyper::header::CONTENT_TYPE,
                                        hyper::header::HeaderValue::from_static(
                                            METRICS_CONTENT_TYPE,
                                        ),
                                    );
                                    resp
                                }
                                Err(_) => text(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "encoding failed\n".into(),
                                ),
                            },
                            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
                        })
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "health connection");
            }
        });
    }
}

/// Serves the CNI socket forever, answering every request with
/// [`message`].
pub async fn serve_socket(socket: &Path, reason: Arc<str>) -> std::io::Result<()> {
    let listener = crate::cni_server::bind(socket)?;
    tracing::info!(socket = %socket.display(), "answering CNI requests with the reason the agent cannot enforce");
    loop {
        let (stream, _) = listener.accept().await?;
        if let Err(e) = crate::cni_server::check_peer(&stream) {
            tracing::warn!(error = %e, "CNI connection refused");
            continue;
        }
        let reason = reason.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            if crate::cni_server::read_request(read).await.is_err() {
                return;
            }
            let answer = Response::Error {
                message: message(&reason),
            };
            if let Ok(mut out) = serde_json::to_vec(&answer) {
                out.push(b'\n');
                let _ = write.write_all(&out).await;
            }
        });
    }
}

/// Logs the reason and serves both until SIGINT/SIGTERM; the socket is
/// removed on the way out.
pub async fn run(
    reason: String,
    health_addr: Option<SocketAddr>,
    cni_socket: &Path,
) -> anyhow::Result<()> {
    tracing::error!(
        %reason,
        "cannot load the eBPF programs: this agent does not enforce, and does not chain palisade-cni (the node's pods start without Palisade); not ready until the cause is fixed and the pod restarted"
    );
    let reason: Arc<str> = reason.into();
    if let Some(addr) = health_addr {
        let reason = reason.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_health(addr, reason).await {
                tracing::error!(%addr, error = %e, "health endpoint failed");
            }
        });
    }
    let socket = cni_socket.to_path_buf();
    let server = tokio::spawn(async move { serve_socket(&socket, reason).await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
        r = server => match r {
            Ok(Err(e)) => return Err(anyhow::anyhow!("CNI socket {}: {e}", cni_socket.display())),
            Ok(Ok(())) => {}
            Err(e) => return Err(e.into()),
        },
    }
    let _ = std::fs::remove_file(cni_socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_metrics_say_not_loaded_and_not_ready() {
        let text = super::render().unwrap();
        assert!(text.contains("palisade_dataplane_loaded 0"), "{text}");
        assert!(text.contains("palisade_ready 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
