//! Playing the container runtime: a conflist (bridge + host-local, then
//! `palisade-cni` chained when enabled) and ADD/DEL invocations of the real
//! plugin binaries, run inside the node namespace, with the environment and
//! stdin a runtime gives them (CNI 1.0.0).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::TestbedError;
use crate::netns::{netns_path, run_with_input};

/// Where Debian's containernetworking-plugins live.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";
/// The CNI version the conflist declares.
pub const CNI_VERSION: &str = "1.0.0";
/// How long one plugin may take (palisade-cni waits for the agent).
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A network configuration list and where to find its plugins.
#[derive(Clone, Debug)]
pub struct Network {
    /// The conflist, as a runtime would read it from /etc/cni/net.d.
    pub conflist: Value,
    /// `CNI_PATH` directories, searched in order.
    pub cni_path: Vec<PathBuf>,
    /// The node namespace the plugins run in.
    pub node_netns: String,
}

/// What a runtime remembers about a wired pod (to DEL it later).
#[derive(Clone, Debug)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The pod's namespace name.
    pub netns: String,
    /// `namespace/name`, for messages.
    pub pod: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// The final ADD result (the last plugin's output).
    pub result: Value,
}

impl Attachment {
    fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
    }

    /// The pod's first IPv4 address in the ADD result.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The pod's first IPv6 address in the ADD result.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.addresses().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
    }
}

/// Builds the conflist: `bridge` (`cni0`, gateway, no masquerade) with
/// `host-local` over `subnet` (own `dataDir` under `state_dir`) and, when
/// `agent_socket` is given, `palisade-cni` chained last. IPv4 only; see
/// [`conflist_dual`].
pub fn conflist(
    name: &str,
    subnet: (Ipv4Addr, u8),
    gateway: Ipv4Addr,
    state_dir: &Path,
    agent_socket: Option<&Path>,
) -> Value {
    conflist_dual(name, subnet, gateway, None, state_dir, agent_socket)
}

/// [`conflist`] with, when `v6` (subnet, gateway) is given, a second
/// host-local range: every pod then gets an address of each family, the
/// bridge (`isGateway`) both gateways, and the pods a default route each.
pub fn conflist_dual(
    name: &str,
    subnet: (Ipv4Addr, u8),
    gateway: Ipv4Addr,
    v6: Option<((Ipv6Addr, u8), Ipv6Addr)>,
    state_dir: &Path,
    agent_socket: Option<&Path>,
) -> Value {
    let mut ranges = vec![json!([{
        "subnet": format!("{}/{}", subnet.0, subnet.1),
        "gateway": gateway.to_string(),
    }])];
    let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
    if let Some(((net6, prefix6), gateway6)) = v6 {
        ranges.push(json!([{
            "subnet": format!("{net6}/{prefix6}"),
            "gateway": gateway6.to_string(),
        }]));
        routes.push(json!({"dst": "::/0"}));
    }
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": false,
        "capabilities": {"ips": true},
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            "dataDir": state_dir.join("ipam").display().to_string(),
        },
    })];
    if let Some(socket) = agent_socket {
        plugins.push(json!({
            "type": "palisade-cni",
            "agentSocket": socket.display().to_string(),
        }));
    }
    json!({"cniVersion": CNI_VERSION, "name": name, "plugins": plugins})
}

impl Network {
    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The per-plugin stdin: the plugin entry plus `name`, `cniVersion`,
    /// `runtimeConfig` for declared capabilities, `prevResult` if any.
    fn plugin_config(&self, plugin: &Value, ips: &[IpAddr], prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if plugin["capabilities"]["ips"] == json!(true) && !ips.is_empty() {
            let ips: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
            conf["runtimeConfig"] = json!({"ips": ips});
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn find_plugin(&self, kind: &str) -> Result<PathBuf, TestbedError> {
        self.cni_path
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| TestbedError::MissingBinary {
                what: format!("CNI plugin {kind:?}"),
                path: PathBuf::from(
                    self.cni_path
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":"),
                ),
            })
    }

