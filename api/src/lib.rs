//! Converge's HTTP face: the Kubernetes-compatible API (discovery, CRUD, list/watch, patch,
//! status, scale), the `/bridge/v1` provisioning API, bearer-token auth over TLS, and the
//! OpenAPI documents.

mod access_review;
pub mod auth;
pub mod bridge;
mod console;
mod console_log;
mod crds;
pub mod discovery;
pub mod extension;
pub mod manifests;
pub mod metrics;
mod node_auth;
pub mod nodes;
pub mod openapi;
pub mod openapi_k8s;
pub mod openapi_pb;
pub mod pki;
pub mod protobuf;
pub mod request;
mod resources;
pub mod response;
pub mod server;
mod server_side_apply;
pub mod state;
pub mod subresources;
pub mod table;
mod tokens;
mod ui;
pub mod upload;
mod watch;

pub use server::{start, RunningServer, ServeError, ServerConfig};
