//! Kubernetes' protobuf request bodies, for every core kind Converge serves: client-go sends
//! typed objects so by default, and kubectl's generators (`kubectl create service clusterip`,
//! `configmap`, `secret`, `namespace`) do too. A body is `k8s\0` followed by a `runtime.Unknown`
//! whose `raw` holds the object, decoded here into the JSON the rest of the server speaks.
//!
//! The field numbers, names and types come from Kubernetes' own `generated.proto` files
//! (`api/proto/`, read by `schema`); what is ours is the mapping of the types that are not
//! plain in JSON — Quantity, IntOrString, Time, MicroTime, Duration, RawExtension, FieldsV1,
//! bytes — and dropping the empty values Go's protobuf writes where its JSON leaves the field out.

mod schema;

#[cfg(test)]
use converge_engine::kinds;
use converge_engine::kinds::ResourceKind;
use converge_engine::ApiError;
use schema::Type;
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";
/// Deeper than any Kubernetes object nests; a hostile body cannot recurse further.
const MAX_DEPTH: usize = 48;

const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";

/// The protobuf message of `kind`: `k8s.io.api.{core|apps|storage|discovery}.{version}.{Kind}`.
fn message_of(kind: &ResourceKind) -> Option<String> {
    let package = if kind.group.is_empty() { "core" } else { kind.group.split('.').next().unwrap_or_default() };
    let name = format!("k8s.io.api.{package}.{}.{}", kind.version, kind.kind);
    schema::messages().contains_key(&name).then_some(name)
}

/// Whether `kind` takes protobuf bodies: every kind of Kubernetes' own groups that we serve.
pub fn accepts(kind: &ResourceKind) -> bool {
    message_of(kind).is_some()
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
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
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
            1 => Wire::Fixed64(self.take(8)?.try_into().map_err(|_| bad("fixed64"))?),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed32(self.take(4)?.try_into().map_err(|_| bad("fixed32"))?),
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

fn fields(bytes: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ApiError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut out = vec![];
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn int_field(bytes: &[u8], number: u64) -> Result<i64, ApiError> {
    Ok(fields(bytes)?
        .into_iter()
        .rev()
        .find_map(|(n, w)| match (n, w) {
            (m, Wire::Varint(v)) if m == number => Some(v as i64),
            _ => None,
        })
        .unwrap_or(0))
}

fn bytes_field(bytes: &[u8], number: u64) -> Result<&[u8], ApiError> {
    Ok(fields(bytes)?
        .into_iter()
        .rev()
        .find_map(|(n, w)| match (n, w) {
            (m, Wire::Bytes(b)) if m == number => Some(b),
            _ => None,
        })
        .unwrap_or_default())
}

fn timestamp(bytes: &[u8], micros: bool) -> Result<Value, ApiError> {
    let (seconds, nanos) = (int_field(bytes, 1)?, int_field(bytes, 2)?);
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null); // Go's zero time, which its JSON writes as null
    }
    let nanos = u32::try_from(nanos).map_err(|_| bad("time nanoseconds out of range"))?;
    let t = chrono::DateTime::from_timestamp(seconds, nanos).ok_or_else(|| bad("time out of range"))?;
    let format = if micros { "%Y-%m-%dT%H:%M:%S%.6fZ" } else { "%Y-%m-%dT%H:%M:%SZ" };
    Ok(Value::String(t.format(format).to_string()))
}

/// Go's `time.Duration` text (`1h30m0s`, `1.5s`), as metav1.Duration marshals it.
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    let (h, m) = (ns / 3_600_000_000_000, (ns / 60_000_000_000) % 60);
    let rest = ns % 60_000_000_000;
    let secs = format!("{}.{:09}", rest / 1_000_000_000, rest % 1_000_000_000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

fn json_bytes(raw: &[u8], what: &str) -> Result<Value, ApiError> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(raw).map_err(|e| bad(&format!("{what} does not hold JSON: {e}")))
}

