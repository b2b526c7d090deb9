//! First-start material in the data dir: a CA, a serving certificate signed by it, the token
//! signing key, the admin token and a kubeconfig — so `kubectl --kubeconfig DATA_DIR/kubeconfig`
//! works at once, as with k3s.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::Io { path: path.display().to_string(), source: e }),
    }
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| PkiError::Io { path: path.display().to_string(), source: e };
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

pub struct Pki {
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_der: Vec<u8>,
    pub serving_cert_der: Vec<u8>,
    pub signing_secret: Vec<u8>,
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "converge-ca");
    params.distinguished_name.push(DnType::OrganizationName, "converge");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    Ok(params)
}

/// Load the CA and signing key from `dir`, creating them on first start, and issue a fresh
/// serving certificate for `sans` (so a changed `--tls-san` takes effect on restart).
pub fn ensure(dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
    let ca_key_path = dir.join("ca.key");
    let ca_cert_path = dir.join("ca.crt");
    let ca_key = match read(&ca_key_path)? {
        Some(pem) => KeyPair::from_pem(&pem)?,
        None => {
            let key = KeyPair::generate()?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            key
        }
    };
    // Re-deriving the CA certificate from the same name and key keeps issuer and key identifiers
    // identical, so certificates signed now chain to the ca.crt clients already hold.
    let ca_cert = ca_params()?.self_signed(&ca_key)?;
    let ca_pem = match read(&ca_cert_path)? {
        Some(pem) => pem,
        None => {
            let pem = ca_cert.pem();
            write_private(&ca_cert_path, &pem)?;
            pem
        }
    };
    let serving_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, "converge");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let serving = params.signed_by(&serving_key, &ca_cert, &ca_key)?;
    let secret_path = dir.join("signing.key");
    let signing_secret = match read(&secret_path)? {
        Some(hex) => {
            decode_hex(hex.trim()).ok_or_else(|| PkiError::Invalid(format!("{} is not hex", secret_path.display())))?
        }
        None => {
            use rand::RngCore;
            let mut bytes = vec![0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            write_private(&secret_path, &encode_hex(&bytes))?;
            bytes
        }
    };
    Ok(Pki {
        ca_pem,
        serving_cert_pem: serving.pem(),
        serving_cert_der: serving.der().to_vec(),
        serving_key_der: serving_key.serialize_der(),
        signing_secret,
    })
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() < 32 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// The subject names the serving certificate covers.
pub fn default_sans(extra: &[String]) -> Vec<String> {
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim().to_string();
        if !host.is_empty() {
            sans.push(host);
        }
    }
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

/// A kubeconfig for `server` with the CA inline and the token as the user.
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: converge\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: converge-admin\n  user:\n    token: {token}\ncontexts:\n- name: converge\n  context:\n    cluster: converge\n    user: converge-admin\n    namespace: default\ncurrent-context: converge\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_start_keeps_the_ca_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path(), &default_sans(&[])).expect("first");
        let second = ensure(dir.path(), &default_sans(&["converge.example".into()])).expect("second");
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(first.signing_secret, second.signing_secret);
        assert_ne!(first.serving_cert_pem, second.serving_cert_pem);
    }
}
