//! Each endpoint's conntrack budget: the entries it holds, per direction,
//! are counted in [`CT_COUNT`] (one shared entry per endpoint, updated
//! with atomic adds), and a new flow of an endpoint that holds
//! `Config::ct_limit` entries in its direction is not tracked: the caller
//! drops it ([`policy_common::reason::CT_BUDGET`]) and it is counted per
//! endpoint in [`CT_REFUSED`]. So one pod opening flows as fast as it can
//! fills its own share of the shared LRU map, never evicts the flows of
//! every other pod. One lookup per new flow and per removed entry; no
//! loops. User space corrects the counts now and then (entries the LRU
//! evicted or that expired untouched are never taken off here).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use policy_common::{dir, CtCount, CtKey, CtRefused};

use crate::{
    maps::{CONFIG, CT_COUNT, CT_REFUSED},
    pipeline::PacketCtx,
};

/// The count of `d` in `c`.
#[inline(always)]
fn slot(c: *mut CtCount, d: u8) -> *mut i64 {
    // SAFETY: only the address of a field is taken.
    unsafe {
        if d == dir::INGRESS {
            core::ptr::addr_of_mut!((*c).ingress)
        } else {
            core::ptr::addr_of_mut!((*c).egress)
        }
    }
}

/// Takes one entry of the endpoint's budget for a new flow in `pkt.dir`;
/// `false` (and counted as refused) when it holds its budget already.
#[inline(always)]
pub fn take(pkt: &PacketCtx) -> bool {
    let Some(cfg) = CONFIG.get_ptr(0) else {
        return true;
    };
    // SAFETY: the array's single entry; one aligned load.
    let limit = unsafe { core::ptr::read_volatile(&(*cfg).ct_limit) };
    if limit == 0 {
        return true;
    }
    let Some(c) = CT_COUNT.get_ptr_mut(&pkt.ep_id) else {
        let mut fresh = CtCount::default();
        // SAFETY: a pointer to a local.
        unsafe { *slot(&mut fresh, pkt.dir) = 1 };
        let _ = CT_COUNT.insert(&pkt.ep_id, &fresh, 0);
        return true;
    };
    let n = slot(c, pkt.dir);
    // SAFETY: a value of a shared map entry; one aligned load (a racing
    // add may be missed, which lets at most one flow per CPU past).
    if unsafe { core::ptr::read_volatile(n) } >= i64::from(limit) {
        refused(pkt);
        return false;
    }
    add(n, 1);
    true
}

/// Counts a new flow refused for the budget (per CPU: no atomic).
#[inline(always)]
fn refused(pkt: &PacketCtx) {
    match CT_REFUSED.get_ptr_mut(&pkt.ep_id) {
        // SAFETY: this CPU's value of a per-CPU map entry.
        Some(r) => unsafe {
            if pkt.dir == dir::INGRESS {
                (*r).ingress += 1;
            } else {
                (*r).egress += 1;
            }
        },
        None => {
            let mut fresh = CtRefused::default();
            if pkt.dir == dir::INGRESS {
                fresh.ingress = 1;
            } else {
                fresh.egress = 1;
            }
            let _ = CT_REFUSED.insert(&pkt.ep_id, &fresh, 0);
        }
    }
}

/// Gives back the budget entry of `key`, whose conntrack entry was just
/// removed.
#[inline(always)]
pub fn give_back(key: &CtKey) {
    if let Some(c) = CT_COUNT.get_ptr_mut(&key.ep_id) {
        add(slot(c, key.dir), -1);
    }
}

/// An atomic add (the eBPF target's core has no atomic read-modify-write
/// types; the intrinsic is the BPF `atomic add`, shared by every CPU).
#[inline(always)]
fn add(n: *mut i64, v: i64) {
    // SAFETY: `n` points at an aligned i64 of a map value.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(n, v) };
}
