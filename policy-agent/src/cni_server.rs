//! The unix socket the CNI plugin talks to (protocol: `agent_api`).
//!
//! A failed accept (`EMFILE`, ...) is logged and retried
//! ([`crate::accept`]), never the end of the server; a client has
//! [`REQUEST_TIMEOUT`] to send its request line.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::accept::AcceptBackoff;
use crate::dataplane::Dataplane;
use crate::flows::FlowHub;
use crate::reconcile::{parse_ips, AgentError, NewEndpoint};
pub use crate::shared::SharedAgent;
use agent_api::{Attachment, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// How long an ADD waits for its pod to appear in the cluster state (the
/// watch may lag the kubelet) before failing so the runtime retries.
pub const ADD_WAIT: Duration = Duration::from_secs(10);

/// Largest request line accepted (an ADD with many addresses and
/// interfaces is a few KiB); a longer one is refused unread.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// How long a client has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket (replacing a stale one) and serves it until the task
/// is aborted: CNI requests, and flow streams and counters from `hub`.
/// Only setting the socket up can fail.
pub async fn serve<D: Dataplane + 'static>(
    socket: &Path,
    agent: SharedAgent<D>,
    hub: Arc<FlowHub>,
) -> std::io::Result<()> {
    let listener = bind(socket)?;
    tracing::info!(socket = %socket.display(), "serving CNI requests");
    let mut backoff = AcceptBackoff::new("cni");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        if let Err(e) = check_peer(&stream) {
            tracing::warn!(error = %e, "CNI connection refused");
            continue;
        }
        let agent = agent.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, agent, hub).await {
                tracing::warn!(error = %e, "CNI connection failed");
            }
        });
    }
}

/// Binds the socket, replacing a stale one, mode 0600.
pub(crate) fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(socket)?;
    // Root only: the plugin runs as root; connections from other users
    // are refused by the peer check as well (no window between bind and
    // chmod).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

async fn handle_connection<D: Dataplane>(
    stream: UnixStream,
    agent: SharedAgent<D>,
    hub: Arc<FlowHub>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let request = tokio::time::timeout(REQUEST_TIMEOUT, read_request(read))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no request within {REQUEST_TIMEOUT:?}"),
            )
        })??;
    let response = match request {
        Ok(Request::Flows { pod, verdict }) => {
            return stream_flows(&mut write, &hub, pod.as_deref(), verdict.as_deref()).await;
        }
        Ok(Request::Counters) => Response::Counters {
            counters: hub.counters(),
        },
        Ok(Request::AgentStatus) => Response::AgentStatus {
            status: crate::status::status(&*agent.lock().await),
        },
        Ok(request @ Request::Del { .. }) => {
            let answer = handle(request, &agent).await;
            let live = agent
                .lock()
                .await
                .endpoints()
                .iter()
                .map(|e| e.pod.to_string())
                .collect();
            hub.retain_pods(&live);
            answer
        }
        Ok(request) => handle(request, &agent).await,
        Err(message) => Response::Error { message },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Reads one request line (at most [`MAX_REQUEST_BYTES`]) and decodes it:
/// `Ok(Err(message))` for a request that is too long or not a [`Request`]
/// (the client is answered with the message), `Err` when reading fails
/// (the connection is dropped).
pub async fn read_request<R: AsyncRead + Unpin>(
    read: R,
) -> std::io::Result<Result<Request, String>> {
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let too_long = !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST_BYTES;
    Ok(if too_long {
        Err(format!("request larger than {MAX_REQUEST_BYTES} bytes"))
    } else {
        serde_json::from_str::<Request>(&line).map_err(|e| format!("unreadable request: {e}"))
    })
}

/// Accepts connections from root and from the agent's own user only
/// (`SO_PEERCRED`).
pub(crate) fn check_peer(stream: &UnixStream) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == own {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "peer uid {} (pid {:?}) is neither root nor the agent's user",
                cred.uid(),
                cred.pid()
            ),
        ))
    }
}

