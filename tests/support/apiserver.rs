//! An in-memory Kubernetes API server for controller tests, served to a real
//! `kube::Client` as a tower `Service`: get, list (label and field selectors), watch
//! (streamed, resumable from a resourceVersion), create, server-side apply (with
//! per-manager field ownership, so fields a manager stops applying are removed), merge
//! patch, replace (with optimistic concurrency), delete (with owner-reference garbage
//! collection), the status subresource, and injected faults. Every request is recorded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = UnsyncBoxBody<Bytes, Infallible>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request as the double saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// `group/resource` (`/secrets` for the core group), plus `/status` for the subresource.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub watch: bool,
    pub content_type: Option<String>,
    pub body: Option<Value>,
    /// `fieldSelector` of a list or watch.
    pub field_selector: Option<String>,
    /// The verbs a real API server authorizes for this request: one, plus `create` for a
    /// server-side apply of an object that does not exist yet.
    pub verbs: Vec<&'static str>,
    /// Why the request was refused, when an authorizer is set and a verb is not allowed.
    pub forbidden: Option<String>,
}

impl Recorded {
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// A failure to inject into matching requests.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: Option<&'static str>,
    /// Substring of `group/resource`.
    pub resource: Option<&'static str>,
    /// HTTP status to answer, or `None` for a transport error (like a timeout).
    pub status: Option<u16>,
    pub times: usize,
}

#[derive(Clone, Debug)]
struct WatchEvent {
    resource_version: u64,
    kind: &'static str,
    resource: String,
    object: Value,
}

/// Requests of one kind (`verb group/resource`) and the time the double spent on them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    pub count: u64,
    pub total: Duration,
}

#[derive(Default)]
struct Store {
    objects: objects::Objects,
    /// Fields last applied by each manager, per object.
    managed: BTreeMap<(String, String, String), BTreeMap<String, Value>>,
    resource_version: u64,
    next_uid: u64,
    /// Shared with every watch: a write is copied once, however many watch it.
    history: Vec<Arc<WatchEvent>>,
    requests: Vec<Recorded>,
    /// Counted as they are recorded, so counting costs nothing however long a run is.
    reads: usize,
    writes: usize,
    timings: BTreeMap<String, Timing>,
    faults: VecDeque<Fault>,
    /// (group, resource, verb) allowed, when requests are authorized at all.
    allowed: Option<BTreeSet<Permission>>,
    /// `group/resource`s not served, as before their CRD is installed.
    unserved: BTreeSet<String>,
}

impl Store {
    /// The `wanted` events after resourceVersion `since`: a tail of the history, which is
    /// in resourceVersion order.
    fn events_after(
        &self,
        since: u64,
        wanted: &impl Fn(&WatchEvent) -> bool,
    ) -> Vec<Arc<WatchEvent>> {
        let start = self
            .history
            .partition_point(|e| e.resource_version <= since);
        self.history[start..]
            .iter()
            .filter(|e| wanted(e))
            .cloned()
            .collect()
    }
}

/// (API group, resource — with `/status` for the subresource — , verb), as in RBAC rules.
pub type Permission = (String, String, String);

/// The verb RBAC checks for a request, before anything is known about the object.
fn request_verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named, watch) {
        ("GET", _, true) => "watch",
        ("GET", true, false) => "get",
        ("GET", false, false) => "list",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", true, _) => "delete",
        ("DELETE", false, _) => "deletecollection",
        _ => "unknown",
    }
}

