//! TLS for a test server: a throwaway CA and a certificate for `127.0.0.1`, made with the
//! `openssl` command in the server's temp dir.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The `openssl` runs that make `ca.crt`/`ca.key` and the server's `server.crt`/`server.key`.
const STEPS: [&[&str]; 3] = [
    &[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=cacheback test CA",
    ],
    &[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ],
    &[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ],
];

/// Whether the `openssl` command runs.
pub(crate) fn check_openssl() -> Result<(), Error> {
    let openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    if openssl {
        Ok(())
    } else {
        Err(Error::Missing(
            "the openssl command is missing (it makes the test certificates)".to_owned(),
        ))
    }
}

/// Makes the CA and the server's certificate in `dir`.
pub(crate) fn make_certificates(dir: &Path) -> Result<(), Error> {
    let failed = |why: String| Error::Server(format!("cannot make TLS certificates: {why}"));
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|e| failed(e.to_string()))?;
    for args in STEPS {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| failed(format!("cannot run openssl: {e}")))?;
        if !out.status.success() {
            return Err(failed(format!(
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

/// The files [`make_certificates`] made, as a server reads them.
const FILES: [&str; 3] = ["ca.crt", "server.crt", "server.key"];

/// Copies the CA and the server's certificate made in `from` into `to`.
pub(crate) fn copy_certificates(from: &Path, to: &Path) -> Result<(), Error> {
    for name in FILES {
        std::fs::copy(from.join(name), to.join(name))
            .map_err(|e| Error::Server(format!("cannot copy the TLS file {name}: {e}")))?;
    }
    Ok(())
}

/// The CA's certificate in a TLS server's dir.
pub(crate) fn ca_path(dir: &Path) -> PathBuf {
    dir.join("ca.crt")
}

/// The `redis-server` arguments that point it at the certificates in `dir`.
pub(crate) fn server_args(dir: &Path) -> Vec<OsString> {
    let file = |name: &str| dir.join(name).into_os_string();
    vec![
        "--tls-cert-file".into(),
        file("server.crt"),
        "--tls-key-file".into(),
        file("server.key"),
        "--tls-ca-cert-file".into(),
        file("ca.crt"),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

/// The process's rustls crypto provider (ring), unless one is installed already.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
