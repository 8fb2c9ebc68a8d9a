//! EndpointSlices (`discovery.k8s.io`): the backends of a Service as
//! kube-proxy reads them. A Service's backends are the union of its slices
//! (label `kubernetes.io/service-name`); unlike core `v1` Endpoints they do
//! not stop at 1,000 addresses. Each slice becomes one
//! [`EndpointSubset`]: the first address of each ready endpoint (a missing
//! `ready` condition counts as ready, as the API says), with the slice's
//! ports. Slices of `addressType` FQDN are left out (kube-proxy does not
//! translate to them), and so are ports without a number.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::service::{
    endpoint_port, object_ref, parse_ip, pod_target, EndpointAddress, EndpointSubset, ServiceRef,
};
use super::{ModelError, PodRef, Snapshot};

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice, named by its Service and its own name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceRef {
    /// The Service (the slice's namespace and `kubernetes.io/service-name`).
    pub service: ServiceRef,
    /// The slice's own name.
    pub name: String,
}

impl std::fmt::Display for SliceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} (of Service {})",
            self.service.namespace, self.name, self.service
        )
    }
}

/// The slice's reference, if it names a Service.
pub fn slice_ref(slice: &EndpointSlice) -> Option<SliceRef> {
    let meta = &slice.metadata;
    let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(SliceRef {
        service: PodRef::new(
            meta.namespace.clone().unwrap_or_else(|| "default".into()),
            service.clone(),
        ),
        name: meta.name.clone()?,
    })
}

/// Builds the snapshot entry of an EndpointSlice (ready endpoints only).
pub fn slice_from(slice: &EndpointSlice) -> Result<(SliceRef, EndpointSubset), ModelError> {
    const KIND: &str = "EndpointSlice";
    let own = object_ref(
        KIND,
        slice.metadata.namespace.as_ref(),
        slice.metadata.name.as_ref(),
    )?;
    let r = slice_ref(slice).ok_or_else(|| ModelError::InvalidField {
        kind: KIND,
        object: own.to_string(),
        field: format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
        message: "missing: the slice belongs to no Service".into(),
    })?;
    let mut out = EndpointSubset::default();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Ok((r, out));
    }
    for (ei, e) in slice.endpoints.iter().enumerate() {
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        let Some(text) = e.addresses.first().filter(|_| ready) else {
            continue;
        };
        let ip = parse_ip(KIND, &own, format!("endpoints[{ei}].addresses[0]"), text)?;
        let pod = pod_target(e.target_ref.as_ref(), &own.namespace);
        out.addresses.push(EndpointAddress { ip, pod });
    }
    for (pi, p) in slice.ports.iter().flatten().enumerate() {
        let Some(n) = p.port else { continue };
        let field = format!("ports[{pi}]");
        out.ports.push(endpoint_port(
            KIND,
            &own,
            &field,
            p.name.as_deref(),
            n,
            p.protocol.as_deref(),
        )?);
    }
    Ok((r, out))
}

impl Snapshot {
    /// Sets (`Some`) or removes (`None`) one EndpointSlice of a Service,
    /// and with it the Service's backends (the union of its slices; none
    /// left: the Service's backends are unknown again). Whether anything
    /// changed.
    pub fn set_endpoint_slice(&mut self, slice: &SliceRef, subset: Option<EndpointSubset>) -> bool {
        let slices = self
            .endpoint_slices
            .entry(slice.service.clone())
            .or_default();
        let changed = match subset {
            Some(s) => slices.insert(slice.name.clone(), s.clone()).as_ref() != Some(&s),
            None => slices.remove(&slice.name).is_some(),
        };
        if slices.is_empty() {
            self.endpoint_slices.remove(&slice.service);
            if changed {
                self.service_endpoints.remove(&slice.service);
            }
        } else if changed {
            let union: Vec<EndpointSubset> = slices.values().cloned().collect();
            self.service_endpoints.insert(slice.service.clone(), union);
        }
        changed
    }

    /// Every EndpointSlice held.
    pub fn endpoint_slice_refs(&self) -> Vec<SliceRef> {
        self.endpoint_slices
            .iter()
            .flat_map(|(service, slices)| {
                slices.keys().map(move |name| SliceRef {
                    service: service.clone(),
                    name: name.clone(),
                })
            })
            .collect()
    }
}

/// A Service's slices by name.
pub type Slices = BTreeMap<String, EndpointSubset>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn slices_of_a_service_are_its_backends_together() {
        let a = slice(serde_json::json!({
            "metadata": {"name": "web-a", "namespace": "x", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "a"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["203.0.113.5"]}
            ],
            "ports": [{"name": "h", "port": 8080, "protocol": "TCP"}, {"name": "any"}]
        }));
        let b = slice(serde_json::json!({
            "metadata": {"name": "web-b", "namespace": "x", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.3"]}],
            "ports": [{"name": "h", "port": 8080}]
        }));
        let (ra, sa) = slice_from(&a).unwrap();
        assert_eq!(ra.service, PodRef::new("x", "web"));
        let ips: Vec<String> = sa.addresses.iter().map(|a| a.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1", "203.0.113.5"]);
        assert_eq!(sa.addresses[0].pod, Some(PodRef::new("x", "a")));
        assert_eq!(sa.ports.len(), 1);
        assert_eq!(sa.ports[0].protocol, Protocol::Tcp);
        let (rb, sb) = slice_from(&b).unwrap();
        let mut s = Snapshot::default();
        assert!(s.set_endpoint_slice(&ra, Some(sa.clone())));
        assert!(!s.set_endpoint_slice(&ra, Some(sa)));
        assert!(s.set_endpoint_slice(&rb, Some(sb)));
        assert_eq!(s.service_endpoints[&ra.service].len(), 2);
        assert_eq!(s.endpoint_slice_refs(), [ra.clone(), rb.clone()]);
        assert!(s.set_endpoint_slice(&ra, None));
        assert_eq!(s.service_endpoints[&ra.service].len(), 1);
        assert!(s.set_endpoint_slice(&rb, None));
        assert!(!s.service_endpoints.contains_key(&ra.service));
        assert!(s.endpoint_slice_refs().is_empty());
        // No Service label: an error naming the label.
        let lone = slice(serde_json::json!({
            "metadata": {"name": "lone", "namespace": "x"},
            "addressType": "IPv4", "endpoints": []
        }));
        let e = slice_from(&lone).unwrap_err().to_string();
        assert!(e.contains(SERVICE_NAME_LABEL), "{e}");
    }
}
