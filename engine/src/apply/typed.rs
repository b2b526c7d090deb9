//! Objects walked by their schema, as structured-merge-diff walks them: which paths a value
//! sets, how an applied configuration merges into a live object, and which paths differ
//! between two versions.
//!
//! List semantics come from `x-kubernetes-list-type` (`map` with `-list-map-keys`, `set`,
//! `atomic`) and default to atomic, as on a CRD whose schema says nothing — so KubeVirt's
//! disks, interfaces and volumes are replaced whole by an apply, as on a real cluster. Objects
//! are granular unless `x-kubernetes-map-type: atomic`. A value with no schema (preserved
//! unknown fields, int-or-string) is typed by what it is.

use super::fieldpath::{canonical, Element, FieldSet, Path};
use crate::schema;
use serde_json::{Map, Value};

/// A schema node; `None` where the schema says nothing.
pub type Ty = Option<&'static Value>;

fn resolve(mut ty: Ty) -> Ty {
    // References chain at most a few deep; the bound keeps a cyclic schema finite.
    for _ in 0..8 {
        match ty.and_then(|s| s.get("$ref")).and_then(Value::as_str) {
            Some(r) => ty = r.strip_prefix("#/definitions/").and_then(|n| schema::definitions().get(n)),
            None => return ty,
        }
    }
    None
}

pub fn definition(name: &str) -> Ty {
    schema::definitions().get(name)
}

enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

fn list_kind(ty: Ty) -> ListKind {
    let Some(s) = ty else { return ListKind::Atomic };
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListKind::Set,
        Some("map") => {
            let keys: Vec<String> = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            if keys.is_empty() {
                ListKind::Atomic
            } else {
                ListKind::Map(keys)
            }
        }
        _ => ListKind::Atomic,
    }
}

fn is_atomic_object(ty: Ty) -> bool {
    ty.and_then(|s| s.get("x-kubernetes-map-type")).and_then(Value::as_str) == Some("atomic")
}

fn items_of(ty: Ty) -> Ty {
    resolve(ty.and_then(|s| s.get("items")))
}

/// The schema of `key` inside an object, and whether it is a declared field (not a map entry).
fn child_of(ty: Ty, key: &str) -> (Ty, bool) {
    let Some(s) = ty else { return (None, false) };
    if let Some(p) = s.get("properties").and_then(|p| p.get(key)) {
        return (resolve(Some(p)), true);
    }
    match s.get("additionalProperties") {
        Some(a) if a.is_object() => (resolve(Some(a)), false),
        _ => (None, false),
    }
}

/// The path element naming `item` in a granular list, `None` for an atomic one. An item missing
/// a key field takes the field's schema default (a ServicePort's protocol is TCP), as the
/// apiserver keys it; one with no key at all is named by its index.
fn item_element(kind: &ListKind, item: &Value, item_ty: Ty, index: usize) -> Option<Element> {
    match kind {
        ListKind::Atomic => None,
        ListKind::Set => Some(Element::Value(canonical(item))),
        ListKind::Map(keys) => {
            let mut fields = Map::new();
            for k in keys {
                let default = || child_of(item_ty, k).0.and_then(|s| s.get("default")).cloned();
                match item.get(k).cloned().or_else(default) {
                    Some(v) => {
                        fields.insert(k.clone(), v);
                    }
                    None => return Some(Element::Index(index)),
                }
            }
            Some(Element::Key(canonical(&Value::Object(fields))))
        }
    }
}

