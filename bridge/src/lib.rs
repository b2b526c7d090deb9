//! What Foreman and provisioning pipelines need beyond KubeVirt: the `kubevirt.io/v1alpha3`
//! alias, the core resources Foreman's plugin reads, and the `/bridge/v1` provisioning API.
//!
//! Empty for now: the MAC-at-create behaviour Foreman relies on already lives in admission
//! (`converge_engine::macpool`). The rest arrives with the Foreman issue; it writes through the
//! same store and admission as `converge-api`, never around them.
