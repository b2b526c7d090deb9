//! What every handler shares.

use crate::auth::Authenticator;
use converge_engine::store::Store;
use std::sync::Arc;
use std::time::Duration;

pub struct AppState {
    pub store: Arc<Store>,
    pub auth: Arc<Authenticator>,
    /// `host:port` clients reach us at, for discovery.
    pub server_address: String,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// The in-process node agent, when this server runs guests.
    pub node: Option<Arc<converge_engine::node::NodeAgent>>,
    /// The storage controllers, which take uploads.
    pub storage: Option<Arc<converge_engine::storage::StorageControllers>>,
    /// Signs and checks upload tokens (a key of their own).
    pub upload_auth: Arc<Authenticator>,
    /// Carries out `/bridge/v1` host requests.
    pub bridge: Arc<converge_bridge::provision::Provisioner>,
    /// The cluster CA: signs node agents' serving certificates.
    pub authority: Arc<crate::pki::Authority>,
    /// Calls to node agents in other processes (consoles, VNC, pause).
    pub node_link: Arc<crate::nodes::link::NodeLink>,
}
