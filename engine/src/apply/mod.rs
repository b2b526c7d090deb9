//! Server-side apply and the field ownership behind it (`metadata.managedFields`).
//!
//! Every write records which manager set which fields. An apply merges the manager's
//! configuration into the live object, refuses to change fields another manager owns
//! (409 with the conflicting paths) unless forced, and removes fields the manager set last time
//! and no longer does when nobody else owns them. Any other write (create, update, patch) takes
//! the fields it changes from whoever had them, as the apiserver's field manager does.

pub mod fieldpath;
pub mod typed;

#[cfg(test)]
mod tests;

use fieldpath::{display, FieldSet, Path};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// Who writes, and through which version and subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub name: String,
    pub operation: Operation,
    pub api_version: String,
    pub subresource: Option<String>,
}

/// Which part of an object a write may change, so that a main-resource write never takes
/// ownership of status, nor a status write of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole object but status when the kind has a status subresource.
    Main {
        status_subresource: bool,
    },
    Status,
}

/// A `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn is(&self, m: &Manager) -> bool {
        self.manager == m.name && self.operation == m.operation && self.subresource == m.subresource
    }

    /// How the apiserver names a manager in a conflict.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
        });
        if let Some(t) = &self.time {
            v["time"] = json!(t);
        }
        v["fieldsType"] = json!("FieldsV1");
        v["fieldsV1"] = self.fields.to_fields_v1();
        if let Some(s) = &self.subresource {
            v["subresource"] = json!(s);
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    #[error("metadata.managedFields: {0}")]
    ManagedFields(String),
}

/// The apiserver's wording, which kubectl prints as it is.
fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", only.manager, only.path);
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort();
    managers.dedup();
    let mut lines = vec![];
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        lines.extend(conflicts.iter().filter(|c| c.manager == m).map(|c| format!("- {}", c.path)));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// Metadata the server sets: nobody owns it.
const SERVER_METADATA: &[&str] =
    &["name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "selfLink", "managedFields"];

/// The part of `obj` ownership is tracked over in `scope`.
fn owned_view(obj: &Value, scope: Scope) -> Value {
    let Value::Object(m) = obj else { return json!({}) };
    let mut out = Map::new();
    for (k, v) in m {
        let keep = match (scope, k.as_str()) {
            (_, "apiVersion" | "kind") => false,
            (Scope::Status, key) => key == "status",
            (Scope::Main { status_subresource }, "status") => !status_subresource,
            _ => true,
        };
        if keep {
            out.insert(k.clone(), v.clone());
        }
    }
    if let Some(Value::Object(meta)) = out.get_mut("metadata") {
        meta.retain(|k, _| !SERVER_METADATA.contains(&k.as_str()));
        if meta.is_empty() {
            out.remove("metadata");
        }
    }
    Value::Object(out)
}

fn set_of(obj: &Value, def: &str) -> FieldSet {
    let mut set = FieldSet::new();
    typed::to_set(obj, typed::definition(def), &mut Path::new(), &mut set);
    set
}

fn changes(old: &Value, new: &Value, def: &str) -> FieldSet {
    let mut set = FieldSet::new();
    typed::compare(Some(old), Some(new), typed::definition(def), &mut Path::new(), &mut set);
    set
}

fn parse_entry(v: &Value) -> Result<Entry, ApplyError> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let bad = |why: &str| ApplyError::ManagedFields(why.to_string());
    let operation = match v.get("operation").and_then(Value::as_str) {
        Some("Apply") => Operation::Apply,
        Some("Update") => Operation::Update,
        other => {
            return Err(bad(&format!(
                "operation: Unsupported value: {other:?}: supported values: \"Apply\", \"Update\""
            )))
        }
    };
    match v.get("fieldsType").and_then(Value::as_str) {
        Some("FieldsV1") | None => {}
        Some(other) => {
            return Err(bad(&format!("fieldsType: Unsupported value: {other:?}: supported values: \"FieldsV1\"")))
        }
    }
    let fields = match v.get("fieldsV1") {
        None | Some(Value::Null) => FieldSet::new(),
        Some(f) => FieldSet::from_fields_v1(f).map_err(|e| bad(&e.to_string()))?,
    };
    Ok(Entry {
        manager: text("manager").ok_or_else(|| bad("manager: Required value"))?,
        operation,
        api_version: text("apiVersion").unwrap_or_default(),
        time: text("time"),
        subresource: text("subresource").filter(|s| !s.is_empty()),
        fields,
    })
}

