//! Kubernetes' protobuf request bodies, for the core kinds kubectl's typed clients send that way
//! (`kubectl create configmap|secret|namespace`). A body is `k8s\0` followed by a
//! `runtime.Unknown` whose `raw` holds the object; decoded here into the JSON the rest of the
//! server speaks. Fields not listed are skipped, as an older apiserver would.

use converge_engine::kinds::{self, ResourceKind};
use converge_engine::ApiError;
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

enum Field {
    Str(&'static str),
    Bool(&'static str),
    Int(&'static str),
    Time(&'static str),
    Msg(&'static str, &'static [(u64, Field)]),
    RepStr(&'static str),
    RepMsg(&'static str, &'static [(u64, Field)]),
    MapStr(&'static str),
    MapBytes(&'static str),
}

use Field::*;

static OWNER_REFERENCE: &[(u64, Field)] = &[
    (1, Str("kind")),
    (3, Str("name")),
    (4, Str("uid")),
    (5, Str("apiVersion")),
    (6, Bool("controller")),
    (7, Bool("blockOwnerDeletion")),
];

static OBJECT_META: &[(u64, Field)] = &[
    (1, Str("name")),
    (2, Str("generateName")),
    (3, Str("namespace")),
    (5, Str("uid")),
    (6, Str("resourceVersion")),
    (7, Int("generation")),
    (8, Time("creationTimestamp")),
    (11, MapStr("labels")),
    (12, MapStr("annotations")),
    (13, RepMsg("ownerReferences", OWNER_REFERENCE)),
    (14, RepStr("finalizers")),
];

static CONFIG_MAP: &[(u64, Field)] =
    &[(1, Msg("metadata", OBJECT_META)), (2, MapStr("data")), (3, MapBytes("binaryData")), (4, Bool("immutable"))];

static SECRET: &[(u64, Field)] = &[
    (1, Msg("metadata", OBJECT_META)),
    (2, MapBytes("data")),
    (3, Str("type")),
    (4, MapStr("stringData")),
    (5, Bool("immutable")),
];

static NAMESPACE_SPEC: &[(u64, Field)] = &[(1, RepStr("finalizers"))];
static NAMESPACE: &[(u64, Field)] = &[(1, Msg("metadata", OBJECT_META)), (2, Msg("spec", NAMESPACE_SPEC))];

fn spec_for(kind: &ResourceKind) -> Option<&'static [(u64, Field)]> {
    if std::ptr::eq(kind, &kinds::CONFIG_MAP) {
        Some(CONFIG_MAP)
    } else if std::ptr::eq(kind, &kinds::SECRET) {
        Some(SECRET)
    } else if std::ptr::eq(kind, &kinds::NAMESPACE) {
        Some(NAMESPACE)
    } else {
        None
    }
}

pub fn accepts(kind: &ResourceKind) -> bool {
    spec_for(kind).is_some()
}

fn bad(what: &str) -> ApiError {
    ApiError::bad_request(format!("the protobuf body could not be decoded: {what}"))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| bad("truncated field"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ApiError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            other => return Err(bad(&format!("wire type {other}"))),
        };
        Ok(Some((tag >> 3, value)))
    }
}

fn text(bytes: &[u8]) -> Result<Value, ApiError> {
    String::from_utf8(bytes.to_vec()).map(Value::String).map_err(|_| bad("a string is not UTF-8"))
}

fn base64(bytes: &[u8]) -> Value {
    use base64::Engine;
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn map_entry(bytes: &[u8], value_as_bytes: bool) -> Result<(String, Value), ApiError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let (mut key, mut value) = (String::new(), if value_as_bytes { base64(&[]) } else { Value::String(String::new()) });
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(b)) => key = text(b)?.as_str().unwrap_or_default().to_string(),
            (2, Wire::Bytes(b)) => value = if value_as_bytes { base64(b) } else { text(b)? },
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut seconds = 0i64;
    while let Some((n, w)) = r.next()? {
        if let (1, Wire::Varint(v)) = (n, w) {
            seconds = v as i64;
        }
    }
    let t = chrono::DateTime::from_timestamp(seconds, 0).ok_or_else(|| bad("time out of range"))?;
    Ok(Value::String(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn message(bytes: &[u8], spec: &[(u64, Field)]) -> Result<Value, ApiError> {
    let mut out = Map::new();
    let mut r = Reader { buf: bytes, pos: 0 };
    while let Some((n, w)) = r.next()? {
        let Some((_, field)) = spec.iter().find(|(no, _)| *no == n) else { continue };
        match (field, w) {
            (Str(name), Wire::Bytes(b)) => {
                out.insert(name.to_string(), text(b)?);
            }
            (Bool(name), Wire::Varint(v)) => {
                out.insert(name.to_string(), Value::Bool(v != 0));
            }
            (Int(name), Wire::Varint(v)) => {
                out.insert(name.to_string(), Value::from(v as i64));
            }
            (Time(name), Wire::Bytes(b)) => {
                out.insert(name.to_string(), time(b)?);
            }
            (Msg(name, inner), Wire::Bytes(b)) => {
                out.insert(name.to_string(), message(b, inner)?);
            }
            (RepStr(name), Wire::Bytes(b)) => {
                let list = out.entry(name.to_string()).or_insert_with(|| Value::Array(vec![]));
                if let Some(a) = list.as_array_mut() {
                    a.push(text(b)?);
                }
            }
            (RepMsg(name, inner), Wire::Bytes(b)) => {
                let item = message(b, inner)?;
                let list = out.entry(name.to_string()).or_insert_with(|| Value::Array(vec![]));
                if let Some(a) = list.as_array_mut() {
                    a.push(item);
                }
            }
            (MapStr(name) | MapBytes(name), Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, matches!(field, MapBytes(_)))?;
                let map = out.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
                if let Some(m) = map.as_object_mut() {
                    m.insert(k, v);
                }
            }
            _ => return Err(bad(&format!("field {n} has an unexpected wire type"))),
        }
    }
    Ok(Value::Object(out))
}

/// Decode a protobuf body for `kind` into its JSON form.
pub fn decode(kind: &ResourceKind, body: &[u8]) -> Result<Value, ApiError> {
    let spec = spec_for(kind).ok_or_else(|| ApiError::unsupported_media_type(CONTENT_TYPE))?;
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s protobuf prefix"))?;
    let mut r = Reader { buf: envelope, pos: 0 };
    let (mut api_version, mut kind_name, mut raw) = (None, None, None);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                let tm = message(type_meta, &[(1, Str("apiVersion")), (2, Str("kind"))])?;
                api_version = tm.get("apiVersion").cloned();
                kind_name = tm.get("kind").cloned();
            }
            (2, Wire::Bytes(b)) => raw = Some(b),
            (3, Wire::Bytes(b)) if !b.is_empty() => return Err(bad("content encodings are not supported")),
            _ => {}
        }
    }
    let mut obj = message(raw.ok_or_else(|| bad("no object in the envelope"))?, spec)?;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), api_version.unwrap_or_else(|| Value::String(kind.api_version())));
        m.insert("kind".into(), kind_name.unwrap_or_else(|| Value::String(kind.kind.to_string())));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        [field(1, k.as_bytes()), field(2, v)].concat()
    }

    #[test]
    fn decodes_a_secret_as_kubectl_sends_it() {
        let meta = [field(1, b"creds"), field(3, b"default"), field(11, &entry("app", b"x"))].concat();
        let secret =
            [field(1, &meta), field(2, &entry("user", b"admin")), field(3, b"Opaque"), vec![(5 << 3), 1]].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &secret)].concat();
        let v = decode(&kinds::SECRET, &body).expect("decodes");
        assert_eq!(
            v,
            json!({"metadata": {"name": "creds", "namespace": "default", "labels": {"app": "x"}}, "data": {"user": "YWRtaW4="}, "type": "Opaque", "immutable": true, "apiVersion": "v1", "kind": "Secret"})
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(decode(&kinds::CONFIG_MAP, b"nope").is_err());
        assert!(decode(&kinds::CONFIG_MAP, b"k8s\0\x12\xff").is_err());
        assert!(decode(&kinds::VIRTUAL_MACHINE, b"k8s\0").is_err_and(|e| e.code == 415));
    }
}
