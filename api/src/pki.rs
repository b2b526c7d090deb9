//! First-start material in the data dir: a CA, a serving certificate signed by it, the token
//! signing key, the admin token and a kubeconfig — so `kubectl --kubeconfig DATA_DIR/kubeconfig`
//! works at once, as with k3s.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::Path;
use std::sync::Arc;

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
    /// The CA itself: signs nodes' serving certificates and the server's client certificate.
    pub authority: Arc<Authority>,
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

fn serving_params(sans: &[String]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, "converge");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
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
    let params = serving_params(sans)?;
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
        authority: Arc::new(Authority { ca_pem: ca_pem.clone(), cert: ca_cert, key: ca_key }),
        ca_pem,
        serving_cert_pem: serving.pem(),
        serving_cert_der: serving.der().to_vec(),
        serving_key_der: serving_key.serialize_der(),
        signing_secret,
    })
}

/// A CA kept elsewhere (a Secret, on a Kubernetes cluster) and a serving certificate it signs
/// for `sans`, issued afresh each time as `ensure` does.
pub struct KeptAuthority {
    pub ca_key_pem: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Signs a serving certificate for `sans` with the CA of `ca_key_pem` (made now when `None`).
pub fn serving_from_kept_ca(ca_key_pem: Option<&str>, sans: &[String]) -> Result<KeptAuthority, PkiError> {
    let ca_key = match ca_key_pem {
        Some(pem) => KeyPair::from_pem(pem)?,
        None => KeyPair::generate()?,
    };
    let ca_cert = ca_params()?.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let params = serving_params(sans)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(KeptAuthority {
        ca_key_pem: ca_key.serialize_pem(),
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The cluster CA with its key, held by the API server alone.
pub struct Authority {
    pub ca_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as rustls takes them.
pub struct Identity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl Authority {
    /// The CA of a key kept elsewhere (the Secret on a Kubernetes cluster), its certificate
    /// re-derived as `ensure` does: `ca_pem` is the one clients were given.
    pub fn from_kept(ca_key_pem: &str, ca_pem: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::from_pem(ca_key_pem)?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Authority { ca_pem: ca_pem.to_string(), cert, key })
    }

    /// The server's certificate as a client of node agents: the only client-auth certificate
    /// this CA signs, so a node's serving certificate cannot stand in for it.
    pub fn api_client_identity(&self) -> Result<Identity, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, API_CLIENT_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Identity { cert_der: cert.der().to_vec(), key_der: key.serialize_der() })
    }

    /// A serving certificate for node `node`'s agent, for a P-256 key the node keeps: its one
    /// name is the Node's name, which the server checks when it connects, so a node can answer
    /// only for itself. Valid for a year from now; a node asks again at every start.
    pub fn node_serving_certificate(&self, node: &str, public_key: &[u8]) -> Result<String, PkiError> {
        let key = P256PublicKey::parse(public_key)?;
        let mut params = CertificateParams::new(vec![node.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, format!("system:node:{node}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let today = chrono::Utc::now().date_naive();
        let (y, m, d) = ymd(today);
        params.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = ymd(today + chrono::Days::new(365));
        params.not_after = rcgen::date_time_ymd(y, m, d);
        Ok(params.signed_by(&key, &self.cert, &self.key)?.pem())
    }
}

fn ymd(date: chrono::NaiveDate) -> (i32, u8, u8) {
    use chrono::Datelike;
    // Months and days are 1..=12 and 1..=31: they fit in a u8.
    (date.year(), date.month() as u8, date.day() as u8)
}

/// The subject of the server's client certificate.
pub const API_CLIENT_NAME: &str = "converge-apiserver";

/// The CA certificates of `pem`, as rustls trusts them.
pub fn roots(pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| PkiError::Invalid(format!("the CA: {e}")))?;
        roots.add(cert).map_err(|e| PkiError::Invalid(format!("the CA: {e}")))?;
    }
    Ok(roots)
}

/// An uncompressed P-256 point (what `KeyPair::public_key_raw` gives for rcgen's default key).
pub struct P256PublicKey(Vec<u8>);

impl P256PublicKey {
    pub fn parse(raw: &[u8]) -> Result<P256PublicKey, PkiError> {
        if raw.len() != 65 || raw[0] != 0x04 {
            return Err(PkiError::Invalid(
                "the public key must be an uncompressed P-256 point (65 bytes, 0x04 first)".into(),
            ));
        }
        Ok(P256PublicKey(raw.to_vec()))
    }
}

impl rcgen::PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
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
