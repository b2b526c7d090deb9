//! `POST /converge/v1/nodes/{name}/servingcertificate`: a node agent's serving certificate,
//! signed by the cluster CA for a key the node made and keeps. As kubelet's serving-certificate
//! bootstrap, minus the CertificateSigningRequest round trip: the node's token already says which
//! node it is, so the answer comes at once and names that node alone.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::Engine;
use converge_engine::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Role};
use crate::response::{json_response, status_response};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServingCertificateRequest {
    /// The node's P-256 public key: the uncompressed point (65 bytes), base64.
    pub public_key: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingCertificate {
    /// PEM; its one subject name is the Node's name.
    pub certificate: String,
    /// The cluster CA (PEM): what the node checks the server's client certificate against.
    pub ca: String,
}

/// Who may have a serving certificate for `node`: a cluster admin, or that node's own agent.
pub fn may_request(principal: &Principal, node: &str) -> ApiResult<()> {
    let own = principal.role == Role::Node && principal.node.as_deref() == Some(node);
    if principal.is_cluster_admin() || own {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "User \"{}\" may not obtain a serving certificate for node \"{node}\"",
        principal.subject
    )))
}

/// The key out of a request, checked.
pub fn parse(node: &str, body: &[u8]) -> ApiResult<Vec<u8>> {
    if !converge_engine::meta::dns1123_subdomain_errors(node).is_empty() {
        return Err(ApiError::bad_request(format!("node \"{node}\" is not a valid Node name")));
    }
    let r: ServingCertificateRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("serving certificate request: {e}")))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(r.public_key.trim())
        .map_err(|e| ApiError::bad_request(format!("publicKey is not base64: {e}")))?;
    crate::pki::P256PublicKey::parse(&key).map_err(|e| ApiError::bad_request(format!("publicKey: {e}")))?;
    Ok(key)
}

/// Sign a node agent's serving certificate.
#[utoipa::path(post, path = "/converge/v1/nodes/{name}/servingcertificate", operation_id = "signNodeServingCertificate",
    tag = "nodes", request_body = ServingCertificateRequest, params(("name" = String, Path, description = "The Node")),
    responses((status = 201, description = "The certificate and the CA", body = ServingCertificate),
        (status = 400, description = "Bad request"), (status = 403, description = "Neither an admin nor that node's agent")),
    security(("BearerToken" = [])))]
pub async fn sign(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let node = req.match_info().get("name").unwrap_or("").to_string();
    let result: ApiResult<HttpResponse> = (|| {
        let principal = req.extensions().get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)?;
        may_request(&principal, &node)?;
        let key = parse(&node, &body)?;
        let certificate =
            state.authority.node_serving_certificate(&node, &key).map_err(|e| ApiError::internal(e.to_string()))?;
        let answer = ServingCertificate { certificate, ca: state.authority.ca_pem.clone() };
        tracing::info!(%node, by = %principal.subject, "signed a node serving certificate");
        Ok(json_response(201, &serde_json::to_value(answer).unwrap_or_default(), &[]))
    })();
    result.unwrap_or_else(|e| status_response(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, node: Option<&str>, namespaces: &[&str]) -> Principal {
        Principal {
            token_id: "t".into(),
            subject: "s".into(),
            role,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            node: node.map(str::to_string),
        }
    }

    #[test]
    fn only_an_admin_or_the_node_itself() {
        assert!(may_request(&principal(Role::Admin, None, &[]), "n1").is_ok());
        assert!(may_request(&principal(Role::Node, Some("n1"), &[]), "n1").is_ok());
        assert_eq!(may_request(&principal(Role::Node, Some("n2"), &[]), "n1").unwrap_err().code, 403);
        assert_eq!(may_request(&principal(Role::Admin, None, &["team"]), "n1").unwrap_err().code, 403);
        assert_eq!(may_request(&principal(Role::Edit, None, &[]), "n1").unwrap_err().code, 403);
    }

    #[test]
    fn requests_are_checked() {
        let key = rcgen::KeyPair::generate().expect("key");
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.public_key_raw());
        let body = serde_json::to_vec(&ServingCertificateRequest { public_key: b64 }).expect("json");
        assert_eq!(parse("n1", &body).expect("parsed").len(), 65);
        assert_eq!(parse("N_1", &body).unwrap_err().code, 400);
        assert_eq!(parse("n1", br#"{"publicKey": "AAAA"}"#).unwrap_err().code, 400);
        assert_eq!(parse("n1", br#"{"publicKey": "!!"}"#).unwrap_err().code, 400);
        assert_eq!(parse("n1", br#"{"publicKey": "", "extra": 1}"#).unwrap_err().code, 400);
    }
}
