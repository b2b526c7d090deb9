//! Bearer tokens: HS256 JWTs signed with the data dir's key, recorded in the store so they can be
//! listed and revoked. Read from the Authorization header or, for websockets, from the
//! `base64url.bearer.authorization.k8s.io.<token>` subprotocol.

use base64::Engine;
use converge_engine::{ApiError, ApiResult};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::HashSet;
use std::sync::RwLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A node agent's token: its own Node, the status of the VMIs placed on it, and what it
    /// reads to run them (`node_auth`); outside the ladder of the other three.
    Node,
    View,
    Edit,
    /// `edit` and live migrations (KubeVirt 1.5's `kubevirt.io:migrate`, which `edit` lacks):
    /// moving a guest decides which host runs it.
    Migrate,
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "view" => Ok(Role::View),
            "edit" => Ok(Role::Edit),
            "migrate" => Ok(Role::Migrate),
            "admin" => Ok(Role::Admin),
            "node" => Ok(Role::Node),
            other => Err(format!("unknown role \"{other}\": one of view, edit, migrate, admin, node")),
        }
    }
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Edit => "edit",
            Role::Migrate => "migrate",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub jti: String,
    pub role: Role,
    /// Empty: every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The Node a `node` token speaks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

/// Who is asking, once their token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub subject: String,
    pub role: Role,
    pub namespaces: Vec<String>,
    /// The Node this principal is the agent of (a `node` token).
    pub node: Option<String>,
}

impl Principal {
    /// An admin confined to no namespace: the only caller trusted with what the server itself
    /// writes (status, tokens). A namespaced admin is a tenant.
    pub fn is_cluster_admin(&self) -> bool {
        self.role == Role::Admin && self.namespaces.is_empty()
    }
}

const ISSUER: &str = "converge";
pub const NODE_SUBJECT_PREFIX: &str = "system:node:";
const WEBSOCKET_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    revoked: RwLock<HashSet<String>>,
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        Authenticator {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            revoked: RwLock::new(HashSet::new()),
        }
    }

    /// Sign claims as given (tests use this for expired tokens).
    pub fn sign(&self, claims: &Claims) -> ApiResult<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("signing a token: {e}")))
    }

    pub fn claims(subject: &str, role: Role, namespaces: Vec<String>, ttl_seconds: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: ISSUER.into(),
            sub: subject.into(),
            jti: uuid::Uuid::new_v4().to_string(),
            role,
            namespaces,
            node: None,
            iat: now,
            exp: now.saturating_add(ttl_seconds),
        }
    }

    pub fn verify(&self, token: &str) -> ApiResult<Principal> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|_| ApiError::unauthorized())?;
        let c = data.claims;
        if self.revoked.read().map(|r| r.contains(&c.jti)).unwrap_or(true) {
            return Err(ApiError::unauthorized());
        }
        // A node token names its node; any other names none.
        if (c.role == Role::Node) != c.node.is_some() {
            return Err(ApiError::unauthorized());
        }
        Ok(Principal { token_id: c.jti, subject: c.sub, role: c.role, namespaces: c.namespaces, node: c.node })
    }

    pub fn mark_revoked(&self, id: &str) {
        if let Ok(mut r) = self.revoked.write() {
            r.insert(id.to_string());
        }
    }

    /// Follows revocations in the store, so servers sharing one database refuse a token within
    /// `every` of its revocation by any of them.
    pub async fn follow_revocations(self: std::sync::Arc<Self>, pool: sqlx::AnyPool, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.load_revoked(&pool).await {
                tracing::warn!(error = %e.message, "reading token revocations");
            }
        }
    }

    /// Load revocations recorded in the store.
    pub async fn load_revoked(&self, pool: &sqlx::AnyPool) -> ApiResult<()> {
        let rows = sqlx::query("SELECT id FROM tokens WHERE revoked = 1").fetch_all(pool).await?;
        for row in rows {
            self.mark_revoked(&row.try_get::<String, _>(0)?);
        }
        Ok(())
    }

    /// Issue and record a token.
    pub async fn issue(
        &self,
        pool: &sqlx::AnyPool,
        subject: &str,
        role: Role,
        namespaces: Vec<String>,
        ttl_seconds: i64,
    ) -> ApiResult<(Claims, String)> {
        self.issue_claims(pool, Self::claims(subject, role, namespaces, ttl_seconds)).await
    }

    /// Issue and record a token for node `node` (subject `system:node:<node>`, as Kubernetes
    /// names node identities).
    pub async fn issue_node(&self, pool: &sqlx::AnyPool, node: &str, ttl_seconds: i64) -> ApiResult<(Claims, String)> {
        let mut claims = Self::claims(&format!("{NODE_SUBJECT_PREFIX}{node}"), Role::Node, vec![], ttl_seconds);
        claims.node = Some(node.to_string());
        self.issue_claims(pool, claims).await
    }

    async fn issue_claims(&self, pool: &sqlx::AnyPool, claims: Claims) -> ApiResult<(Claims, String)> {
        let token = self.sign(&claims)?;
        sqlx::query("INSERT INTO tokens (id, subject, role, namespaces, created_at, expires_at, revoked) VALUES ($1, $2, $3, $4, $5, $6, 0)")
            .bind(&claims.jti)
            .bind(&claims.sub)
            .bind(claims.role.as_str())
            .bind(claims.namespaces.join(","))
            .bind(claims.iat)
            .bind(claims.exp)
            .execute(pool)
            .await?;
        Ok((claims, token))
    }

    /// Revoke a recorded token; false when there is no such token.
    pub async fn revoke(&self, pool: &sqlx::AnyPool, id: &str) -> ApiResult<bool> {
        let done = sqlx::query("UPDATE tokens SET revoked = 1 WHERE id = $1").bind(id).execute(pool).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.mark_revoked(id);
        Ok(true)
    }
}

