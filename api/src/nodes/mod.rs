//! The API server and node agents in processes of their own: the node's serving certificate,
//! signed here for a key the node keeps (`certificate`); the server's calls to a node (`link`);
//! and what a node serves the server (`server`).

pub mod certificate;
pub mod link;
pub mod server;
