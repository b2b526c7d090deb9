//! The message definitions of `api/proto/` (Kubernetes' own `generated.proto` files), read once
//! into field tables: for each message, its fields by number with their JSON name and type.
//! go-to-protobuf writes one flat, regular form (`optional T name = N;`, `repeated`, `map<K, V>`),
//! which is all this reads.

use std::collections::HashMap;
use std::sync::OnceLock;

const FILES: &[&str] = &[
    include_str!("../../proto/core-v1.proto"),
    include_str!("../../proto/apps-v1.proto"),
    include_str!("../../proto/storage-v1.proto"),
    include_str!("../../proto/discovery-v1.proto"),
    include_str!("../../proto/authorization-v1.proto"),
    include_str!("../../proto/authentication-v1.proto"),
    include_str!("../../proto/meta-v1.proto"),
    include_str!("../../proto/resource.proto"),
    include_str!("../../proto/intstr.proto"),
    include_str!("../../proto/runtime.proto"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    String,
    Bytes,
    Bool,
    /// Any varint integer (int32, int64, uint32, …).
    Int,
    Double,
    Float,
    /// A message, by its full name (`k8s.io.api.core.v1.ServiceSpec`).
    Message(String),
    Map(Box<Type>, Box<Type>),
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: Type,
    pub repeated: bool,
}

pub type Messages = HashMap<String, HashMap<u64, Field>>;

pub fn messages() -> &'static Messages {
    static ALL: OnceLock<Messages> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = HashMap::new();
        for text in FILES {
            parse(text, &mut all);
        }
        all
    })
}

fn scalar(name: &str) -> Option<Type> {
    Some(match name {
        "string" => Type::String,
        "bytes" => Type::Bytes,
        "bool" => Type::Bool,
        "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" => Type::Int,
        "double" => Type::Double,
        "float" => Type::Float,
        _ => return None,
    })
}

fn resolve(name: &str, package: &str) -> Type {
    scalar(name).unwrap_or_else(|| match name.strip_prefix('.') {
        Some(full) => Type::Message(full.to_string()),
        None => Type::Message(format!("{package}.{name}")),
    })
}

fn parse(text: &str, out: &mut Messages) {
    let mut package = String::new();
    let mut current: Option<(String, HashMap<u64, Field>)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(p) = line.strip_prefix("package ") {
            package = p.trim_end_matches(';').to_string();
        } else if let Some(m) = line.strip_prefix("message ") {
            let name = m.trim_end_matches('{').trim();
            current = Some((format!("{package}.{name}"), HashMap::new()));
        } else if line == "}" {
            if let Some((name, fields)) = current.take() {
                out.insert(name, fields);
            }
        } else if let Some((_, fields)) = current.as_mut() {
            if let Some((number, field)) = parse_field(line, &package) {
                fields.insert(number, field);
            }
        }
    }
}

/// `optional T name = N;`, `repeated T name = N;` or `map<K, V> name = N;`.
fn parse_field(line: &str, package: &str) -> Option<(u64, Field)> {
    let line = line.strip_suffix(';')?;
    let (decl, number) = line.rsplit_once('=')?;
    let number: u64 = number.trim().parse().ok()?;
    let decl = decl.trim();
    if let Some(rest) = decl.strip_prefix("map<") {
        let (types, name) = rest.split_once('>')?;
        let (k, v) = types.split_once(',')?;
        let ty = Type::Map(Box::new(resolve(k.trim(), package)), Box::new(resolve(v.trim(), package)));
        return Some((number, Field { name: name.trim().to_string(), ty, repeated: false }));
    }
    let mut words = decl.split_whitespace();
    let repeated = match words.next()? {
        "optional" => false,
        "repeated" => true,
        _ => return None,
    };
    let ty = resolve(words.next()?, package);
    let name = words.next()?.to_string();
    Some((number, Field { name, ty, repeated }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kubernetes_messages() {
        let m = messages();
        let spec = &m["k8s.io.api.core.v1.ServiceSpec"];
        assert_eq!(spec[&1].name, "ports");
        assert!(spec[&1].repeated);
        assert_eq!(spec[&1].ty, Type::Message("k8s.io.api.core.v1.ServicePort".into()));
        assert_eq!(spec[&3].name, "clusterIP");
        let meta = &m["k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta"];
        assert_eq!(meta[&11].ty, Type::Map(Box::new(Type::String), Box::new(Type::String)));
        assert_eq!(
            m["k8s.io.api.core.v1.ServicePort"][&4].ty,
            Type::Message("k8s.io.apimachinery.pkg.util.intstr.IntOrString".into())
        );
        for kind in [
            "Namespace",
            "Node",
            "Secret",
            "ConfigMap",
            "Event",
            "PersistentVolumeClaim",
            "PersistentVolume",
            "Service",
            "Endpoints",
        ] {
            assert!(m.contains_key(&format!("k8s.io.api.core.v1.{kind}")), "{kind}");
        }
        assert!(m.contains_key("k8s.io.api.apps.v1.ControllerRevision"));
        assert!(m.contains_key("k8s.io.api.storage.v1.StorageClass"));
        assert!(m.contains_key("k8s.io.api.discovery.v1.EndpointSlice"));
    }
}