/// The bearer token of a request, from either place a Kubernetes client puts it.
pub fn bearer_token(authorization: Option<&str>, websocket_protocols: Option<&str>) -> Option<String> {
    if let Some(value) = authorization {
        let mut parts = value.splitn(2, ' ');
        if parts.next().is_some_and(|s| s.eq_ignore_ascii_case("bearer")) {
            return parts.next().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        }
        return None;
    }
    let protocols = websocket_protocols?;
    let encoded = protocols.split(',').map(str::trim).find_map(|p| p.strip_prefix(WEBSOCKET_BEARER_PREFIX))?;
    // Clients differ: base64url or standard alphabet, padded or not.
    let normalized: String = encoded
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            other => other,
        })
        .collect();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(normalized).ok()?;
    String::from_utf8(bytes).ok().filter(|t| !t.is_empty())
}

/// What a request does, for authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access<'a> {
    pub write: bool,
    /// Namespace the request is confined to; `None` for cluster-wide.
    pub namespace: Option<&'a str>,
    /// The resource is cluster-scoped (namespaces, discovery).
    pub cluster_scoped: bool,
    /// Cluster-wide lists of this resource are allowed to namespace-scoped tokens.
    pub listable_across_namespaces: bool,
    pub resource: &'a str,
    pub group: &'a str,
    pub verb: &'a str,
    /// The request writes the object's `/status`, which the node and controllers own.
    pub status: bool,
}

/// What a role may do, as Kubernetes' default ClusterRoles grant it: `view` reads everything
/// but Secrets; `edit` also writes namespaced objects (Secrets included) but neither
/// cluster-scoped kinds (PersistentVolumes, StorageClasses, Nodes, cluster instancetypes,
/// Namespaces) nor any `/status`; `admin` does all of it (`/status` only when confined to no
/// namespace, see `authorize`). Starting, aborting and asking for live migrations takes
/// `migrate`. Returns the least role that may.
pub fn role_needed(a: &Access) -> Role {
    if a.write && (a.cluster_scoped || a.status) {
        Role::Admin
    } else if a.write && (a.resource == "virtualmachineinstancemigrations" || a.resource == "virtualmachines/migrate") {
        Role::Migrate
    } else if a.write || (a.group.is_empty() && a.resource == "secrets") {
        Role::Edit
    } else {
        Role::View
    }
}

/// The apiserver's words for a refused request.
pub fn forbidden(p: &Principal, a: &Access) -> ApiError {
    let resource = if a.group.is_empty() { a.resource.to_string() } else { format!("{}.{}", a.resource, a.group) };
    let scope = match a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    ApiError::forbidden(format!(
        "{resource} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\"{scope}",
        p.subject, a.verb, a.resource, a.group
    ))
}

