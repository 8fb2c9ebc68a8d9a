//! What a client writes on the agent's CNI socket, through the agent's own
//! framing and decoding (`cni_server::read_request`, with its size limit),
//! then, for the requests that need no kernel, the agent's answer on an
//! in-memory dataplane. Never panics; a request is accepted only within
//! the size limit and decodes to what re-encoding it gives back; every
//! answer encodes as one JSON line that decodes to itself.
//!
//! The first byte chooses whether the rest is sent as is or after enough
//! leading blanks to put the end of the line around the size limit (a
//! libFuzzer input is far shorter than the limit).
#![no_main]

use std::sync::{Arc, OnceLock};

use agent_api::{Request, Response};
use libfuzzer_sys::fuzz_target;
use policy_agent::cni_server::{handle, read_request, SharedAgent, MAX_REQUEST_BYTES};
use policy_agent::dataplane::fake::FakeDataplane;
use policy_agent::reconcile::Agent;

fn agent() -> &'static SharedAgent<FakeDataplane> {
    static AGENT: OnceLock<SharedAgent<FakeDataplane>> = OnceLock::new();
    AGENT.get_or_init(|| {
        Arc::new(tokio::sync::Mutex::new(Agent::new(
            FakeDataplane::default(),
            Vec::new(),
        )))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limit = usize::try_from(MAX_REQUEST_BYTES).unwrap_or(usize::MAX);
    let bytes: Vec<u8> = if mode & 1 == 1 {
        let pad = (limit - 2 + usize::from(mode >> 1) % 4).saturating_sub(rest.len().min(16));
        let mut b = vec![b' '; pad];
        b.extend_from_slice(rest);
        b
    } else {
        rest.to_vec()
    };
    let read = futures::executor::block_on(read_request(&bytes[..]));
    let newline = bytes.iter().position(|b| *b == b'\n');
    let within = newline.map_or(bytes.len() < limit, |i| i < limit);
    let request = match read {
        // Not UTF-8: the connection is dropped unanswered.
        Err(_) => return,
        Ok(Err(message)) => {
            if !within {
                assert!(message.contains("larger than"), "{message}");
            }
            let response = Response::Error { message };
            let line = serde_json::to_string(&response).expect("encodes");
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Response>(&line).ok(), Some(response));
            return;
        }
        Ok(Ok(request)) => request,
    };
    assert!(within, "a request past the limit was accepted: {request:?}");
    let again = serde_json::to_string(&request).expect("encodes");
    assert!(!again.contains('\n'));
    assert_eq!(
        serde_json::from_str::<Request>(&again).ok(),
        Some(request.clone())
    );
    let response = match request {
        // ADD looks for the pod's veth over netlink: not without a kernel
        // bed. Its addresses are parsed the agent's way.
        Request::Add(att) => {
            let pod = policy_engine::model::PodRef {
                namespace: att.pod_namespace.clone(),
                name: att.pod_name.clone(),
            };
            let _ = policy_agent::reconcile::parse_ips(&pod, &att.ips);
            return;
        }
        Request::Flows { .. } | Request::Counters | Request::AgentStatus => return,
        other => futures::executor::block_on(handle(other, agent())),
    };
    let line = serde_json::to_string(&response).expect("encodes");
    assert!(!line.contains('\n'));
    assert_eq!(serde_json::from_str::<Response>(&line).ok(), Some(response));
});
