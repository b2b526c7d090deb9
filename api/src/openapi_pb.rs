//! `/openapi/v2` as protobuf: the Swagger 2.0 document encoded as gnostic's `openapi_v2.Document`
//! (github.com/google/gnostic-models, `openapiv2/OpenAPIv2.proto`), which is how kubectl and
//! client-go ask for it first (`Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
//!
//! The document is built as JSON once (`openapi_k8s::v2_document`) and translated here, message by
//! message, with the field numbers of that `.proto`. Swagger keys the schema has no field for
//! (OpenAPI 3's `anyOf` in a response) are left out, as gnostic's own compiler leaves them out;
//! `x-` extensions become `vendor_extension` entries holding their value as YAML (JSON is YAML).

use serde_json::{Map, Value};
use std::sync::OnceLock;

/// The media type answered with. Clients ask with an `@` in it (`…spec.v2@v1.0+protobuf`), which
/// Go's MIME parser refuses in a response's Content-Type: the apiserver answers with `.v1.0`.
pub const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
const ASKED_AS: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// Whether an Accept header asks for the protobuf form before JSON.
pub fn wants_protobuf(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        let first = first.trim();
        first.starts_with(ASKED_AS) || first.starts_with(CONTENT_TYPE)
    })
}

pub fn v2_document() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| {
        let json: Value = serde_json::from_str(crate::openapi_k8s::v2_document()).unwrap_or_default();
        document(&json).0
    })
}

/// A message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
            self.bytes(field, s.as_bytes());
        }
    }

    fn strings(&mut self, field: u32, v: Option<&Value>) {
        for s in v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            self.bytes(field, s.as_bytes());
        }
    }

    fn boolean(&mut self, field: u32, v: Option<&Value>) {
        if v.and_then(Value::as_bool) == Some(true) {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_i64).filter(|n| *n != 0) {
            self.key(field, 0);
            self.varint(n as u64);
        }
    }

    fn double(&mut self, field: u32, v: Option<&Value>) {
        if let Some(f) = v.and_then(Value::as_f64).filter(|f| *f != 0.0) {
            self.key(field, 1);
            self.0.extend_from_slice(&f.to_le_bytes());
        }
    }

    fn message(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }

    /// gnostic's `Any`: the value as YAML text (field 2).
    fn any(&mut self, field: u32, v: Option<&Value>) {
        if let Some(v) = v {
            let mut any = Msg::default();
            any.bytes(2, v.to_string().as_bytes());
            self.message(field, any);
        }
    }

    fn anys(&mut self, field: u32, v: Option<&Value>) {
        for item in v.and_then(Value::as_array).into_iter().flatten() {
            self.any(field, Some(item));
        }
    }

    /// `repeated NamedX field`: each entry of a JSON object as `{name = 1; value = 2}`.
    fn named(&mut self, field: u32, v: Option<&Value>, value: impl Fn(&Value) -> Msg) {
        for (name, item) in v.and_then(Value::as_object).into_iter().flatten() {
            let mut entry = Msg::default();
            entry.bytes(1, name.as_bytes());
            entry.message(2, value(item));
            self.message(field, entry);
        }
    }

    /// `x-` keys as `repeated NamedAny vendor_extension`.
    fn extensions(&mut self, field: u32, v: &Value) {
        for (name, item) in v.as_object().into_iter().flatten().filter(|(k, _)| k.starts_with("x-")) {
            let mut entry = Msg::default();
            entry.bytes(1, name.as_bytes());
            entry.any(2, Some(item));
            self.message(field, entry);
        }
    }
}

fn wrapped(field: u32, inner: Msg) -> Msg {
    let mut m = Msg::default();
    m.message(field, inner);
    m
}

fn document(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, v.get("swagger"));
    if let Some(info) = v.get("info") {
        let mut i = Msg::default();
        i.string(1, info.get("title"));
        i.string(2, info.get("version"));
        i.string(3, info.get("description"));
        i.extensions(7, info);
        m.message(2, i);
    }
    m.string(3, v.get("host"));
    m.string(4, v.get("basePath"));
    m.strings(5, v.get("schemes"));
    m.strings(6, v.get("consumes"));
    m.strings(7, v.get("produces"));
    if let Some(paths) = v.get("paths") {
        let mut p = Msg::default();
        p.extensions(1, paths);
        let items: Map<String, Value> = paths
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !k.starts_with("x-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        p.named(2, Some(&Value::Object(items)), path_item);
        m.message(8, p);
    }
    if let Some(defs) = v.get("definitions") {
        let mut d = Msg::default();
        d.named(1, Some(defs), schema);
        m.message(9, d);
    }
    if let Some(responses) = v.get("responses") {
        let mut r = Msg::default();
        r.named(1, Some(responses), response);
        m.message(11, r);
    }
    for requirement in v.get("security").and_then(Value::as_array).into_iter().flatten() {
        let mut s = Msg::default();
        s.named(1, Some(requirement), |scopes| {
            let mut a = Msg::default();
            a.strings(1, Some(scopes));
            a
        });
        m.message(12, s);
    }
    if let Some(defs) = v.get("securityDefinitions") {
        let mut s = Msg::default();
        s.named(1, Some(defs), security_definition);
        m.message(13, s);
    }
    m.extensions(16, v);
    m
}

