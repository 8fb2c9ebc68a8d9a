//! Running the loaded programs on crafted frames (`BPF_PROG_TEST_RUN`),
//! for tests and benchmarks, without attaching them anywhere.

use super::*;
use aya::maps::{Map, MapData};
use policy_common::{CtKey, FragKey};

impl KernelDataplane {
    /// Maps `ifindex` to `ep_id` without attaching anything and without a
    /// MAC (frames of any Ethernet source pass the MAC check): for frames
    /// run through [`test_run`](Self::test_run). `attach_endpoint` does
    /// this with the pod's MAC and attaches.
    pub fn register_endpoint(&mut self, ifindex: u32, ep_id: u32) -> Result<(), DataplaneError> {
        self.register(
            ifindex,
            EndpointInfo {
                ep_id,
                ..EndpointInfo::default()
            },
        )
    }

    /// [`register_endpoint`](Self::register_endpoint) with the pod's MAC,
    /// as `attach_endpoint` registers every endpoint.
    pub fn register_endpoint_with_mac(
        &mut self,
        ifindex: u32,
        ep_id: u32,
        mac: [u8; 6],
    ) -> Result<(), DataplaneError> {
        self.register(
            ifindex,
            EndpointInfo {
                ep_id,
                flags: policy_common::ep_info::MAC,
                mac,
                pad: [0; 2],
            },
        )
    }

    fn register(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DataplaneError> {
        let ep_id = info.ep_id;
        self.maps.endpoints.insert(ifindex, info, 0).map_err(|e| {
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

    /// [`test_run_forwarded`](Self::test_run_forwarded) of a packet
    /// carrying `mark` (`skb->mark`), e.g. the client slot `node_ingress`
    /// names in it (`policy_common::client_mark`). The slot is per CPU:
    /// the caller keeps the runs on one CPU.
    pub fn test_run_marked(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
        mark: u32,
    ) -> Result<TestVerdict, DataplaneError> {
        self.run_ctx_marked(prog, frame, ifindex, ingress_ifindex, mark, 1)
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

    /// Removes every conntrack entry behind the datapath's back (as LRU
    /// evictions do), leaving the endpoints' counts as they are: for tests
    /// of [`recount_conntrack`](Self::recount_conntrack).
    #[doc(hidden)]
    pub fn clear_conntrack(&mut self) -> Result<(), DataplaneError> {
        let keys: Vec<CtKey> = self.maps.conntrack.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.maps.conntrack.remove(&k);
        }
        Ok(())
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
        // Absent (never made, or evicted) is as good as removed. A removed
        // entry is given back to the endpoint's conntrack budget, as the
        // datapath gives back what it removes.
        if self.maps.conntrack.remove(&key).is_ok() {
            if let Ok(mut c) = self.maps.ct_count.get(&ep_id, 0) {
                if d == policy_common::dir::INGRESS {
                    c.ingress -= 1;
                } else {
                    c.egress -= 1;
                }
                let _ = self.maps.ct_count.insert(ep_id, c, 0);
            }
        }
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
        self.run_ctx_marked(prog, frame, ifindex, ingress_ifindex, 0, repeat)
    }

    fn run_ctx_marked(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
        mark: u32,
        repeat: u32,
    ) -> Result<(TestVerdict, std::time::Duration), DataplaneError> {
        use aya::{TestRun, TestRunOptions};
        let mut ctx = skb_ctx(ifindex, ingress_ifindex);
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat.max(1);
        let p = program(&mut self.programs, prog)?;
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

/// What one `BPF_PROG_TEST_RUN` of `frame` costs with a classifier that
/// does nothing (`r0 = TC_ACT_UNSPEC; exit`), as the mean over `repeat`
/// runs: the fixed cost of the test run itself (context set-up, the skb,
/// the loop), which a benchmark subtracts from a program's figure to get
/// the cost of its verdict alone.
pub fn empty_classifier_cost(
    frame: &[u8],
    repeat: u32,
) -> Result<std::time::Duration, DataplaneError> {
    let fail = |e| kernel_error("the empty classifier".to_string(), e);
    let prog = load_empty_classifier().map_err(fail)?;
    let ctx = skb_ctx(1, 0);
    let mut attr = TestRunAttr {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: repeat.max(1),
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_PROG_TEST_RUN;
    // `data_in` and `ctx_in` point at `frame` and `ctx`, which outlive the
    // call and are only read (no output buffers are given).
    unsafe { super::sys::bpf_mut(BPF_PROG_TEST_RUN, &mut attr) }.map_err(fail)?;
    Ok(std::time::Duration::from_nanos(u64::from(attr.duration)))
}

/// `struct __sk_buff` up to and including `ifindex` (offset 40): the
/// kernel takes the device from it when it is above 1, and
/// `ingress_ifindex` (offset 36) becomes the packet's input device
/// (`mark` is at offset 8).
fn skb_ctx(ifindex: u32, ingress_ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `prog_flags`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`, up to `ctx_out`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
}

/// Loads `mov64 r0, -1; exit` as a tc classifier.
fn load_empty_classifier() -> std::io::Result<std::os::fd::OwnedFd> {
    // code, dst/src registers, offset, immediate.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = b"GPL\0";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_PROG_LOAD; its
    // pointers point at `insns` and `license`, which outlive the call and
    // are only read.
    let r = unsafe { super::sys::bpf(BPF_PROG_LOAD, &attr) }?;
    super::sys::owned_fd(r)
}
