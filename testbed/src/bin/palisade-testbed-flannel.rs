//! The test bed's stand-in for Flannel's CNI plugin (`type: flannel`),
//! installed on real nodes as `/opt/cni/bin/flannel`: Debian packages no
//! Flannel, and the conflist Palisade's installer meets must be the one
//! kube-flannel.yml writes (`10-flannel.conflist`, `flannel` then
//! `portmap`). Written from Flannel's documented behaviour, not its code:
//!
//! - ADD reads `/run/flannel/subnet.env` (`FLANNEL_NETWORK`,
//!   `FLANNEL_SUBNET`, `FLANNEL_MTU`, `FLANNEL_IPMASQ`), builds the
//!   delegate configuration from the plugin's `delegate` object — `bridge`
//!   unless it names another type, `isGateway` true, `ipMasq` off when
//!   flanneld masquerades, the subnet's MTU, `host-local` IPAM over the
//!   node's subnet with a route to the cluster network — saves it under
//!   `/var/lib/cni/flannel/<container id>`, and runs the delegate with it;
//! - DEL runs the delegate with the saved configuration (nothing saved:
//!   nothing to undo) and removes it;
//! - CHECK runs the delegate with the saved configuration; VERSION answers
//!   the versions the delegate speaks.
//!
//! The delegate's stdout and exit status are the plugin's.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use serde_json::{json, Map, Value};