fn security_definition(v: &Value) -> Msg {
    // Converge declares only bearer tokens, an apiKey scheme (oneof field 2).
    let mut key = Msg::default();
    key.string(1, v.get("type"));
    key.string(2, v.get("name"));
    key.string(3, v.get("in"));
    key.string(4, v.get("description"));
    key.extensions(5, v);
    wrapped(2, key)
}

fn path_item(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, v.get("$ref"));
    for (field, method) in
        [(2, "get"), (3, "put"), (4, "post"), (5, "delete"), (6, "options"), (7, "head"), (8, "patch")]
    {
        if let Some(op) = v.get(method) {
            m.message(field, operation(op));
        }
    }
    for p in v.get("parameters").and_then(Value::as_array).into_iter().flatten() {
        m.message(9, parameters_item(p));
    }
    m.extensions(10, v);
    m
}

fn operation(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.strings(1, v.get("tags"));
    m.string(2, v.get("summary"));
    m.string(3, v.get("description"));
    m.string(5, v.get("operationId"));
    m.strings(6, v.get("produces"));
    m.strings(7, v.get("consumes"));
    for p in v.get("parameters").and_then(Value::as_array).into_iter().flatten() {
        m.message(8, parameters_item(p));
    }
    if let Some(responses) = v.get("responses") {
        let mut r = Msg::default();
        r.named(1, Some(responses), |rv| match rv.get("$ref") {
            Some(_) => wrapped(2, json_reference(rv)),
            None => wrapped(1, response(rv)),
        });
        r.extensions(2, responses);
        m.message(9, r);
    }
    m.strings(10, v.get("schemes"));
    m.boolean(11, v.get("deprecated"));
    m.extensions(13, v);
    m
}

fn json_reference(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, v.get("$ref"));
    m.string(2, v.get("description"));
    m
}

fn response(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, v.get("description"));
    if let Some(s) = v.get("schema") {
        m.message(2, wrapped(1, schema(s)));
    }
    m.extensions(5, v);
    m
}

fn parameters_item(v: &Value) -> Msg {
    if v.get("$ref").is_some() {
        return wrapped(2, json_reference(v));
    }
    let parameter = if v.get("in").and_then(Value::as_str) == Some("body") {
        let mut b = Msg::default();
        b.string(1, v.get("description"));
        b.string(2, v.get("name"));
        b.string(3, v.get("in"));
        b.boolean(4, v.get("required"));
        if let Some(s) = v.get("schema") {
            b.message(5, schema(s));
        }
        b.extensions(6, v);
        wrapped(1, b)
    } else {
        wrapped(2, non_body_parameter(v))
    };
    wrapped(1, parameter)
}

/// Header (1), formData (2), query (3) or path (4) parameter. Query and formData carry
/// `allowEmptyValue` as field 5, which shifts every later field by one.
fn non_body_parameter(v: &Value) -> Msg {
    let (which, shift) = match v.get("in").and_then(Value::as_str) {
        Some("header") => (1, 0),
        Some("formData") => (2, 1),
        Some("path") => (4, 0),
        _ => (3, 1),
    };
    let mut m = Msg::default();
    m.boolean(1, v.get("required"));
    m.string(2, v.get("in"));
    m.string(3, v.get("description"));
    m.string(4, v.get("name"));
    if shift == 1 {
        m.boolean(5, v.get("allowEmptyValue"));
    }
    let at = |n: u32| n + shift;
    m.string(at(5), v.get("type"));
    m.string(at(6), v.get("format"));
    m.string(at(8), v.get("collectionFormat"));
    m.any(at(9), v.get("default"));
    m.double(at(10), v.get("maximum"));
    m.boolean(at(11), v.get("exclusiveMaximum"));
    m.double(at(12), v.get("minimum"));
    m.boolean(at(13), v.get("exclusiveMinimum"));
    m.int64(at(14), v.get("maxLength"));
    m.int64(at(15), v.get("minLength"));
    m.string(at(16), v.get("pattern"));
    m.int64(at(17), v.get("maxItems"));
    m.int64(at(18), v.get("minItems"));
    m.boolean(at(19), v.get("uniqueItems"));
    m.anys(at(20), v.get("enum"));
    m.double(at(21), v.get("multipleOf"));
    m.extensions(at(22), v);
    wrapped(which, m)
}

