//! `/converge/v1/tokens`: issue, list and revoke bearer tokens (admin only).

use crate::auth::{Principal, Role};
use crate::response::{json_response, status_response};
use crate::state::AppState;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use converge_engine::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// Who the token is for (free text, shown in audit and errors).
    #[serde(default)]
    pub subject: Option<String>,
    pub role: Role,
    /// Namespaces the token may act in; empty for all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The Node a `node` token speaks for (required with that role, refused with the others):
    /// it may write that Node and the status of the VMIs placed on it, and read what they need.
    #[serde(default)]
    pub node: Option<String>,
    /// Lifetime in seconds.
    #[schema(minimum = 1, maximum = 3153600000_f64)]
    pub ttl_seconds: i64,
}

/// The longest lifetime a token may ask for: 100 years.
pub const MAX_TTL_SECONDS: i64 = 100 * 365 * 24 * 3600;

/// The answer to a list: every token issued, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenRecord>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub subject: String,
    pub role: String,
    pub namespaces: Vec<String>,
    /// The Node of a `node` token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked: bool,
    /// Only in the answer to a create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn admin(req: &HttpRequest) -> ApiResult<Principal> {
    let p = req.extensions().get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)?;
    if !p.is_cluster_admin() {
        return Err(ApiError::forbidden(format!(
            "tokens are managed by cluster admins; User \"{}\" is not one",
            p.subject
        )));
    }
    Ok(p)
}

fn respond(r: ApiResult<HttpResponse>) -> HttpResponse {
    r.unwrap_or_else(|e| status_response(&e))
}

/// Issue a token.
#[utoipa::path(post, path = "/converge/v1/tokens", operation_id = "createToken", tag = "tokens", request_body = TokenRequest,
    responses((status = 201, description = "The token, shown once", body = TokenRecord), (status = 400, description = "Bad request"), (status = 403, description = "Not an admin")),
    security(("BearerToken" = [])))]
pub async fn create(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let who = admin(&req)?;
            let r: TokenRequest =
                serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("token request: {e}")))?;
            // The fuzz run's finding: a huge ttlSeconds overflowed the expiry and killed the worker.
            if !(1..=MAX_TTL_SECONDS).contains(&r.ttl_seconds) {
                return Err(ApiError::bad_request(format!(
                    "ttlSeconds must be between 1 and {MAX_TTL_SECONDS} (100 years)"
                )));
            }
            for ns in &r.namespaces {
                if !converge_engine::meta::dns1123_label_errors(ns).is_empty() {
                    return Err(ApiError::bad_request(format!("namespace \"{ns}\" is not a valid namespace name")));
                }
            }
            let (claims, token) = match (r.role, &r.node) {
                (Role::Node, Some(node)) => {
                    if !converge_engine::meta::dns1123_subdomain_errors(node).is_empty() {
                        return Err(ApiError::bad_request(format!("node \"{node}\" is not a valid Node name")));
                    }
                    if !r.namespaces.is_empty() || r.subject.is_some() {
                        return Err(ApiError::bad_request(
                            "a node token names its node alone: no namespaces, and its subject is system:node:<node>",
                        ));
                    }
                    state.auth.issue_node(state.store.pool(), node, r.ttl_seconds).await?
                }
                (Role::Node, None) => return Err(ApiError::bad_request("role node needs the node it speaks for")),
                (_, Some(_)) => return Err(ApiError::bad_request("only a token of role node names a node")),
                (role, None) => {
                    let subject = r.subject.unwrap_or_else(|| format!("token-issued-by-{}", who.subject));
                    state.auth.issue(state.store.pool(), &subject, role, r.namespaces, r.ttl_seconds).await?
                }
            };
            let record = TokenRecord {
                id: claims.jti,
                subject: claims.sub,
                role: claims.role.as_str().into(),
                namespaces: claims.namespaces,
                node: claims.node,
                created_at: claims.iat,
                expires_at: claims.exp,
                revoked: false,
                token: Some(token),
            };
            Ok(json_response(201, &serde_json::to_value(record).unwrap_or_default(), &[]))
        }
        .await,
    )
}

/// List tokens (never their secrets).
#[utoipa::path(get, path = "/converge/v1/tokens", operation_id = "listTokens", tag = "tokens",
    responses((status = 200, description = "Every token issued", body = TokenList), (status = 403, description = "Not an admin")),
    security(("BearerToken" = [])))]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(async {
        admin(&req)?;
        let rows = sqlx::query("SELECT id, subject, role, namespaces, created_at, expires_at, revoked FROM tokens ORDER BY created_at, id")
            .fetch_all(state.store.pool())
            .await?;
        let mut out = vec![];
        for r in rows {
            let namespaces: String = r.try_get(3)?;
            let (subject, role): (String, String) = (r.try_get(1)?, r.try_get(2)?);
            // A node token's subject is the server's own naming of it.
            let node = (role == Role::Node.as_str())
                .then(|| subject.strip_prefix(crate::auth::NODE_SUBJECT_PREFIX).map(str::to_string))
                .flatten();
            out.push(TokenRecord {
                id: r.try_get(0)?,
                subject,
                role,
                node,
                namespaces: namespaces.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                created_at: r.try_get(4)?,
                expires_at: r.try_get(5)?,
                revoked: r.try_get::<i64, _>(6)? != 0,
                token: None,
            });
        }
        Ok(json_response(200, &serde_json::to_value(TokenList { items: out }).unwrap_or_default(), &[]))
    }
    .await)
}

/// Revoke a token: every request bearing it is refused from now on.
#[utoipa::path(delete, path = "/converge/v1/tokens/{id}", operation_id = "revokeToken", tag = "tokens",
    params(("id" = String, Path, description = "Token id (the JWT's jti)")),
    responses((status = 200, description = "Revoked"), (status = 404, description = "No such token"), (status = 403, description = "Not an admin")),
    security(("BearerToken" = [])))]
pub async fn revoke(req: HttpRequest, id: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    respond(async {
        admin(&req)?;
        if !state.auth.revoke(state.store.pool(), &id).await? {
            return Err(ApiError::not_found("converge", "tokens", &id));
        }
        Ok(json_response(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": id.as_str(), "kind": "tokens"}}), &[]))
    }
    .await)
}