/// The entries `obj` carries. Stored entries are the server's own; a request's are checked.
pub fn entries(obj: &Value) -> Result<Vec<Entry>, ApplyError> {
    match obj.get("metadata").and_then(|m| m.get("managedFields")) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items.iter().map(parse_entry).collect(),
        Some(_) => Err(ApplyError::ManagedFields("must be a list".into())),
    }
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let meta = crate::meta::metadata_mut(obj);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries.iter().map(Entry::to_json).collect()));
    }
}

/// What the request says of `managedFields`: nothing (absent, or an empty list — so a client
/// unaware of the field never strips it), the stored ones back, or a replacement. A list holding
/// an entry without a manager resets them, as the apiserver documents.
enum Given {
    Unchanged,
    Reset,
    Replaced(Vec<Entry>),
}

fn given(old: Option<&Value>, new: &Value) -> Result<Given, ApplyError> {
    let sent = new.get("metadata").and_then(|m| m.get("managedFields"));
    let stored = old.and_then(|o| o.get("metadata")).and_then(|m| m.get("managedFields"));
    match sent {
        None | Some(Value::Null) => Ok(Given::Unchanged),
        Some(Value::Array(a)) if a.is_empty() => Ok(Given::Unchanged),
        Some(s) if Some(s) == stored => Ok(Given::Unchanged),
        Some(Value::Array(a)) if a.iter().any(|e| e.get("manager").is_none_or(Value::is_null)) => Ok(Given::Reset),
        Some(_) => entries(new).map(Given::Replaced),
    }
}

fn stored_entries(old: Option<&Value>) -> Vec<Entry> {
    // Entries the server wrote parse; should one not, ownership starts over rather than failing
    // every later write to the object.
    old.map(|o| entries(o).unwrap_or_default()).unwrap_or_default()
}

/// Record a create, update or non-apply patch by `manager` in `new`'s `managedFields`.
pub fn track_update(
    def: &str,
    scope: Scope,
    old: Option<&Value>,
    new: &mut Value,
    manager: &Manager,
    now: &str,
) -> Result<(), ApplyError> {
    let mut list = match given(old, new)? {
        Given::Reset => {
            write_entries(new, &[]);
            return Ok(());
        }
        Given::Replaced(list) => {
            write_entries(new, &list);
            return Ok(());
        }
        Given::Unchanged => stored_entries(old),
    };
    let new_view = owned_view(new, scope);
    // A create changes every field it sets: one walk instead of a comparison with nothing. An
    // update walks the new object's fields only when something changed.
    let (changed, walked) = match old {
        Some(o) => (changes(&owned_view(o, scope), &new_view, def), None),
        None => {
            let set = set_of(&new_view, def);
            (set.clone(), Some(set))
        }
    };
    if !changed.is_empty() {
        let now_set = walked.unwrap_or_else(|| set_of(&new_view, def));
        for e in list.iter_mut().filter(|e| !e.is(manager)) {
            e.fields = e.fields.difference(&changed);
        }
        let mine = match list.iter().position(|e| e.is(manager)) {
            Some(i) => i,
            None => {
                list.push(entry_for(manager, FieldSet::new(), now));
                list.len() - 1
            }
        };
        let entry = &mut list[mine];
        let fields = entry.fields.union(&changed).intersection(&now_set);
        // The time says when the manager's fields last changed, not when it last wrote.
        if fields != entry.fields {
            entry.fields = fields;
            entry.api_version = manager.api_version.clone();
            entry.time = Some(now.to_string());
        }
    }
    list.retain(|e| !e.fields.is_empty());
    write_entries(new, &list);
    Ok(())
}

fn entry_for(manager: &Manager, fields: FieldSet, now: &str) -> Entry {
    Entry {
        manager: manager.name.clone(),
        operation: manager.operation,
        api_version: manager.api_version.clone(),
        time: Some(now.to_string()),
        subresource: manager.subresource.clone(),
        fields,
    }
}