pub fn authorize(p: &Principal, a: &Access) -> ApiResult<()> {
    if p.node.is_some() {
        return crate::node_auth::authorize(p, a);
    }
    if p.role == Role::Node {
        return Err(forbidden(p, a));
    }
    let forbidden = || forbidden(p, a);
    if p.role < role_needed(a) {
        return Err(forbidden());
    }
    // Status carries what the node acts on (a VMI's address becomes a Service backend): a
    // namespaced admin writing it could point another namespace's traffic at itself.
    if a.write && a.status && !p.is_cluster_admin() {
        return Err(forbidden());
    }
    if p.namespaces.is_empty() {
        return Ok(());
    }
    let allowed = match a.namespace {
        Some(ns) => p.namespaces.iter().any(|n| n == ns),
        None if a.cluster_scoped => !a.write,
        None => !a.write && a.listable_across_namespaces,
    };
    if allowed {
        Ok(())
    } else {
        Err(forbidden())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_fail_as_they_should() {
        let auth = Authenticator::new(b"0123456789abcdef0123456789abcdef");
        let good = auth.sign(&Authenticator::claims("a", Role::Edit, vec![], 60)).unwrap_or_default();
        assert!(auth.verify(&good).is_ok());
        let expired = auth.sign(&Authenticator::claims("a", Role::Edit, vec![], -10)).unwrap_or_default();
        assert!(auth.verify(&expired).is_err());
        let other = Authenticator::new(b"another key, another key, another");
        let foreign = other.sign(&Authenticator::claims("a", Role::Admin, vec![], 60)).unwrap_or_default();
        assert!(auth.verify(&foreign).is_err());
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_string(&Authenticator::claims("a", Role::Admin, vec![], 60)).unwrap_or_default())
        );
        assert!(auth.verify(&none).is_err());
        let claims = Authenticator::claims("a", Role::Edit, vec![], 60);
        let revoked = auth.sign(&claims).unwrap_or_default();
        auth.mark_revoked(&claims.jti);
        assert!(auth.verify(&revoked).is_err());
    }

    #[test]
    fn bearer_from_header_or_subprotocol() {
        assert_eq!(bearer_token(Some("Bearer abc"), None), Some("abc".into()));
        assert_eq!(bearer_token(Some("Basic abc"), None), None);
        let token = "eyJ.a+b/c?";
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        let std_padded = base64::engine::general_purpose::STANDARD.encode(token);
        for enc in [url, std_padded] {
            let header = format!("base64.binary.k8s.io, base64url.bearer.authorization.k8s.io.{enc}");
            assert_eq!(bearer_token(None, Some(&header)), Some(token.into()));
        }
        assert_eq!(bearer_token(None, Some("base64.binary.k8s.io")), None);
    }

    fn who(role: Role, namespaces: &[&str]) -> Principal {
        Principal {
            token_id: "t".into(),
            subject: "s".into(),
            role,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            node: None,
        }
    }

    fn access(write: bool, namespace: Option<&str>, cluster_scoped: bool, listable: bool) -> Access<'_> {
        Access {
            write,
            namespace,
            cluster_scoped,
            listable_across_namespaces: listable,
            resource: "r",
            group: "g",
            verb: "v",
            status: false,
        }
    }

    #[test]
    fn roles_and_namespaces() {
        assert!(authorize(&who(Role::View, &[]), &access(false, Some("a"), false, false)).is_ok());
        assert!(authorize(&who(Role::View, &[]), &access(true, Some("a"), false, false)).is_err());
        assert!(authorize(&who(Role::Edit, &["a"]), &access(true, Some("a"), false, false)).is_ok());
        assert!(authorize(&who(Role::Edit, &["a"]), &access(false, Some("b"), false, false)).is_err());
        assert!(authorize(&who(Role::Edit, &["a"]), &access(false, None, true, false)).is_ok());
        assert!(authorize(&who(Role::Edit, &["a"]), &access(true, None, true, false)).is_err());
        assert!(authorize(&who(Role::Edit, &["a"]), &access(false, None, false, false)).is_err());
        assert!(authorize(&who(Role::Edit, &["a"]), &access(false, None, false, true)).is_ok());
    }

    #[test]
    fn roles_follow_kubernetes_defaults() {
        let secrets = Access { resource: "secrets", group: "", ..access(false, Some("a"), false, false) };
        assert!(authorize(&who(Role::View, &[]), &secrets).is_err(), "view reads no Secrets");
        assert!(authorize(&who(Role::Edit, &["a"]), &secrets).is_ok());
        let cluster_write = access(true, None, true, false);
        assert!(authorize(&who(Role::Edit, &[]), &cluster_write).is_err(), "edit writes no cluster-scoped kind");
        assert!(authorize(&who(Role::Admin, &[]), &cluster_write).is_ok());
        let status = Access { status: true, ..access(true, Some("a"), false, false) };
        assert!(authorize(&who(Role::Edit, &[]), &status).is_err(), "edit writes no /status");
        assert!(authorize(&who(Role::Admin, &[]), &status).is_ok());
        assert!(authorize(&who(Role::Admin, &["a"]), &status).is_err(), "a namespaced admin is a tenant");
        let read_status = Access { status: true, ..access(false, Some("a"), false, false) };
        assert!(authorize(&who(Role::View, &["a"]), &read_status).is_ok());
    }
}