const SUBNET_ENV: &str = "/run/flannel/subnet.env";
const DATA_DIR: &str = "/var/lib/cni/flannel";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(msg) => {
            // A CNI error on stdout, as the spec asks.
            let err = json!({"cniVersion": "0.3.1", "code": 100, "msg": msg});
            println!("{err}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let command = std::env::var("CNI_COMMAND").map_err(|_| "CNI_COMMAND is not set")?;
    if command == "VERSION" {
        println!(
            "{}",
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading the configuration: {e}"))?;
    let conf: Value =
        serde_json::from_str(&input).map_err(|e| format!("parsing the configuration: {e}"))?;
    let container = std::env::var("CNI_CONTAINERID").map_err(|_| "CNI_CONTAINERID is not set")?;
    if container.contains('/') || container.is_empty() {
        return Err(format!("bad CNI_CONTAINERID {container:?}"));
    }
    let saved = Path::new(DATA_DIR).join(&container);
    match command.as_str() {
        "ADD" => {
            let env = read_subnet_env(Path::new(SUBNET_ENV))?;
            let delegate = delegate_conf(&conf, &env)?;
            std::fs::create_dir_all(DATA_DIR).map_err(|e| format!("{DATA_DIR}: {e}"))?;
            let text = delegate.to_string();
            std::fs::write(&saved, &text).map_err(|e| format!("{}: {e}", saved.display()))?;
            delegate_run(&delegate, &text)
        }
        "DEL" => {
            let Ok(text) = std::fs::read_to_string(&saved) else {
                return Ok(ExitCode::SUCCESS);
            };
            let delegate: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", saved.display()))?;
            let code = delegate_run(&delegate, &text)?;
            if code == ExitCode::SUCCESS {
                let _ = std::fs::remove_file(&saved);
            }
            Ok(code)
        }
        "CHECK" => {
            let text =
                std::fs::read_to_string(&saved).map_err(|e| format!("{}: {e}", saved.display()))?;
            let delegate: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", saved.display()))?;
            delegate_run(&delegate, &text)
        }
        other => Err(format!("unknown CNI_COMMAND {other}")),
    }
}

/// What `subnet.env` says.
#[derive(Debug, PartialEq)]
struct SubnetEnv {
    network: String,
    subnet: String,
    mtu: Option<u32>,
    ipmasq: bool,
}

fn read_subnet_env(path: &Path) -> Result<SubnetEnv, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_subnet_env(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_subnet_env(text: &str) -> Result<SubnetEnv, String> {
    let mut network = None;
    let mut subnet = None;
    let mut mtu = None;
    let mut ipmasq = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().to_string();
        match key.trim() {
            "FLANNEL_NETWORK" => network = Some(value),
            "FLANNEL_SUBNET" => subnet = Some(value),
            "FLANNEL_MTU" => mtu = Some(value.parse().map_err(|_| format!("bad MTU {value}"))?),
            "FLANNEL_IPMASQ" => ipmasq = value == "true",
            _ => {}
        }
    }
    Ok(SubnetEnv {
        network: network.ok_or("no FLANNEL_NETWORK")?,
        subnet: subnet.ok_or("no FLANNEL_SUBNET")?,
        mtu,
        ipmasq,
    })
}

/// The delegate's configuration for plugin configuration `conf`.
fn delegate_conf(conf: &Value, env: &SubnetEnv) -> Result<Value, String> {
    let mut d: Map<String, Value> = match conf.get("delegate") {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("delegate is not an object".into()),
        None => Map::new(),
    };
    for key in ["name", "cniVersion"] {
        if let Some(v) = conf.get(key) {
            d.insert(key.into(), v.clone());
        }
    }
    d.entry("type").or_insert_with(|| json!("bridge"));
    if d.get("type") == Some(&json!("bridge")) {
        d.entry("isGateway").or_insert(json!(true));
    }
    // flanneld masquerades leaving traffic itself when told to.
    d.entry("ipMasq").or_insert(json!(!env.ipmasq));
    if let Some(mtu) = env.mtu {
        d.entry("mtu").or_insert(json!(mtu));
    }
    d.insert(
        "ipam".into(),
        json!({
            "type": "host-local",
            "ranges": [[{"subnet": subnet_network(&env.subnet)?}]],
            "routes": [{"dst": env.network}],
        }),
    );
    // Runtime configuration travels with the delegate, as the runtime
    // passed it.
    if let Some(rc) = conf.get("runtimeConfig") {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    Ok(Value::Object(d))
}

/// `10.244.1.1/24` (flanneld writes the gateway) → `10.244.1.0/24`.
fn subnet_network(subnet: &str) -> Result<String, String> {
    let (addr, len) = subnet
        .split_once('/')
        .ok_or_else(|| format!("bad FLANNEL_SUBNET {subnet}"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("bad FLANNEL_SUBNET {subnet}"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("bad FLANNEL_SUBNET {subnet}"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = std::net::Ipv4Addr::from(u32::from(addr) & mask);
    Ok(format!("{net}/{len}"))
}

/// Runs the delegate plugin (found on `CNI_PATH`) with the same
/// environment and `text` on stdin; its stdout becomes ours.
fn delegate_run(delegate: &Value, text: &str) -> Result<ExitCode, String> {
    let kind = delegate
        .get("type")
        .and_then(Value::as_str)
        .ok_or("the delegate has no type")?;
    if kind.contains('/') {
        return Err(format!("bad delegate type {kind}"));
    }
    let path = std::env::var("CNI_PATH").unwrap_or_default();
    let program = path
        .split(':')
        .map(|d| PathBuf::from(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("delegate plugin {kind} not found on CNI_PATH {path}"))?;
    let mut child = Command::new(&program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to {kind}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    std::io::stdout()
        .write_all(&out.stdout)
        .map_err(|e| e.to_string())?;
    Ok(if out.status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(u8::try_from(out.status.code().unwrap_or(1)).unwrap_or(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn the_delegate_is_a_gateway_bridge_over_the_nodes_subnet() {
        let env = parse_subnet_env(ENV).unwrap();
        let conf = json!({"name": "cbr0", "cniVersion": "0.3.1", "type": "flannel",
            "delegate": {"hairpinMode": true, "isDefaultGateway": true}});
        let d = delegate_conf(&conf, &env).unwrap();
        assert_eq!(d["type"], "bridge");
        assert_eq!(d["name"], "cbr0");
        assert_eq!(d["isGateway"], true);
        assert_eq!(d["isDefaultGateway"], true);
        assert_eq!(d["hairpinMode"], true);
        assert_eq!(d["ipMasq"], false);
        assert_eq!(d["mtu"], 1450);
        assert_eq!(d["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(d["ipam"]["routes"][0]["dst"], "10.244.0.0/16");
    }

    #[test]
    fn a_subnet_env_without_the_network_is_an_error() {
        assert!(parse_subnet_env("FLANNEL_SUBNET=10.244.1.1/24\n").is_err());
        assert!(subnet_network("10.244.1.1").is_err());
    }
}