fn schema(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, v.get("$ref"));
    m.string(2, v.get("format"));
    m.string(3, v.get("title"));
    m.string(4, v.get("description"));
    m.any(5, v.get("default"));
    m.double(6, v.get("multipleOf"));
    m.double(7, v.get("maximum"));
    m.boolean(8, v.get("exclusiveMaximum"));
    m.double(9, v.get("minimum"));
    m.boolean(10, v.get("exclusiveMinimum"));
    m.int64(11, v.get("maxLength"));
    m.int64(12, v.get("minLength"));
    m.string(13, v.get("pattern"));
    m.int64(14, v.get("maxItems"));
    m.int64(15, v.get("minItems"));
    m.boolean(16, v.get("uniqueItems"));
    m.int64(17, v.get("maxProperties"));
    m.int64(18, v.get("minProperties"));
    m.strings(19, v.get("required"));
    m.anys(20, v.get("enum"));
    match v.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.key(2, 0);
            a.varint(u64::from(*b));
            m.message(21, a);
        }
        Some(s @ Value::Object(_)) => m.message(21, wrapped(1, schema(s))),
        _ => {}
    }
    match v.get("type") {
        Some(t @ Value::String(_)) => {
            let mut ty = Msg::default();
            ty.string(1, Some(t));
            m.message(22, ty);
        }
        // Several types (an int-or-string port, a nullable time) are one in Kubernetes' own
        // documents, and kubectl's reader refuses more: string where it is among them, else the
        // first that is not null.
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            if let Some(one) = names.iter().find(|t| **t == "string").or(names.first()) {
                let mut ty = Msg::default();
                ty.bytes(1, one.as_bytes());
                m.message(22, ty);
            }
        }
        _ => {}
    }
    match v.get("items") {
        Some(s @ Value::Object(_)) => m.message(23, wrapped(1, schema(s))),
        Some(Value::Array(all)) => {
            let mut items = Msg::default();
            for s in all {
                items.message(1, schema(s));
            }
            m.message(23, items);
        }
        _ => {}
    }
    for s in v.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        m.message(24, schema(s));
    }
    if let Some(props) = v.get("properties") {
        let mut p = Msg::default();
        p.named(1, Some(props), schema);
        m.message(25, p);
    }
    m.string(26, v.get("discriminator"));
    m.boolean(27, v.get("readOnly"));
    m.any(30, v.get("example"));
    m.extensions(31, v);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Field (number, wire type, payload) triples of one message level.
    fn fields(mut b: &[u8]) -> Vec<(u64, u8, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            while let Some((&byte, rest)) = b.split_first() {
                *b = rest;
                v |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = vec![];
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wire) = (key >> 3, (key & 7) as u8);
            let payload = match wire {
                0 => varint(&mut b).to_le_bytes().to_vec(),
                1 => {
                    let (p, rest) = b.split_at(8);
                    b = rest;
                    p.to_vec()
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let (p, rest) = b.split_at(n);
                    b = rest;
                    p.to_vec()
                }
                other => panic!("wire type {other}"),
            };
            out.push((field, wire, payload));
        }
        out
    }

    fn field(b: &[u8], n: u64) -> Vec<Vec<u8>> {
        fields(b).into_iter().filter(|(f, _, _)| *f == n).map(|(_, _, p)| p).collect()
    }

    #[test]
    fn schemas_encode_with_gnostics_field_numbers() {
        let s = json!({"type": "object", "required": ["spec"], "properties": {"spec": {"$ref": "#/definitions/X"}},
                       "x-kubernetes-group-version-kind": [{"group": "", "kind": "K", "version": "v1"}]});
        let b = schema(&s).0;
        assert_eq!(field(&field(&b, 22)[0], 1), vec![b"object".to_vec()]);
        assert_eq!(field(&b, 19), vec![b"spec".to_vec()]);
        let prop = &field(&field(&b, 25)[0], 1)[0];
        assert_eq!(field(prop, 1), vec![b"spec".to_vec()]);
        assert_eq!(field(&field(prop, 2)[0], 1), vec![b"#/definitions/X".to_vec()]);
        let ext = &field(&b, 31)[0];
        assert_eq!(field(ext, 1), vec![b"x-kubernetes-group-version-kind".to_vec()]);
        let yaml = String::from_utf8(field(&field(ext, 2)[0], 2)[0].clone()).unwrap();
        assert!(yaml.contains("\"kind\":\"K\""), "{yaml}");
    }

    #[test]
    fn the_served_document_has_every_path_and_definition() {
        let json: Value = serde_json::from_str(crate::openapi_k8s::v2_document()).unwrap();
        let b = v2_document();
        assert_eq!(field(b, 1), vec![b"2.0".to_vec()]);
        let paths = field(&field(b, 8)[0], 2).len();
        assert_eq!(paths, json["paths"].as_object().unwrap().len());
        let defs = field(&field(b, 9)[0], 1).len();
        assert_eq!(defs, json["definitions"].as_object().unwrap().len());
        // A query parameter is NonBodyParameter.query_parameter_sub_schema (3) with its name at 4.
        let query = json!({"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true});
        let item = parameters_item(&query).0;
        let sub = &field(&field(&field(&item, 1)[0], 2)[0], 3)[0];
        assert_eq!(field(sub, 4), vec![b"fieldValidation".to_vec()]);
        assert_eq!(field(sub, 6), vec![b"string".to_vec()]);
        assert!(wants_protobuf("application/com.github.proto-openapi.spec.v2@v1.0+protobuf, application/json"));
        assert!(!wants_protobuf("application/json"));
    }
}