/// Every (group, resource, verb) an RBAC `rules` list grants.
pub fn permissions(rules: &Value) -> BTreeSet<Permission> {
    let strings = |rule: &Value, key: &str| -> Vec<String> {
        rule[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                for verb in strings(rule, "verbs") {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

/// The double. Clones share one store.
#[derive(Clone)]
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(name.to_string()), None),
        [resource, name, sub] => (*resource, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target {
        resource: format!("{group}/{resource}"),
        namespace,
        name,
        subresource,
    })
}

fn kind_of(resource: &str) -> &'static str {
    match resource.rsplit('/').next().unwrap_or_default() {
        "postgreses" => "Postgres",
        "postgresbackups" => "PostgresBackup",
        "statefulsets" => "StatefulSet",
        "services" => "Service",
        "secrets" => "Secret",
        "configmaps" => "ConfigMap",
        "cronjobs" => "CronJob",
        "jobs" => "Job",
        "poddisruptionbudgets" => "PodDisruptionBudget",
        "networkpolicies" => "NetworkPolicy",
        "serviceaccounts" => "ServiceAccount",
        "roles" => "Role",
        "rolebindings" => "RoleBinding",
        "pods" => "Pod",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "events" => "Event",
        "leases" => "Lease",
        "nodes" => "Node",
        _ => "Unknown",
    }
}

fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`.
fn labels_match(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = object["metadata"]["labels"].as_object();
    let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    selector.split(',').all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k) == Some(v)
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

fn fields_match(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| match term.split_once('=') {
        Some(("metadata.name", v)) => object["metadata"]["name"] == v,
        Some(("metadata.namespace", v)) => object["metadata"]["namespace"] == v,
        _ => true,
    })
}

/// The metadata-only form of an object (`Accept: ...;as=PartialObjectMetadata`).
fn partial(object: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed_unsync())
        .unwrap()
}

/// Recursive merge: objects merge, everything else is replaced; `null` deletes.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// Removes from `target` the fields `previous` applied that `current` no longer applies.
fn remove_dropped(target: &mut Value, previous: &Value, current: &Value) {
    let (Value::Object(target), Value::Object(previous)) = (target, previous) else {
        return;
    };
    for (key, old) in previous {
        match current.get(key) {
            // A map this manager stops applying loses only the fields it had applied:
            // another manager's keys in it (e.g. another annotation) stay, as on a real
            // API server, where map fields are owned one by one.
            None if old.is_object() => {
                if let Some(child) = target.get_mut(key) {
                    remove_dropped(child, old, &Value::Object(Default::default()));
                    if child.as_object().is_some_and(|map| map.is_empty()) {
                        target.remove(key);
                    }
                }
            }
            None => {
                target.remove(key);
            }
            Some(new) if old.is_object() && new.is_object() => {
                if let Some(child) = target.get_mut(key) {
                    remove_dropped(child, old, new);
                }
            }
            Some(_) => {}
        }
    }
}

/// Whether everything but metadata and status is equal: a change bumps
/// `metadata.generation`. Compared in place (maps iterate in key order), not copied.
fn same_content(a: &Value, b: &Value) -> bool {
    fn content(object: &Value) -> impl Iterator<Item = (&String, &Value)> {
        object
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| *key != "metadata" && *key != "status")
    }
    content(a).eq(content(b))
}

impl ApiServer {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(100_000);
        Self {
            store: Arc::new(Mutex::new(Store::default())),
            events,
        }
    }

    /// A client talking to this double.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.store.lock().unwrap().requests.clone()
    }

    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    pub fn write_count(&self) -> usize {
        self.store.lock().unwrap().writes
    }

    /// Gets and lists (watches excluded).
    pub fn read_count(&self) -> usize {
        self.store.lock().unwrap().reads
    }

    /// Time spent serving each kind of request (`verb group/resource`), watches excluded.
    pub fn timings(&self) -> BTreeMap<String, Timing> {
        self.store.lock().unwrap().timings.clone()
    }

    /// Authorizes every later request as RBAC does with these permissions: a request
    /// with a verb not granted is answered 403 Forbidden, in the API server's words. A
    /// server-side apply that would create its object needs `create` as well as `patch`.
    pub fn authorize(&self, allowed: BTreeSet<Permission>) {
        self.store.lock().unwrap().allowed = Some(allowed);
    }

    /// Stops serving `resource` (`group/resource`): every request for it is answered 404,
    /// as a real API server does before the resource's CRD is installed.
    pub fn unserve(&self, resource: &str) {
        self.store
            .lock()
            .unwrap()
            .unserved
            .insert(resource.to_string());
    }

    /// Serves `resource` again, as once its CRD is installed.
    pub fn serve(&self, resource: &str) {
        self.store.lock().unwrap().unserved.remove(resource);
    }

    /// The requests refused by the authorizer.
    pub fn forbidden(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.forbidden.is_some())
            .collect()
    }

    pub fn inject(&self, fault: Fault) {
        self.store.lock().unwrap().faults.push_back(fault);
    }

    /// The stored object, if any.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        self.store.lock().unwrap().objects.get(&key).cloned()
    }

    /// Every stored object of every resource, with its resource (`group/resource`).
    pub fn all(&self) -> Vec<(String, Value)> {
        let store = self.store.lock().unwrap();
        store
            .objects
            .iter()
            .map(|((resource, _, _), object)| (resource.clone(), object.clone()))
            .collect()
    }

    /// Every stored object of a resource in a namespace.
    pub fn list(&self, resource: &str, namespace: &str) -> Vec<Value> {
        let store = self.store.lock().unwrap();
        store
            .objects
            .select(resource, Some(namespace), None)
            .cloned()
            .collect()
    }

    /// How many stored objects of a resource in a namespace `matches` accepts (no copies,
    /// so a benchmark can poll it without slowing the double down).
    pub fn count(
        &self,
        resource: &str,
        namespace: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> usize {
        let store = self.store.lock().unwrap();
        store
            .objects
            .select(resource, Some(namespace), None)
            .filter(|object| matches(object))
            .count()
    }

    /// Writes an object as another actor would (a user, the kubelet, the StatefulSet
    /// controller): not recorded as a request of the operator.
    pub fn put(&self, resource: &str, namespace: &str, object: Value) -> Value {
        let mut store = self.store.lock().unwrap();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (resource.to_string(), namespace.to_string(), name);
        let previous = store.objects.get(&key).cloned();
        let mut object = object;
        self.finish_write(&mut store, &key, previous.as_ref(), &mut object);
        object
    }

    /// Deletes as another actor would, with garbage collection of owned objects.
    pub fn remove(&self, resource: &str, namespace: &str, name: &str) {
        let mut store = self.store.lock().unwrap();
        self.delete_cascade(
            &mut store,
            &(
                resource.to_string(),
                namespace.to_string(),
                name.to_string(),
            ),
        );
    }

    fn finish_write(
        &self,
        store: &mut Store,
        key: &(String, String, String),
        previous: Option<&Value>,
        object: &mut Value,
    ) {
        store.resource_version += 1;
        let rv = store.resource_version;
        let meta = object["metadata"].as_object().cloned().unwrap_or_default();
        let mut meta = serde_json::Map::from_iter(meta);
        meta.insert("name".into(), json!(key.2));
        if !key.1.is_empty() {
            meta.insert("namespace".into(), json!(key.1));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        match previous {
            Some(previous) => {
                for field in ["uid", "creationTimestamp"] {
                    meta.insert(field.into(), previous["metadata"][field].clone());
                }
                let generation = previous["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = !same_content(previous, object);
                meta.insert(
                    "generation".into(),
                    json!(if changed { generation + 1 } else { generation }),
                );
            }
            None => {
                store.next_uid += 1;
                meta.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-4000-8000-{:012}", store.next_uid)),
                );
                meta.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
                meta.insert("generation".into(), json!(1));
            }
        }
        object["metadata"] = Value::Object(meta);
        if object.get("kind").is_none() {
            object["kind"] = json!(kind_of(&key.0));
        }
        store.objects.insert(key.clone(), object.clone());
        let event = Arc::new(WatchEvent {
            resource_version: rv,
            kind: if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            resource: key.0.clone(),
            object: object.clone(),
        });
        store.history.push(event.clone());
        let _ = self.events.send(event);
    }

    fn delete_cascade(&self, store: &mut Store, key: &(String, String, String)) -> Option<Value> {
        let object = store.objects.remove(key)?;
        store.managed.remove(key);
        store.resource_version += 1;
        let event = Arc::new(WatchEvent {
            resource_version: store.resource_version,
            kind: "DELETED",
            resource: key.0.clone(),
            object: object.clone(),
        });
        store.history.push(event.clone());
        let _ = self.events.send(event);
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        for child in store.objects.owned_by(uid, &key.1) {
            self.delete_cascade(store, &child);
        }
        Some(object)
    }

    /// Serves one request and adds the time it took to its kind's timing.
    async fn handle(
        self,
        request: Request<kube::client::Body>,
    ) -> Result<Response<Body>, BoxError> {
        let started = Instant::now();
        let kind = request_kind(&request);
        let store = self.store.clone();
        let response = self.serve_request(request).await;
        if let Some(kind) = kind {
            let mut store = store.lock().unwrap();
            let timing = store.timings.entry(kind).or_default();
            timing.count += 1;
            timing.total += started.elapsed();
        }
        response
    }

    async fn serve_request(
        self,
        request: Request<kube::client::Body>,
    ) -> Result<Response<Body>, BoxError> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let metadata_only = request
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"));
        let content_type = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = request.into_body().collect().await?.to_bytes();
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let query = query_map(uri.query());
        if uri.path() == "/version" {
            return Ok(respond(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-double",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
            ));
        }
        let Some(target) = parse_path(uri.path()) else {
            return Ok(respond(404, &status_body(404, "NotFound", uri.path())));
        };
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let resource_key = match &target.subresource {
            Some(sub) => format!("{}/{sub}", target.resource),
            None => target.resource.clone(),
        };
        {
            let mut store = self.store.lock().unwrap();
            let mut verbs = vec![request_verb(&method, target.name.is_some(), watch)];
            let is_apply = content_type
                .as_deref()
                .is_some_and(|c| c.contains("apply-patch"));
            if method == Method::PATCH && is_apply {
                let key = (
                    target.resource.clone(),
                    target.namespace.clone().unwrap_or_default(),
                    target.name.clone().unwrap_or_default(),
                );
                if !store.objects.contains_key(&key) {
                    verbs.push("create");
                }
            }
            let forbidden = store.allowed.as_ref().and_then(|allowed| {
                let (group, plural) = resource_key.split_once('/').unwrap_or_default();
                let denied = verbs.iter().find(|verb| {
                    !allowed.contains(&(group.to_string(), plural.to_string(), verb.to_string()))
                })?;
                let scope = match &target.namespace {
                    Some(ns) => format!(" in the namespace \"{ns}\""),
                    None => " at the cluster scope".to_string(),
                };
                Some(format!(
                    "{plural} \"{}\" is forbidden: User \"system:serviceaccount:operator:postgres-operator\" cannot {denied} resource \"{plural}\" in API group \"{group}\"{scope}",
                    target.name.clone().unwrap_or_default()
                ))
            });
            if method != Method::GET {
                store.writes += 1;
            } else if !watch {
                store.reads += 1;
            }
            store.requests.push(Recorded {
                method: method.to_string(),
                resource: resource_key.clone(),
                namespace: target.namespace.clone(),
                name: target.name.clone(),
                watch,
                content_type: content_type.clone(),
                body: body.clone(),
                field_selector: query.get("fieldSelector").cloned(),
                verbs,
                forbidden: forbidden.clone(),
            });
            if let Some(message) = forbidden {
                return Ok(respond(403, &status_body(403, "Forbidden", &message)));
            }
            if store.unserved.contains(&target.resource) {
                return Ok(respond(
                    404,
                    &status_body(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                ));
            }
            let matching = store.faults.iter().position(|f| {
                f.method.is_none_or(|m| m == method.as_str())
                    && f.resource.is_none_or(|r| resource_key.contains(r))
            });
            if let Some(index) = matching {
                let fault = store.faults[index].clone();
                if fault.times <= 1 {
                    store.faults.remove(index);
                } else {
                    store.faults[index].times -= 1;
                }
                return match fault.status {
                    Some(code) => Ok(respond(
                        code,
                        &status_body(code, "InjectedFault", "injected by the test"),
                    )),
                    None => Err("injected transport failure".into()),
                };
            }
        }
        if watch {
            return Ok(self.watch(&target, &query, metadata_only));
        }
        let namespace = target.namespace.clone().unwrap_or_default();
        let mut store = self.store.lock().unwrap();
        match (&method, &target.name) {
            (&Method::GET, Some(name)) => {
                let key = (target.resource.clone(), namespace, name.clone());
                Ok(match store.objects.get(&key) {
                    Some(object) => respond(200, object),
                    None => respond(
                        404,
                        &status_body(
                            404,
                            "NotFound",
                            &format!("{} {name} not found", target.resource),
                        ),
                    ),
                })
            }
            (&Method::GET, None) => {
                let labels = query.get("labelSelector");
                let items: Vec<Value> = store
                    .objects
                    .select(
                        &target.resource,
                        target.namespace.as_deref(),
                        labels.map(String::as_str),
                    )
                    .filter(|o| {
                        labels_match(o, labels) && fields_match(o, query.get("fieldSelector"))
                    })
                    .map(|o| if metadata_only { partial(o) } else { o.clone() })
                    .collect();
                // Pages as the real API server does with `limit`; `continue` is an offset.
                let offset: usize = query
                    .get("continue")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let limit: usize = query
                    .get("limit")
                    .and_then(|l| l.parse().ok())
                    .filter(|l| *l > 0)
                    .unwrap_or(usize::MAX);
                let total = items.len();
                let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
                let next = offset.saturating_add(page.len());
                let mut metadata = json!({"resourceVersion": store.resource_version.to_string()});
                if next < total {
                    metadata["continue"] = json!(next.to_string());
                }
                let kind = if metadata_only {
                    "PartialObjectMetadataList".to_string()
                } else {
                    format!("{}List", kind_of(&target.resource))
                };
                let list =
                    json!({"apiVersion": "v1", "kind": kind, "metadata": metadata, "items": page});
                Ok(respond(200, &list))
            }
            (&Method::POST, _) => {
                let mut object = body.unwrap_or(Value::Null);
                let name = object["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| {
                        object["metadata"]["generateName"]
                            .as_str()
                            .map(|g| format!("{g}{}", store.next_uid + 1))
                    })
                    .unwrap_or_default();
                let key = (target.resource.clone(), namespace, name.clone());
                if store.objects.contains_key(&key) {
                    return Ok(respond(
                        409,
                        &status_body(409, "AlreadyExists", &format!("{name} already exists")),
                    ));
                }
                self.finish_write(&mut store, &key, None, &mut object);
                Ok(respond(201, &object))
            }
            (&Method::PUT, Some(name)) => {
                let key = (target.resource.clone(), namespace, name.clone());
                let Some(previous) = store.objects.get(&key).cloned() else {
                    return Ok(respond(404, &status_body(404, "NotFound", name)));
                };
                let mut object = body.unwrap_or(Value::Null);
                let sent_rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if sent_rv.is_some()
                    && sent_rv.as_deref() != previous["metadata"]["resourceVersion"].as_str()
                {
                    return Ok(respond(
                        409,
                        &status_body(409, "Conflict", "the object has been modified"),
                    ));
                }
                if target.subresource.as_deref() == Some("status") {
                    let mut merged = previous.clone();
                    merged["status"] = object["status"].clone();
                    object = merged;
                } else {
                    object["status"] = previous["status"].clone();
                }
                self.finish_write(&mut store, &key, Some(&previous), &mut object);
                Ok(respond(200, &object))
            }
            (&Method::PATCH, Some(name)) => {
                let key = (target.resource.clone(), namespace, name.clone());
                let previous = store.objects.get(&key).cloned();
                let patch = body.unwrap_or(Value::Null);
                let is_apply = content_type
                    .as_deref()
                    .is_some_and(|c| c.contains("apply-patch"));
                if previous.is_none() && !is_apply {
                    return Ok(respond(404, &status_body(404, "NotFound", name)));
                }
                let status_only = target.subresource.as_deref() == Some("status");
                let mut object = previous.clone().unwrap_or_else(|| json!({"metadata": {}}));
                let mut patch = patch;
                if status_only {
                    patch = json!({"status": patch["status"].clone()});
                } else if let Some(map) = patch.as_object_mut() {
                    map.remove("status");
                }
                if is_apply {
                    let manager = query.get("fieldManager").cloned().unwrap_or_default();
                    let managers = store.managed.entry(key.clone()).or_default();
                    let slot = format!("{manager}{}", if status_only { "/status" } else { "" });
                    if let Some(before) = managers.get(&slot) {
                        remove_dropped(&mut object, before, &patch);
                    }
                    managers.insert(slot, patch.clone());
                }
                merge(&mut object, &patch);
                if previous.as_ref() == Some(&object) {
                    // A no-op write changes nothing, as on a real API server.
                    return Ok(respond(200, &object));
                }
                self.finish_write(&mut store, &key, previous.as_ref(), &mut object);
                Ok(respond(if previous.is_some() { 200 } else { 201 }, &object))
            }
            (&Method::DELETE, Some(name)) => {
                let key = (target.resource.clone(), namespace, name.clone());
                Ok(match self.delete_cascade(&mut store, &key) {
                    Some(object) => respond(200, &object),
                    None => respond(404, &status_body(404, "NotFound", name)),
                })
            }
            _ => Ok(respond(
                405,
                &status_body(405, "MethodNotAllowed", method.as_str()),
            )),
        }
    }

    /// Events after the requested resourceVersion, then live ones, as JSON lines.
    fn watch(
        &self,
        target: &Target,
        query: &BTreeMap<String, String>,
        metadata_only: bool,
    ) -> Response<Body> {
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut live = self.events.subscribe();
        let resource = target.resource.clone();
        let namespace = target.namespace.clone();
        let labels = query.get("labelSelector").cloned();
        let fields = query.get("fieldSelector").cloned();
        let wanted = move |event: &WatchEvent| {
            event.resource == resource
                && namespace
                    .as_ref()
                    .is_none_or(|ns| event.object["metadata"]["namespace"] == ns.as_str())
                && labels_match(&event.object, labels.as_ref())
                && fields_match(&event.object, fields.as_ref())
        };
        let backlog = self.store.lock().unwrap().events_after(since, &wanted);
        let store = self.store.clone();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            let mut last = since;
            let line = |event: &WatchEvent| {
                let object = if metadata_only {
                    partial(&event.object).to_string()
                } else {
                    event.object.to_string()
                };
                Bytes::from(format!(
                    "{{\"type\":\"{}\",\"object\":{object}}}\n",
                    event.kind
                ))
            };
            let mut pending = backlog;
            loop {
                for event in &pending {
                    last = event.resource_version;
                    if sender.send(line(event)).is_err() {
                        return;
                    }
                }
                pending = match live.recv().await {
                    Ok(event) if event.resource_version > last && wanted(&event) => vec![event],
                    Ok(_) => Vec::new(),
                    // A watcher slower than the writes missed some: they come from the
                    // history instead, so a busy double loses no event.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        store.lock().unwrap().events_after(last, &wanted)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
            }
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), receiver))
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
            .unwrap()
    }
}

impl tower::Service<Request<kube::client::Body>> for ApiServer {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        Box::pin(self.clone().handle(request))
    }
}

impl ApiServer {
    /// Serves the double over plain HTTP on `listener`, so a separate operator process
    /// can use it through a kubeconfig (`server: http://127.0.0.1:PORT`).
    pub async fn serve_http(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let app = axum::Router::new().fallback(move |request: Request<axum::body::Body>| {
            let server = self.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let request = Request::from_parts(parts, kube::client::Body::from(bytes.to_vec()));
                match server.handle(request).await {
                    Ok(response) => response.map(axum::body::Body::new),
                    Err(error) => Response::builder()
                        .status(503)
                        .body(axum::body::Body::from(error.to_string()))
                        .unwrap(),
                }
            }
        });
        axum::serve(listener, app).await
    }

    /// A kubeconfig pointing at an HTTP address of this double.
    pub fn kubeconfig(address: std::net::SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: http://{address}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: nobody\n    namespace: default\ncurrent-context: double\nusers:\n- name: nobody\n  user: {{}}\n"
        )
    }
}

