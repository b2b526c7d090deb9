//! Who is asking, on the aggregated API: kube-apiserver's front proxy authenticates the user and
//! passes the request on with a client certificate of its own (signed by the request-header CA)
//! and the user in headers. The CA, the names its certificate may carry and the header names are
//! what kube-apiserver publishes in `kube-system/extension-apiserver-authentication`; an
//! aggregated server trusts the headers only on a connection that certificate opened.

use converge_engine::cluster::Cluster;
use converge_engine::error::ApiError;
use converge_engine::kinds;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};
use serde_json::Value;
use std::sync::Arc;

/// The front proxy's settings, as the apiserver published them.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontProxy {
    pub ca_pem: String,
    /// Names the proxy's certificate may carry; empty allows any the CA signed.
    pub allowed_names: Vec<String>,
    pub user_headers: Vec<String>,
    pub group_headers: Vec<String>,
}

fn string_list(data: &Value, key: &str) -> Vec<String> {
    // Each is a JSON array in a string.
    data.get(key).and_then(Value::as_str).and_then(|s| serde_json::from_str::<Vec<String>>(s).ok()).unwrap_or_default()
}

/// Pure: the settings from the ConfigMap.
pub fn from_config_map(cm: &Value) -> Result<FrontProxy, String> {
    let data = cm.get("data").cloned().unwrap_or_default();
    let ca_pem = data
        .get("requestheader-client-ca-file")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .ok_or("the apiserver publishes no requestheader-client-ca-file: aggregation is not configured")?
        .to_string();
    let user_headers = string_list(&data, "requestheader-username-headers");
    if user_headers.is_empty() {
        return Err("the apiserver publishes no requestheader-username-headers".into());
    }
    Ok(FrontProxy {
        ca_pem,
        allowed_names: string_list(&data, "requestheader-allowed-names"),
        user_headers,
        group_headers: string_list(&data, "requestheader-group-headers"),
    })
}

/// Reads the settings from the cluster.
pub async fn read(cluster: &dyn Cluster) -> Result<FrontProxy, ApiError> {
    let cm = cluster.get(&kinds::CONFIG_MAP, "kube-system", "extension-apiserver-authentication").await?.ok_or_else(
        || ApiError::not_found_message("kube-system/extension-apiserver-authentication: not a kube-apiserver"),
    )?;
    from_config_map(&cm).map_err(ApiError::internal)
}

/// The user the proxy vouches for: the first user header present, and every group header value.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxiedUser {
    pub name: String,
    pub groups: Vec<String>,
}

pub fn user_of(headers: &actix_web::http::header::HeaderMap, proxy: &FrontProxy) -> Option<ProxiedUser> {
    let name = proxy
        .user_headers
        .iter()
        .find_map(|h| headers.get(h.as_str()).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()))?
        .to_string();
    let groups = proxy
        .group_headers
        .iter()
        .flat_map(|h| headers.get_all(h.as_str()))
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    Some(ProxiedUser { name, groups })
}

/// The subject's common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    use yasna::Tag;
    let subject = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let subject = r.next().read_sequence(|r| {
                r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _ in 0..4 {
                    // serial, signature algorithm, issuer, validity
                    r.next().read_der()?;
                }
                let subject = r.next().read_der()?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(subject)
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(subject)
        })
    })
    .ok()?;
    common_name_of_name(&subject)
}

/// The common name of a DER X.501 Name (a certificate's or a request's subject).
pub fn common_name_of_name(subject: &[u8]) -> Option<String> {
    let mut cn = None;
    yasna::parse_der(subject, |r| {
        r.read_sequence_of(|r| {
            r.read_set_of(|r| {
                r.read_sequence(|r| {
                    let oid = r.next().read_oid()?;
                    let value = r.next().read_tagged_der()?;
                    if oid.components().as_slice() == [2, 5, 4, 3] {
                        cn = String::from_utf8(value.value().to_vec()).ok();
                    }
                    Ok(())
                })
            })
        })
    })
    .ok()?;
    cn
}

/// Checks the client's chain to the request-header CA, then its name against the allowed ones.
#[derive(Debug)]
pub struct ProxyCertVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    allowed_names: Vec<String>,
}

impl ProxyCertVerifier {
    pub fn new(proxy: &FrontProxy) -> Result<ProxyCertVerifier, String> {
        let roots = crate::pki::roots(&proxy.ca_pem).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ProxyCertVerifier { chain, allowed_names: proxy.allowed_names.clone() })
    }
}

impl ClientCertVerifier for ProxyCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.chain.verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed_names.is_empty() {
            return Ok(verified);
        }
        match common_name(end_entity) {
            Some(cn) if self.allowed_names.contains(&cn) => Ok(verified),
            _ => Err(rustls::Error::General("the client certificate is not the front proxy's".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_published_settings_parse() {
        let cm = json!({"data": {
            "requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\n...",
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
        }});
        let proxy = from_config_map(&cm).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(proxy.allowed_names, vec!["front-proxy-client"]);
        assert_eq!(proxy.user_headers, vec!["X-Remote-User"]);
        assert!(from_config_map(&json!({"data": {"client-ca-file": "x"}})).is_err());
    }

    #[test]
    fn users_come_from_the_named_headers() {
        let proxy = FrontProxy {
            ca_pem: String::new(),
            allowed_names: vec![],
            user_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
        };
        let mut headers = actix_web::http::header::HeaderMap::new();
        let value = |s: &'static str| actix_web::http::header::HeaderValue::from_static(s);
        headers.append(actix_web::http::header::HeaderName::from_static("x-remote-user"), value("alice"));
        headers.append(actix_web::http::header::HeaderName::from_static("x-remote-group"), value("team"));
        headers
            .append(actix_web::http::header::HeaderName::from_static("x-remote-group"), value("system:authenticated"));
        assert_eq!(
            user_of(&headers, &proxy),
            Some(ProxiedUser { name: "alice".into(), groups: vec!["team".into(), "system:authenticated".into()] })
        );
        assert_eq!(user_of(&actix_web::http::header::HeaderMap::new(), &proxy), None);
    }

    #[test]
    fn the_common_name_is_the_subjects() {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "org");
        params.distinguished_name.push(rcgen::DnType::CommonName, "front-proxy-client");
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(common_name(cert.der()).as_deref(), Some("front-proxy-client"));
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
