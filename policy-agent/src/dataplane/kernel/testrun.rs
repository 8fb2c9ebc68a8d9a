//! Running the loaded programs on crafted frames (`BPF_PROG_TEST_RUN`),
//! for tests and benchmarks, without attaching them anywhere.

use super::*;
use aya::maps::{Map, MapData};
use policy_common::{CtKey, FragKey};

impl KernelDataplane {
    /// Maps `ifindex` to `ep_id` without attaching anything: for frames run
    /// through [`test_run`](Self::test_run). `attach_endpoint` does this
    /// and attaches.
    pub fn register_endpoint(&mut self, ifindex: u32, ep_id: u32) -> Result<(), DataplaneError> {
        self.maps
            .endpoints
            .insert(ifindex, EndpointInfo { ep_id, flags: 0 }, 0)
            .map_err(|e| {
                kernel_error(
                    format!("registering ifindex {ifindex} as endpoint {ep_id}"),
                    e,
                )
            })
    }

    /// Runs one Ethernet frame through program `prog` ([`PROG_POD_EGRESS`]
    /// or [`PROG_POD_INGRESS`]) with `BPF_PROG_TEST_RUN`, as if it were
    /// seen on interface `ifindex` — which must exist in the calling
    /// thread's network namespace (1, the loopback, always does). Returns
    /// the program's verdict; maps are read and written as for a real
    /// packet.
    pub fn test_run(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<TestVerdict, DataplaneError> {
        self.test_run_timed(prog, frame, ifindex, 1).map(|(v, _)| v)
    }

    /// [`test_run`](Self::test_run) for a packet the node forwarded (it
    /// arrived on interface `ingress_ifindex`, not from the node's own
    /// stack): what a masqueraded NodePort client's packet looks like.
    pub fn test_run_forwarded(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
    ) -> Result<TestVerdict, DataplaneError> {
        self.run_ctx(prog, frame, ifindex, ingress_ifindex, 1)
            .map(|(v, _)| v)
    }

    /// [`test_run`](Self::test_run) repeated `repeat` times in the kernel;
    /// also returns the mean time per run (the cost of one verdict, for
    /// benchmarks). Conntrack state carries over between repeats, so after
    /// the first run a new flow is an established one.
    pub fn test_run_timed(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(TestVerdict, std::time::Duration), DataplaneError> {
        self.run_ctx(prog, frame, ifindex, 0, repeat)
    }

    /// Forgets what running `frame` through endpoint `ep_id`'s program for
    /// direction `d` left behind as the first packet of its flow: its
    /// conntrack entry and, for a first fragment, its datagram's fragment
    /// entry (the frame parsed as the programs do,
    /// `policy_engine::packet::parse`). The next frame of that flow is then
    /// judged as a first packet again, as the packet fuzz target's model
    /// assumes. Only for frames run through [`test_run`](Self::test_run):
    /// live traffic would lose its reply path.
    pub fn forget_flow(&mut self, ep_id: u32, d: u8, frame: &[u8]) -> Result<(), DataplaneError> {
        use policy_engine::packet::{parse, Frag, Parsed};
        let flow = match parse(frame) {
            Parsed::Flow(f) | Parsed::IcmpError { outer: f, .. } => f,
            Parsed::Link { .. } | Parsed::Malformed => return Ok(()),
        };
        let key = CtKey {
            ep_id,
            dir: d,
            proto: flow.proto,
            sport: flow.sport.to_be_bytes(),
            dport: flow.dport.to_be_bytes(),
            pad: [0; 2],
            saddr: flow.saddr,
            daddr: flow.daddr,
        };
        // Absent (never made, or evicted) is as good as removed.
        let _ = self.maps.conntrack.remove(&key);
        if flow.frag == Frag::First {
            let path = self.paths().map(names::FRAGMENTS);
            let what = || format!("opening pinned map {}", path.display());
            let data = MapData::from_pin(&path).map_err(|e| kernel_error(what(), e))?;
            let mut frags: aya::maps::HashMap<MapData, FragKey, u32> =
                aya::maps::HashMap::try_from(Map::LruHashMap(data))
                    .map_err(|e| kernel_error(what(), e))?;
            let _ = frags.remove(&FragKey {
                ep_id,
                id: flow.frag_id,
                dir: d,
                proto: flow.proto,
                pad: [0; 2],
                saddr: flow.saddr,
                daddr: flow.daddr,
            });
        }
        Ok(())
    }

    pub(super) fn run_ctx(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<(TestVerdict, std::time::Duration), DataplaneError> {
        use aya::{TestRun, TestRunOptions};
        // `struct __sk_buff` up to and including `ifindex` (offset 40);
        // the kernel takes the device from it when it is above 1, and
        // `ingress_ifindex` (offset 36) becomes the packet's input device.
        let mut ctx = [0u8; 44];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat.max(1);
        let p = program(&mut self.ebpf, prog)?;
        let r = p
            .test_run(opts)
            .map_err(|e| kernel_error(format!("test run of {prog}"), e))?;
        Ok((TestVerdict::from_retval(r.return_value), r.duration))
    }
}

/// A program's verdict on a test-run frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestVerdict {
    /// `TC_ACT_UNSPEC`: the packet goes on.
    Allow,
    /// `TC_ACT_SHOT`.
    Drop,
    /// Anything else (a bug).
    Other(u32),
}

impl TestVerdict {
    pub(super) fn from_retval(v: u32) -> Self {
        match v as i32 {
            -1 => Self::Allow,
            2 => Self::Drop,
            _ => Self::Other(v),
        }
    }
}