/// The annotation client-side apply keeps; an apply keeps it current where it is present, so a
/// later `kubectl apply` without `--server-side` computes its patch from what was applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The fields kubectl's first server-side apply to an object it applied client-side may take
/// without a conflict: those its last-applied configuration set and the live object still holds,
/// as the apiserver lets manager `kubectl` (alone) take them, so switching needs no `--force`.
fn allowed_by_client_side_apply(
    def: &str,
    scope: Scope,
    live: Option<&Value>,
    manager: &Manager,
    normalize: &dyn Fn(&mut Value),
) -> FieldSet {
    if manager.name != "kubectl" {
        return FieldSet::new();
    }
    let Some(text) =
        live.and_then(|l| l.pointer("/metadata/annotations")).and_then(|a| a.get(LAST_APPLIED)).and_then(Value::as_str)
    else {
        return FieldSet::new();
    };
    let Ok(mut last) = serde_json::from_str::<Value>(text) else { return FieldSet::new() };
    normalize(&mut last);
    let (last, live) = (owned_view(&last, scope), live.map(|l| owned_view(l, scope)).unwrap_or_default());
    set_of(&last, def).difference(&changes(&last, &live, def))
}

/// Server-side apply of `applied` by `manager` to `live` (`None`: the object is created).
/// Returns the object to write, its `managedFields` set. `normalize` does to a configuration
/// what the server's defaulting will (a VM keeps the MACs it was given), so a field the
/// server puts back is not counted as changed.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    def: &str,
    scope: Scope,
    live: Option<&Value>,
    applied: &Value,
    manager: &Manager,
    force: bool,
    now: &str,
    normalize: &dyn Fn(&mut Value),
) -> Result<Value, ApplyError> {
    let mut config = applied.clone();
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        if meta.get("managedFields").is_some_and(|m| !m.is_null()) {
            return Err(ApplyError::ManagedFields("must be nil in an applied configuration".into()));
        }
        meta.remove("managedFields");
    }
    // What the manager may set in this scope; the rest of its configuration is ignored.
    let config_view = owned_view(&config, scope);
    match scope {
        Scope::Status => {
            let mut only = json!({"apiVersion": config.get("apiVersion"), "kind": config.get("kind"), "metadata": config.get("metadata")});
            if let Some(s) = config.get("status") {
                only["status"] = s.clone();
            }
            config = only;
        }
        Scope::Main { status_subresource: true } => {
            if let Some(m) = config.as_object_mut() {
                m.remove("status");
            }
        }
        Scope::Main { .. } => {}
    }
    let ty = typed::definition(def);
    let mut list = stored_entries(live);
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut merged = typed::merge(&base, &config, ty);
    normalize(&mut merged);
    let changed = changes(&owned_view(&base, scope), &owned_view(&merged, scope), def);
    let taken: Vec<FieldSet> =
        list.iter().map(|e| if e.is(manager) { FieldSet::new() } else { e.fields.intersection(&changed) }).collect();
    if !force && taken.iter().any(|t| !t.is_empty()) {
        let allowed = allowed_by_client_side_apply(def, scope, live, manager, normalize);
        let conflicts: Vec<Conflict> = list
            .iter()
            .zip(&taken)
            .flat_map(|(e, t)| {
                t.difference(&allowed)
                    .iter()
                    .map(|p| Conflict { manager: e.describe(), path: display(p) })
                    .collect::<Vec<_>>()
            })
            .collect();
        if !conflicts.is_empty() {
            return Err(ApplyError::Conflicts(conflicts));
        }
    }
    // Forced, or all taken as client-side apply's: the others lose what this apply changes.
    for (e, t) in list.iter_mut().zip(&taken) {
        e.fields = e.fields.difference(t);
    }
    let now_owned = set_of(&config_view, def);
    let before = list.iter().find(|e| e.is(manager)).map(|e| e.fields.clone()).unwrap_or_default();
    let others: Vec<&FieldSet> = list.iter().filter(|e| !e.is(manager)).map(|e| &e.fields).collect();
    // Deepest first, so an item's fields go before the item.
    for path in before.difference(&now_owned).iter().rev() {
        if !others.iter().any(|s| s.has_at_or_under(path)) {
            typed::remove(&mut merged, path, ty);
        }
    }
    // An apply that changes nothing leaves its entry (and so the object) as it was.
    let unchanged = changed.is_empty() && before == now_owned;
    match list.iter().position(|e| e.is(manager)) {
        Some(_) if unchanged => {}
        Some(i) => list[i] = entry_for(manager, now_owned, now),
        None => list.insert(0, entry_for(manager, now_owned, now)),
    }
    list.retain(|e| !e.fields.is_empty() || e.is(manager));
    write_entries(&mut merged, &list);
    if let Some(annotations) = merged.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        if annotations.contains_key(LAST_APPLIED) {
            let mut last = applied.clone();
            if let Some(a) = last.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
                a.remove(LAST_APPLIED);
            }
            annotations.insert(LAST_APPLIED.into(), json!(last.to_string()));
        }
    }
    Ok(merged)
}
