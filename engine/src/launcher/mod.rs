//! VMI → libvirt domain: the typed domain XML model, the pure builder from a VMI and a node
//! context, and the KVM probe that picks the domain type.

pub mod build;
pub mod domain;
pub mod probe;
pub mod spec;

#[cfg(test)]
mod tests;
