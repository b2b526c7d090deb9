//! Converge's engine: API objects, admission, the object store and (later) the controllers and
//! node agent. No HTTP here.

pub mod admission;
pub mod apply;
pub mod cluster;
pub mod controllers;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod gc;
pub mod host_access;
pub mod hypervisor;
pub mod instancetype;
pub mod kinds;
pub mod launcher;
pub mod macpool;
pub mod meta;
pub mod metrics;
pub mod migration;
pub mod network;
pub mod node;
pub mod patch;
pub mod quantity;
pub mod schema;
pub mod selector;
pub mod storage;
pub mod store;
pub mod worker;

pub use error::{ApiError, ApiResult, Cause};