/// Writes matching records, one JSON line each, until the client leaves.
async fn stream_flows(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    hub: &FlowHub,
    pod: Option<&str>,
    verdict: Option<&str>,
) -> std::io::Result<()> {
    let mut rx = hub.subscribe();
    loop {
        match rx.recv().await {
            Ok(record) => {
                if !crate::flows::matches(&record, pod, verdict) {
                    continue;
                }
                let mut out = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
                out.push(b'\n');
                write.write_all(&out).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "a flows client fell behind");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Answers one request.
pub async fn handle<D: Dataplane>(request: Request, agent: &SharedAgent<D>) -> Response {
    let result = match request {
        Request::Add(att) => add(att, agent).await,
        Request::Del { container_id } => agent
            .lock()
            .await
            .del(&container_id)
            .map_err(|e| e.to_string()),
        Request::Check { container_id } => {
            if agent.lock().await.check(&container_id) {
                Ok(())
            } else {
                Err(format!("container {container_id} has no enforced endpoint"))
            }
        }
        Request::Status => agent.lock().await.readiness(),
        Request::Gc { valid } => agent
            .lock()
            .await
            .gc(&valid)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Request::Flows { .. } | Request::Counters | Request::AgentStatus => {
            Err("not a CNI request".into())
        }
    };
    match result {
        Ok(()) => Response::Ok,
        Err(message) => Response::Error { message },
    }
}

/// The message logged once a CNI ADD's endpoint is enforced, with where
/// the time went (`veth_us`, `lock_us`, `attach_us`, `compile_us`,
/// `apply_us`, `total_us`; the benchmarks read them).
pub const ENDPOINT_ENFORCED_LOG: &str = "endpoint enforced";

async fn add<D: Dataplane>(att: Attachment, agent: &SharedAgent<D>) -> Result<(), String> {
    let pod = policy_engine::model::PodRef {
        namespace: att.pod_namespace.clone(),
        name: att.pod_name.clone(),
    };
    let ips = parse_ips(&pod, &att.ips).map_err(|e| e.to_string())?;
    let looking = Instant::now();
    let ifname = host_veth(&pod, &ips, &att.host_interfaces).await?;
    let veth = looking.elapsed();
    let new = NewEndpoint {
        container_id: att.container_id.clone(),
        pod: pod.clone(),
        ifname,
        pod_ifname: att.ifname.clone(),
        ips,
    };
    let started = Instant::now();
    let _timer = crate::health::Timer::new(&crate::health::metrics().cni_add);
    loop {
        let waited = Instant::now();
        let mut locked = agent.lock().await;
        let lock = waited.elapsed();
        let result = locked.add(new.clone());
        let t = locked.last_add_timings();
        drop(locked);
        match result {
            Ok(()) => {
                let us = |d: Duration| d.as_micros() as u64;
                tracing::info!(
                    pod = %pod,
                    ifname = %new.ifname,
                    veth_us = us(veth),
                    lock_us = us(lock),
                    attach_us = us(t.attach),
                    compile_us = us(t.compile),
                    apply_us = us(t.apply),
                    total_us = us(looking.elapsed()),
                    "{ENDPOINT_ENFORCED_LOG}"
                );
                return Ok(());
            }
            Err(AgentError::UnknownPod { .. } | AgentError::NotSynced { .. })
                if started.elapsed() < ADD_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The pod's host-side veth: the one whose peer, in the pod's namespace,
/// holds the pod's address (see [`crate::links::find_pod_veths`]); it must
/// be among the host interfaces the CNI result names, if it names any, and
/// only those are looked at then.
/// Only a result without addresses falls back to the first veth it names.
async fn host_veth(
    pod: &policy_engine::model::PodRef,
    ips: &[std::net::IpAddr],
    named: &[String],
) -> Result<String, String> {
    if ips.is_empty() {
        return crate::links::pick_host_veth(named)
            .await
            .map_err(|e| format!("pod {pod}: {e}"));
    }
    let wanted = std::collections::BTreeMap::from([((), ips.to_vec())]);
    let found = if named.is_empty() {
        crate::links::find_pod_veths(&wanted).await
    } else {
        crate::links::find_pod_veths_among(&wanted, named).await
    }
    .map_err(|e| format!("pod {pod}: {e}"))?;
    match found.into_iter().next().map(|(_, f)| f) {
        Some(Ok(veth)) => Ok(veth.ifname),
        Some(Err(e)) => Err(format!("pod {pod}: {e}")),
        None if named.is_empty() => Err(format!(
            "pod {pod}: no host veth leads to a namespace holding {ips:?}"
        )),
        None => Err(format!(
            "pod {pod}: none of the host veths the CNI result names ({named:?}) leads to a namespace holding {ips:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &[u8] = b"{\"op\":\"status\"}\n";

    #[tokio::test]
    async fn one_line_is_one_request_up_to_the_size_limit() {
        let two = [STATUS, b"{\"op\":\"counters\"}\n"].concat();
        assert_eq!(read_request(&two[..]).await.unwrap(), Ok(Request::Status));
        let limit = usize::try_from(MAX_REQUEST_BYTES).unwrap();
        // Exactly the limit, newline included: read.
        let edge = [vec![b' '; limit - STATUS.len()].as_slice(), STATUS].concat();
        assert_eq!(read_request(&edge[..]).await.unwrap(), Ok(Request::Status));
        // One byte more: refused unread, with a reason.
        let over = [vec![b' '; limit + 1 - STATUS.len()].as_slice(), STATUS].concat();
        let refused = read_request(&over[..]).await.unwrap().unwrap_err();
        assert!(refused.contains("larger than"), "{refused}");
        // Not UTF-8: the connection fails.
        assert!(read_request(&b"\xff\n"[..]).await.is_err());
        // Not a request: answered with why.
        let junk = read_request(&b"{\"op\":\"reboot\"}\n"[..]).await.unwrap();
        assert!(junk.unwrap_err().starts_with("unreadable request"));
    }
}