/// The JSON of message `name`, read from `bytes`.
fn message(name: &str, bytes: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad("nested too deep"));
    }
    match name {
        QUANTITY => return text(bytes_field(bytes, 1)?),
        TIME => return timestamp(bytes, false),
        MICRO_TIME => return timestamp(bytes, true),
        DURATION => return Ok(Value::String(go_duration(int_field(bytes, 1)?))),
        FIELDS_V1 => return json_bytes(bytes_field(bytes, 1)?, "a FieldsV1"),
        RAW_EXTENSION => return json_bytes(bytes_field(bytes, 1)?, "a RawExtension"),
        INT_OR_STRING => {
            return Ok(match int_field(bytes, 1)? {
                1 => text(bytes_field(bytes, 3)?)?,
                _ => match int_field(bytes, 2)? {
                    0 => Value::Null,
                    n => Value::from(n),
                },
            })
        }
        _ => {}
    }
    let table = schema::messages().get(name).ok_or_else(|| bad(&format!("no message {name}")))?;
    let mut out = Map::new();
    for (number, wire) in fields(bytes)? {
        // A field this version does not know is skipped, as an older apiserver skips it.
        let Some(field) = table.get(&number) else { continue };
        match &field.ty {
            Type::Map(k, v) => {
                let Wire::Bytes(entry) = wire else {
                    return Err(bad(&format!("{}: a map entry is not a message", field.name)));
                };
                let (mut key, mut value) = (String::new(), Value::Null);
                for (n, w) in fields(entry)? {
                    match n {
                        1 => key = value_of(k, w, depth, &field.name)?.as_str().unwrap_or_default().to_string(),
                        2 => value = value_of(v, w, depth, &field.name)?,
                        _ => {}
                    }
                }
                if value.is_null() {
                    value = if **v == Type::Bytes || **v == Type::String {
                        Value::String(String::new())
                    } else {
                        Value::Null
                    };
                }
                let map = out.entry(field.name.clone()).or_insert_with(|| Value::Object(Map::new()));
                if let Some(m) = map.as_object_mut() {
                    m.insert(key, value);
                }
            }
            ty if field.repeated => {
                let items = match (ty, wire) {
                    // Packed numbers: one length-delimited run of varints.
                    (Type::Int | Type::Bool, Wire::Bytes(run)) => {
                        let mut r = Reader { buf: run, pos: 0 };
                        let mut items = vec![];
                        while r.pos < run.len() {
                            let v = r.varint()?;
                            items.push(if *ty == Type::Bool { Value::Bool(v != 0) } else { Value::from(v as i64) });
                        }
                        items
                    }
                    (ty, w) => vec![value_of(ty, w, depth, &field.name)?],
                };
                let list = out.entry(field.name.clone()).or_insert_with(|| Value::Array(vec![]));
                if let Some(a) = list.as_array_mut() {
                    a.extend(items);
                }
            }
            ty => {
                let v = value_of(ty, wire, depth, &field.name)?;
                if !is_empty(&v) {
                    out.insert(field.name.clone(), v);
                } else {
                    out.remove(&field.name);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// What Go's protobuf writes for a field its JSON omits (`omitempty`): empty text, zero, false,
/// a zero time.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn value_of(ty: &Type, wire: Wire<'_>, depth: usize, field: &str) -> Result<Value, ApiError> {
    let mismatch = || bad(&format!("{field}: the wire type does not match the field's type"));
    Ok(match (ty, wire) {
        (Type::String, Wire::Bytes(b)) => text(b)?,
        (Type::Bytes, Wire::Bytes(b)) => base64(b),
        (Type::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        (Type::Int, Wire::Varint(v)) => Value::from(v as i64),
        (Type::Double, Wire::Fixed64(b)) => {
            serde_json::Number::from_f64(f64::from_le_bytes(b)).map_or(Value::Null, Value::Number)
        }
        (Type::Float, Wire::Fixed32(b)) => {
            serde_json::Number::from_f64(f64::from(f32::from_le_bytes(b))).map_or(Value::Null, Value::Number)
        }
        (Type::Message(name), Wire::Bytes(b)) => message(name, b, depth + 1)?,
        _ => return Err(mismatch()),
    })
}

/// Decode a protobuf body for `kind` into its JSON form.
pub fn decode(kind: &ResourceKind, body: &[u8]) -> Result<Value, ApiError> {
    let name = message_of(kind).ok_or_else(|| ApiError::unsupported_media_type(CONTENT_TYPE))?;
    let mut obj = decode_message(&name, body)?;
    if let Some(m) = obj.as_object_mut() {
        m.entry("apiVersion").or_insert_with(|| Value::String(kind.api_version()));
        m.entry("kind").or_insert_with(|| Value::String(kind.kind.to_string()));
    }
    Ok(obj)
}

/// Decode a protobuf body holding message `name` (a served kind's, or a review's) into JSON,
/// with the envelope's apiVersion and kind.
pub fn decode_message(name: &str, body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s protobuf prefix"))?;
    let mut r = Reader { buf: envelope, pos: 0 };
    let (mut api_version, mut kind_name, mut raw) = (None, None, None);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                let tm = message("k8s.io.apimachinery.pkg.runtime.TypeMeta", type_meta, 0)?;
                api_version = tm.get("apiVersion").cloned();
                kind_name = tm.get("kind").cloned();
            }
            (2, Wire::Bytes(b)) => raw = Some(b),
            (3, Wire::Bytes(b)) if !b.is_empty() => return Err(bad("content encodings are not supported")),
            _ => {}
        }
    }
    let mut obj = message(name, raw.ok_or_else(|| bad("no object in the envelope"))?, 0)?;
    if let Some(m) = obj.as_object_mut() {
        if let Some(v) = api_version {
            m.insert("apiVersion".into(), v);
        }
        if let Some(k) = kind_name {
            m.insert("kind".into(), k);
        }
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

    fn varint_field(n: u64, v: u64) -> Vec<u8> {
        vec![(n << 3) as u8, v as u8]
    }

    #[test]
    fn decodes_a_service_with_int_or_string_and_times() {
        let target = [varint_field(1, 1), field(3, b"http")].concat();
        let port =
            [field(1, b"web"), field(2, b"TCP"), varint_field(3, 80), field(4, &target), varint_field(5, 0)].concat();
        let spec = [field(1, &port), field(3, b""), field(4, b"ClusterIP")].concat();
        let created = varint_field(1, 100);
        let meta = [field(1, b"web"), field(8, &created)].concat();
        let svc = [field(1, &meta), field(2, &spec)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Service")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &svc)].concat();
        let v = decode(&kinds::SERVICE, &body).expect("decodes");
        assert_eq!(v["spec"]["ports"], json!([{"name": "web", "protocol": "TCP", "port": 80, "targetPort": "http"}]));
        assert_eq!(v["spec"]["type"], "ClusterIP");
        assert!(v["spec"].get("clusterIP").is_none(), "empty text is left out, as Go's JSON leaves it");
        assert_eq!(v["metadata"]["creationTimestamp"], "1970-01-01T00:01:40Z");
        assert!(
            accepts(&kinds::STORAGE_CLASS) && accepts(&kinds::ENDPOINT_SLICE) && accepts(&kinds::CONTROLLER_REVISION)
        );
        assert!(!accepts(&kinds::DATA_VOLUME));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(90 * 60 * 1_000_000_000), "1h30m0s");
        assert_eq!(go_duration(-61_000_000_000), "-1m1s");
    }

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        // A message nested past any real object, and lengths past the body.
        let mut deep = b"x".to_vec();
        for _ in 0..100 {
            deep = field(1, &deep);
        }
        let body = [MAGIC.to_vec(), field(2, &deep)].concat();
        assert!(decode(&kinds::SERVICE, &body).is_err());
        assert!(decode(&kinds::SERVICE, b"k8s\0\x12\x05\x0a\xff\xff\xff\x0f").is_err());
    }

    #[test]
    fn refuses_garbage() {
        assert!(decode(&kinds::CONFIG_MAP, b"nope").is_err());
        assert!(decode(&kinds::CONFIG_MAP, b"k8s\0\x12\xff").is_err());
        assert!(decode(&kinds::VIRTUAL_MACHINE, b"k8s\0").is_err_and(|e| e.code == 415));
    }
}