/// The paths `value` sets: its leaves, atomic values, map entries and list items.
pub fn to_set(value: &Value, ty: Ty, path: &mut Path, set: &mut FieldSet) {
    let ty = resolve(ty);
    match value {
        Value::Object(m) if !is_atomic_object(ty) => {
            for (k, v) in m {
                let (child_ty, declared) = child_of(ty, k);
                path.push(Element::Field(k.clone()));
                to_set(v, child_ty, path, set);
                let empty = v.is_null() || v.as_object().is_some_and(Map::is_empty);
                if empty || !declared {
                    set.insert(path.clone());
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            let kind = list_kind(ty);
            if matches!(kind, ListKind::Atomic) {
                set.insert(path.clone());
                return;
            }
            let item_ty = items_of(ty);
            for (i, item) in items.iter().enumerate() {
                let Some(e) = item_element(&kind, item, item_ty, i) else { continue };
                path.push(e);
                to_set(item, item_ty, path, set);
                set.insert(path.clone());
                path.pop();
            }
        }
        _ => set.insert(path.clone()),
    }
}

/// `applied` merged into `live`: granular objects field by field (a null removes), keyed lists
/// item by item, sets as unions; everything else is replaced.
pub fn merge(live: &Value, applied: &Value, ty: Ty) -> Value {
    let ty = resolve(ty);
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !is_atomic_object(ty) => {
            // Live's fields in live's order, each merged or copied once; then the new ones.
            let mut out = Map::new();
            for (k, lv) in l {
                match a.get(k) {
                    Some(Value::Null) => {}
                    Some(av) => {
                        out.insert(k.clone(), merge(lv, av, child_of(ty, k).0));
                    }
                    None => {
                        out.insert(k.clone(), lv.clone());
                    }
                }
            }
            for (k, av) in a.iter().filter(|(k, av)| !av.is_null() && !l.contains_key(*k)) {
                out.insert(k.clone(), av.clone());
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => {
            let kind = list_kind(ty);
            if matches!(kind, ListKind::Atomic) {
                return applied.clone();
            }
            let item_ty = items_of(ty);
            let mut out: Vec<(Option<Element>, Value)> =
                named(&kind, l, item_ty).into_iter().map(|(e, v)| (e, v.clone())).collect();
            for (e, av) in named(&kind, a, item_ty) {
                let at = e.as_ref().and_then(|e| out.iter().position(|(o, _)| o.as_ref() == Some(e)));
                match (at, &e) {
                    (Some(i), Some(Element::Key(_))) => out[i].1 = merge(&out[i].1, av, item_ty),
                    (Some(_), _) => {}
                    (None, _) => out.push((e, av.clone())),
                }
            }
            Value::Array(out.into_iter().map(|(_, v)| v).collect())
        }
        _ => applied.clone(),
    }
}

/// A granular list's items with the path element naming each (borrowed: compared, not copied).
fn named<'v>(kind: &ListKind, items: &'v [Value], item_ty: Ty) -> Vec<(Option<Element>, &'v Value)> {
    items.iter().enumerate().map(|(i, v)| (item_element(kind, v, item_ty, i), v)).collect()
}

/// The paths that differ between `old` and `new` (added, changed or removed), with everything
/// under a subtree that appeared or went.
pub fn compare<'a>(old: Option<&'a Value>, new: Option<&'a Value>, ty: Ty, path: &mut Path, out: &mut FieldSet) {
    if old == new {
        return;
    }
    let ty = resolve(ty);
    match (old, new) {
        (Some(Value::Object(o)), Some(Value::Object(n))) if !is_atomic_object(ty) => {
            for k in o.keys().chain(n.keys().filter(|k| !o.contains_key(*k))) {
                path.push(Element::Field(k.clone()));
                compare(o.get(k), n.get(k), child_of(ty, k).0, path, out);
                path.pop();
            }
        }
        (Some(Value::Array(o)), Some(Value::Array(n))) if !matches!(list_kind(ty), ListKind::Atomic) => {
            let kind = list_kind(ty);
            let item_ty = items_of(ty);
            let (o, n) = (named(&kind, o, item_ty), named(&kind, n, item_ty));
            let find = |list: &[(Option<Element>, &'a Value)], e: &Element| {
                list.iter().find(|(x, _)| x.as_ref() == Some(e)).map(|(_, v)| *v)
            };
            let elements: std::collections::BTreeSet<Element> =
                o.iter().chain(n.iter()).filter_map(|(e, _)| e.clone()).collect();
            for e in elements {
                let (ov, nv) = (find(&o, &e), find(&n, &e));
                path.push(e);
                compare(ov, nv, item_ty, path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
            for side in [old, new].into_iter().flatten() {
                to_set(side, ty, path, out);
            }
        }
    }
}

/// Remove what `path` names from `obj`; false when it is not there.
pub fn remove(obj: &mut Value, path: &[Element], ty: Ty) -> bool {
    let ty = resolve(ty);
    let Some((first, rest)) = path.split_first() else { return false };
    match (obj, first) {
        (Value::Object(m), Element::Field(f)) => {
            if rest.is_empty() {
                return m.remove(f).is_some();
            }
            let child_ty = child_of(ty, f).0;
            m.get_mut(f).is_some_and(|c| remove(c, rest, child_ty))
        }
        (Value::Array(items), e) => {
            let kind = list_kind(ty);
            let item_ty = items_of(ty);
            let Some(i) =
                items.iter().enumerate().position(|(i, v)| item_element(&kind, v, item_ty, i).as_ref() == Some(e))
            else {
                return false;
            };
            if rest.is_empty() {
                items.remove(i);
                true
            } else {
                remove(&mut items[i], rest, item_ty)
            }
        }
        _ => false,
    }
}
