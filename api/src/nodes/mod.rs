//! The API server and node agents in processes of their own: the node's serving certificate,
//! signed here for a key the node keeps (`certificate`), or on a Kubernetes cluster through its
//! CertificateSigningRequest API (`csr`); the server's calls to a node (`link`); and what a node
//! serves the server (`server`).

pub mod certificate;
pub mod csr;
pub mod link;
pub mod server;