/// `verb group/resource` of a request, as timings are kept; `None` for watches, which
/// stay open and have no duration worth adding up.
fn request_kind(request: &Request<kube::client::Body>) -> Option<String> {
    let target = parse_path(request.uri().path())?;
    let watch = query_map(request.uri().query())
        .get("watch")
        .is_some_and(|w| w == "true" || w == "1");
    if watch {
        return None;
    }
    let verb = request_verb(request.method(), target.name.is_some(), false);
    let subresource = target
        .subresource
        .map(|s| format!("/{s}"))
        .unwrap_or_default();
    Some(format!("{verb} {}{subresource}", target.resource))
}

/// The stored objects, indexed as a real API server's cache is: ordered by (resource,
/// namespace, name), and by label and owner, so a list by label or a cascading delete
/// costs what it returns, not a scan of every object stored.
mod objects {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use serde_json::Value;

    /// (group/resource, namespace, name)
    pub type Key = (String, String, String);

    #[derive(Default)]
    pub struct Objects {
        by_key: BTreeMap<Key, Value>,
        /// (group/resource, label key, label value) → objects carrying that label.
        by_label: HashMap<(String, String, String), BTreeSet<Key>>,
        /// Owner uid → objects naming it in their owner references.
        by_owner: HashMap<String, BTreeSet<Key>>,
    }