    fn invoke(
        &self,
        command: &'static str,
        plugin: &Value,
        conf: &Value,
        att: &Attachment,
    ) -> Result<Value, TestbedError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let exe = self.find_plugin(&kind)?;
        let cni_path = std::env::join_paths(&self.cni_path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns_path(&self.node_netns).display()))
            .arg(&exe)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", netns_path(&att.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path)
            .env("CNI_ARGS", &att.args);
        let input = serde_json::to_vec(conf).unwrap_or_default();
        let what = format!("CNI {command} of {} by {}", att.pod, exe.display());
        let done = run_with_input(cmd, &input, PLUGIN_TIMEOUT, &what)?;
        let stderr = String::from_utf8_lossy(&done.stderr).trim().to_string();
        let parsed: Option<Value> = serde_json::from_slice(&done.stdout).ok();
        let fail = |message: String| TestbedError::Cni {
            command,
            pod: att.pod.clone(),
            plugin: kind.clone(),
            message,
            stderr: stderr.clone(),
        };
        if !done.status.success() {
            let message = match &parsed {
                Some(v) if v.get("msg").is_some() => format!(
                    "{} (code {}){}",
                    v["msg"].as_str().unwrap_or_default(),
                    v["code"],
                    v["details"]
                        .as_str()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                _ => format!(
                    "exit status {}: {}",
                    done.status,
                    String::from_utf8_lossy(&done.stdout).trim()
                ),
            };
            return Err(fail(message));
        }
        if command == "DEL" {
            return Ok(Value::Null);
        }
        parsed.ok_or_else(|| {
            fail(format!(
                "ADD printed no JSON result: {:?}",
                String::from_utf8_lossy(&done.stdout)
            ))
        })
    }

    /// ADD: runs every plugin in order, each getting the previous result;
    /// returns the attachment to remember (final result inside). On failure
    /// the plugins already run are DELeted, as a runtime does. IPv4
    /// requests only; see [`Network::add_ips`].
    pub fn add(
        &self,
        pod: &str,
        namespace: &str,
        name: &str,
        container_id: &str,
        netns: &str,
        ips: &[Ipv4Addr],
    ) -> Result<Attachment, TestbedError> {
        let ips: Vec<IpAddr> = ips.iter().copied().map(IpAddr::V4).collect();
        self.add_ips(pod, namespace, name, container_id, netns, &ips)
    }

    /// [`Network::add`] requesting addresses of either family (at most one
    /// per range) through `runtimeConfig.ips`.
    pub fn add_ips(
        &self,
        pod: &str,
        namespace: &str,
        name: &str,
        container_id: &str,
        netns: &str,
        ips: &[IpAddr],
    ) -> Result<Attachment, TestbedError> {
        let mut att = Attachment {
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            pod: pod.to_string(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container_id}"
            ),
            result: Value::Null,
        };
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let conf = self.plugin_config(&plugin, ips, prev.as_ref());
            match self.invoke("ADD", &plugin, &conf, &att) {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    att.result = prev.unwrap_or(Value::Null);
                    if let Err(del) = self.del(&att) {
                        tracing::warn!("after a failed ADD: {del}");
                    }
                    return Err(e);
                }
            }
        }
        att.result = prev.unwrap_or(Value::Null);
        Ok(att)
    }

    /// DEL: runs every plugin in reverse order with the cached result as
    /// `prevResult`; keeps going after a failure and returns the first.
    pub fn del(&self, att: &Attachment) -> Result<(), TestbedError> {
        let prev = (!att.result.is_null()).then_some(&att.result);
        let mut first_err = None;
        for plugin in self.plugins().iter().rev() {
            let conf = self.plugin_config(plugin, &[], prev);
            if let Err(e) = self.invoke("DEL", plugin, &conf, att) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_config_carries_prev_result_and_runtime_ips() {
        let list = conflist(
            "pal",
            (Ipv4Addr::new(10, 244, 0, 0), 22),
            Ipv4Addr::new(10, 244, 0, 1),
            Path::new("/tmp/x"),
            Some(Path::new("/tmp/x/cni.sock")),
        );
        let net = Network {
            conflist: list,
            cni_path: vec![],
            node_netns: "n".into(),
        };
        let plugins = net.plugins();
        assert_eq!(plugins.len(), 2);
        let ips = [IpAddr::V4(Ipv4Addr::new(10, 244, 1, 10))];
        let bridge = net.plugin_config(&plugins[0], &ips, None);
        assert_eq!(bridge["runtimeConfig"]["ips"], json!(["10.244.1.10"]));
        assert_eq!(bridge["cniVersion"], json!("1.0.0"));
        assert_eq!(
            bridge["ipam"]["ranges"][0][0]["subnet"],
            json!("10.244.0.0/22")
        );
        assert!(bridge.get("prevResult").is_none());
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let chained = net.plugin_config(&plugins[1], &ips, Some(&prev));
        assert_eq!(chained["type"], json!("palisade-cni"));
        assert_eq!(chained["agentSocket"], json!("/tmp/x/cni.sock"));
        assert_eq!(chained["prevResult"], prev);
        assert_eq!(chained["name"], json!("pal"));
        assert!(chained.get("runtimeConfig").is_none());
    }

    #[test]
    fn dual_stack_config_has_two_ranges_and_requests_both_families() {
        let net = Network {
            conflist: conflist_dual(
                "pal",
                (Ipv4Addr::new(10, 244, 0, 0), 24),
                Ipv4Addr::new(10, 244, 0, 1),
                Some((
                    ("fd00:10:244::".parse().unwrap(), 64),
                    "fd00:10:244::1".parse().unwrap(),
                )),
                Path::new("/tmp/x"),
                None,
            ),
            cni_path: vec![],
            node_netns: "n".into(),
        };
        let plugins = net.plugins();
        let ips: [IpAddr; 2] = [
            "10.244.0.10".parse().unwrap(),
            "fd00:10:244::10".parse().unwrap(),
        ];
        let bridge = net.plugin_config(&plugins[0], &ips, None);
        assert_eq!(
            bridge["runtimeConfig"]["ips"],
            json!(["10.244.0.10", "fd00:10:244::10"])
        );
        assert_eq!(
            bridge["ipam"]["ranges"][1][0],
            json!({"subnet": "fd00:10:244::/64", "gateway": "fd00:10:244::1"})
        );
        assert_eq!(bridge["ipam"]["routes"][1], json!({"dst": "::/0"}));
        let att = Attachment {
            container_id: "c".into(),
            netns: "p".into(),
            pod: "a/b".into(),
            args: String::new(),
            result: json!({"ips": [
                {"address": "fd00:10:244::10/64"},
                {"address": "10.244.0.10/24"}
            ]}),
        };
        assert_eq!(att.ipv4(), Some(Ipv4Addr::new(10, 244, 0, 10)));
        assert_eq!(att.ipv6(), Some("fd00:10:244::10".parse().unwrap()));
    }
}
