//! The control plane's credentials, made fresh for every bed with the
//! machine's `openssl`: a CA, the API server's serving certificate (signed
//! by the CA, valid for its underlay address, the `kubernetes` Service's
//! ClusterIP and the usual in-cluster names), the ServiceAccount signing
//! key pair, and random bearer tokens for the static token file.

use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::error::TestbedError;
use crate::netns::run;

/// Files made by [`Pki::create`], all inside one folder.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA certificate (PEM): what clients trust.
    pub ca_cert: PathBuf,
    /// The CA's key (signs the serving certificate; handed to nothing).
    pub ca_key: PathBuf,
    /// The API server's serving certificate (PEM).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The ServiceAccount token signing key (private, EC P-256).
    pub sa_key: PathBuf,
    /// Its public half (the API server verifies tokens with it).
    pub sa_pub: PathBuf,
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl Pki {
    /// Creates the CA, the serving certificate for `server_ips` and the
    /// ServiceAccount key pair in `dir` (which must exist).
    pub fn create(dir: &Path, server_ips: &[Ipv4Addr]) -> Result<Pki, TestbedError> {
        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("apiserver.crt"),
            server_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let (ca_cert, ca_key) = (path_str(&pki.ca_cert), path_str(&pki.ca_key));
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
        args.extend(ec);
        args.extend([
            "-keyout",
            &ca_key,
            "-out",
            &ca_cert,
            "-subj",
            "/CN=palisade-testbed-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run("openssl", &args)?;

        let csr = path_str(&dir.join("apiserver.csr"));
        let (cert, key) = (path_str(&pki.server_cert), path_str(&pki.server_key));
        let mut args = vec!["req", "-nodes"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=kube-apiserver"]);
        run("openssl", &args)?;
        let mut san = String::from(
            "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
        );
        for ip in server_ips {
            let _ = write!(san, ",IP:{ip}");
        }
        let ext = dir.join("apiserver.ext");
        let ext_text = format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        );
        std::fs::write(&ext, ext_text).map_err(|source| TestbedError::Io {
            path: ext.clone(),
            source,
        })?;
        let ext = path_str(&ext);
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        )?;

        let (sa_key, sa_pub) = (path_str(&pki.sa_key), path_str(&pki.sa_pub));
        run(
            "openssl",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &sa_key,
            ],
        )?;
        run(
            "openssl",
            &["ec", "-in", &sa_key, "-pubout", "-out", &sa_pub],
        )?;
        Ok(pki)
    }
}

/// A random bearer token (32 hex digits from the kernel's generator).
pub fn random_token() -> Result<String, TestbedError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| TestbedError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}