    /// The first `key=value` (or `key==value`) term of a label selector: the index to use.
    fn equality_term(selector: &str) -> Option<(&str, &str)> {
        selector.split(',').find_map(|term| {
            if term.contains("!=") {
                return None;
            }
            term.split_once("==").or_else(|| term.split_once('='))
        })
    }

    fn labels(object: &Value) -> impl Iterator<Item = (&String, &str)> {
        object["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k, v.as_str()?)))
    }

    fn owners(object: &Value) -> impl Iterator<Item = &str> {
        object["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["uid"].as_str())
    }

    impl Objects {
        pub fn get(&self, key: &Key) -> Option<&Value> {
            self.by_key.get(key)
        }

        pub fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
            self.by_key.iter()
        }

        pub fn contains_key(&self, key: &Key) -> bool {
            self.by_key.contains_key(key)
        }

        pub fn insert(&mut self, key: Key, object: Value) {
            self.remove(&key);
            for (label, value) in labels(&object) {
                let index = (key.0.clone(), label.clone(), value.to_string());
                self.by_label.entry(index).or_default().insert(key.clone());
            }
            for uid in owners(&object) {
                let owned = self.by_owner.entry(uid.to_string()).or_default();
                owned.insert(key.clone());
            }
            self.by_key.insert(key, object);
        }

        pub fn remove(&mut self, key: &Key) -> Option<Value> {
            let object = self.by_key.remove(key)?;
            for (label, value) in labels(&object) {
                let index = (key.0.clone(), label.clone(), value.to_string());
                if let Some(keys) = self.by_label.get_mut(&index) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.by_label.remove(&index);
                    }
                }
            }
            for uid in owners(&object) {
                if let Some(keys) = self.by_owner.get_mut(uid) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.by_owner.remove(uid);
                    }
                }
            }
            Some(object)
        }

        /// Objects of `resource` in `namespace` (every namespace when `None`) that may
        /// match `selector`: those with its first equality label when it has one. The
        /// caller still applies the whole selector.
        pub fn select<'a>(
            &'a self,
            resource: &str,
            namespace: Option<&'a str>,
            selector: Option<&str>,
        ) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
            let in_namespace = move |key: &Key| namespace.is_none_or(|ns| key.1 == ns);
            if let Some((label, value)) = selector.and_then(equality_term) {
                let index = (resource.to_string(), label.to_string(), value.to_string());
                let Some(keys) = self.by_label.get(&index) else {
                    return Box::new(std::iter::empty());
                };
                return Box::new(
                    keys.iter()
                        .filter(move |key| in_namespace(key))
                        .filter_map(|key| self.by_key.get(key)),
                );
            }
            let resource = resource.to_string();
            let start = (
                resource.clone(),
                namespace.unwrap_or_default().to_string(),
                String::new(),
            );
            Box::new(
                self.by_key
                    .range(start..)
                    .take_while(move |(key, _)| key.0 == resource && in_namespace(key))
                    .map(|(_, object)| object),
            )
        }

        /// The objects in `namespace` that name `uid` as an owner.
        pub fn owned_by(&self, uid: &str, namespace: &str) -> Vec<Key> {
            self.by_owner
                .get(uid)
                .into_iter()
                .flatten()
                .filter(|key| key.1 == namespace)
                .cloned()
                .collect()
        }
    }
}
