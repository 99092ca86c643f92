//! The resourceVersion of every object the operator owns, as its watches report it, and
//! the version the operator last applied or found holding what it wanted. With both, the
//! reconcile of a settled cluster reads none of its objects back, and a watch event that
//! only echoes the operator's own write does not wake the same cluster up again. Anything
//! else that touches an object (a user, another controller, a deletion) gives it a new
//! version, so it is read, compared and applied as before.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

/// Kind, namespace and name of an owned object.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Default)]
struct Entry {
    /// The version the watch last reported.
    live: Option<String>,
    /// The list of the watch (see `Lists`) that last reported the object.
    list: u64,
    /// The version the operator applied or read, with the fingerprint of what it wanted.
    verified: Option<(String, u64)>,
}

/// What one watch covers: a kind, in one namespace or (`None`) in all.
type Scope = (&'static str, Option<String>);

/// Per watch: the number of its current list, and whether one has completed.
type Lists = HashMap<Scope, (u64, bool)>;

#[derive(Default)]
struct State {
    objects: HashMap<ObjectKey, Entry>,
    lists: Lists,
}

/// Shared by the owned-object watches (which report versions) and the reconciles (which
/// verify them).
#[derive(Default)]
pub struct Versions {
    state: Mutex<State>,
}

/// What the operator wants an object to hold, reduced to a number: a different spec,
/// password or operator setting gives a different fingerprint.
pub fn fingerprint(desired: &serde_json::Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    // serde_json maps serialize in key order, so equal values give equal text.
    desired.to_string().hash(&mut hasher);
    hasher.finish()
}

impl Versions {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it: every update is
        // a single insert or remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True when the object's current version is one the operator verified to hold
    /// `desired`: it needs neither a read nor a write.
    pub fn unchanged(&self, key: &ObjectKey, desired: u64) -> bool {
        let state = self.state();
        state.objects.get(key).is_some_and(|entry| {
            matches!((&entry.live, &entry.verified),
                (Some(live), Some((verified, wanted))) if live == verified && *wanted == desired)
        })
    }

    /// Remembers that version `version` of the object holds `desired` (as read back, or
    /// as returned by the apply).
    pub fn verified(&self, key: ObjectKey, version: Option<String>, desired: u64) {
        let mut state = self.state();
        match version {
            Some(version) => {
                state.objects.entry(key).or_default().verified = Some((version, desired));
            }
            None => {
                if let Some(entry) = state.objects.get_mut(&key) {
                    entry.verified = None;
                }
            }
        }
    }

    /// The version the watch last reported of the object.
    pub fn live(&self, key: &ObjectKey) -> Option<String> {
        self.state().objects.get(key)?.live.clone()
    }

    /// True when the object surely does not exist: the watch of its kind has listed every
    /// object of the operator and has not reported this one since.
    pub fn absent(&self, key: &ObjectKey) -> bool {
        let state = self.state();
        let listed = [None, Some(key.namespace.clone())]
            .into_iter()
            .any(|namespace| {
                state
                    .lists
                    .get(&(key.kind, namespace))
                    .is_some_and(|(_, done)| *done)
            });
        listed && !state.objects.contains_key(key)
    }

    /// Passes a metadata watch of the owned kind `kind` (in `namespace`, or in all) through,
    /// keeping the versions current, and yields the objects whose change should wake their
    /// owner up: every added, changed or deleted object except the echoes of the
    /// operator's own writes.
    pub fn track<K>(
        self: Arc<Self>,
        kind: &'static str,
        namespace: Option<String>,
        events: impl Stream<Item = Result<watcher::Event<PartialObjectMeta<K>>, watcher::Error>>
        + Send
        + 'static,
    ) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
    where
        K: Resource + Send + 'static,
        PartialObjectMeta<K>: Send,
    {
        events
            .map(move |event| {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => return vec![Err(error)],
                };
                let scope = (kind, namespace.clone());
                self.observe(&scope, event).into_iter().map(Ok).collect()
            })
            .flat_map(futures::stream::iter)
    }

    fn observe<K: Resource>(
        &self,
        scope: &Scope,
        event: watcher::Event<PartialObjectMeta<K>>,
    ) -> Option<PartialObjectMeta<K>> {
        let mut state = self.state();
        let State { objects, lists } = &mut *state;
        let (list, listed) = lists.entry(scope.clone()).or_default();
        let kind = scope.0;
        let in_scope = |key: &ObjectKey| {
            key.kind == kind && scope.1.as_ref().is_none_or(|ns| *ns == key.namespace)
        };
        let key = |object: &PartialObjectMeta<K>| ObjectKey {
            kind,
            namespace: object.metadata.namespace.clone().unwrap_or_default(),
            name: object.metadata.name.clone().unwrap_or_default(),
        };
        match event {
            watcher::Event::Init => {
                *list += 1;
                None
            }
            watcher::Event::InitDone => {
                // Objects the new list did not report were deleted while the watch was
                // away: forget them, so they are read (and recreated) again.
                let current = *list;
                objects.retain(|key, entry| !in_scope(key) || entry.list >= current);
                *listed = true;
                None
            }
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                let entry = objects.entry(key(&object)).or_default();
                entry.live = object.metadata.resource_version.clone();
                entry.list = *list;
                let echo = matches!((&entry.live, &entry.verified),
                    (Some(live), Some((verified, _))) if live == verified);
                (!echo).then_some(object)
            }
            watcher::Event::Delete(object) => {
                objects.remove(&key(&object));
                Some(object)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    const SCOPE: Scope = ("Secret", None);

    fn meta(name: &str, version: &str) -> PartialObjectMeta<Secret> {
        let mut object = PartialObjectMeta::<Secret>::default();
        object.metadata.name = Some(name.to_string());
        object.metadata.namespace = Some("ns".to_string());
        object.metadata.resource_version = Some(version.to_string());
        object
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: "Secret",
            namespace: "ns".to_string(),
            name: name.to_string(),
        }
    }

    fn listed(versions: &Versions, objects: &[PartialObjectMeta<Secret>]) {
        versions.observe::<Secret>(&SCOPE, watcher::Event::Init);
        for object in objects {
            versions.observe(&SCOPE, watcher::Event::InitApply(object.clone()));
        }
        versions.observe::<Secret>(&SCOPE, watcher::Event::InitDone);
    }

    #[test]
    fn an_object_is_unchanged_only_at_the_verified_version_and_content() {
        let versions = Versions::default();
        listed(&versions, &[meta("a", "1")]);
        assert!(!versions.unchanged(&key("a"), 7), "never verified");
        versions.verified(key("a"), Some("1".to_string()), 7);
        assert!(versions.unchanged(&key("a"), 7));
        assert!(
            !versions.unchanged(&key("a"), 8),
            "the operator wants more now"
        );
        versions.observe(&SCOPE, watcher::Event::Apply(meta("a", "2")));
        assert!(!versions.unchanged(&key("a"), 7), "someone else wrote it");
    }

    #[test]
    fn the_echo_of_the_operators_own_write_wakes_nobody_up() {
        let versions = Versions::default();
        listed(&versions, &[]);
        versions.verified(key("a"), Some("5".to_string()), 1);
        let echo = versions.observe(&SCOPE, watcher::Event::Apply(meta("a", "5")));
        assert!(echo.is_none());
        assert!(versions.unchanged(&key("a"), 1));
        let other = versions.observe(&SCOPE, watcher::Event::Apply(meta("a", "6")));
        assert!(
            other.is_some(),
            "a write by someone else wakes the owner up"
        );
        let deleted = versions.observe(&SCOPE, watcher::Event::Delete(meta("a", "6")));
        assert!(deleted.is_some());
        assert!(!versions.unchanged(&key("a"), 1));
    }

    #[test]
    fn absence_is_known_only_after_a_complete_list() {
        let versions = Versions::default();
        assert!(!versions.absent(&key("a")), "nothing listed yet");
        listed(&versions, &[meta("b", "1")]);
        assert!(versions.absent(&key("a")));
        assert!(!versions.absent(&key("b")));
    }

    #[test]
    fn a_relist_forgets_objects_deleted_while_the_watch_was_away() {
        let versions = Versions::default();
        listed(&versions, &[meta("a", "1"), meta("b", "1")]);
        versions.verified(key("a"), Some("1".to_string()), 1);
        versions.verified(key("b"), Some("1".to_string()), 1);
        listed(&versions, &[meta("b", "1")]);
        assert!(!versions.unchanged(&key("a"), 1));
        assert!(versions.absent(&key("a")));
        assert!(versions.unchanged(&key("b"), 1));
    }
}
