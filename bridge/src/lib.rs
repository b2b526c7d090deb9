//! What Foreman and provisioning pipelines need beyond the `kubevirt.io/v1` API: the
//! `kubevirt.io/v1alpha3` alias Foreman's plugin pins (`foreman`), and the `/bridge/v1`
//! provisioning API (`provision`): a whole host in one idempotent call, recorded in SQL.
//!
//! The MAC-at-create behaviour Foreman relies on lives in admission (`converge_engine::macpool`);
//! the core resources its plugin reads are served by `converge-api` like every kind. Everything
//! here writes through the same store and admission as `converge-api`, never around them.

pub mod foreman;
pub mod provision;
