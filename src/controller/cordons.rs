//! Which nodes are cordoned (`spec.unschedulable`, what `kubectl cordon` and the first
//! step of `kubectl drain` set): a primary on one is switched over before the drain
//! reaches it. One watch of the Nodes for the whole operator; every cluster is looked
//! at again when a node becomes cordoned, as its pods' nodes are not watched.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use tokio::sync::watch;

#[derive(Debug)]
pub struct Cordons {
    cordoned: RwLock<BTreeSet<String>>,
    /// Counts the nodes that became cordoned; every controller waits on it.
    newly: watch::Sender<u64>,
}

impl Default for Cordons {
    fn default() -> Self {
        Self {
            cordoned: RwLock::default(),
            newly: watch::Sender::new(0),
        }
    }
}

fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

impl Cordons {
    pub fn is_cordoned(&self, node: &str) -> bool {
        self.cordoned
            .read()
            .map(|set| set.contains(node))
            .unwrap_or(false)
    }

    /// Records one watch event. The initial list replaces the set, so a node uncordoned
    /// while the watch was down is forgotten.
    fn observe(&self, event: watcher::Event<Node>, relisting: &mut BTreeSet<String>) {
        let Ok(mut cordoned) = self.cordoned.write() else {
            return;
        };
        let mut became_cordoned = false;
        match event {
            watcher::Event::Init => relisting.clear(),
            watcher::Event::InitApply(node) => {
                if is_cordoned(&node) {
                    relisting.insert(node.metadata.name.unwrap_or_default());
                }
            }
            watcher::Event::InitDone => {
                became_cordoned = relisting.iter().any(|n| !cordoned.contains(n));
                *cordoned = std::mem::take(relisting);
            }
            watcher::Event::Apply(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                if is_cordoned(&node) {
                    became_cordoned = cordoned.insert(name);
                } else {
                    cordoned.remove(&name);
                }
            }
            watcher::Event::Delete(node) => {
                cordoned.remove(&node.metadata.name.unwrap_or_default());
            }
        }
        drop(cordoned);
        if became_cordoned {
            self.newly
                .send_modify(|count| *count = count.wrapping_add(1));
        }
    }

    /// Follows the Nodes watch until it ends.
    pub async fn follow(
        self: Arc<Self>,
        events: impl Stream<Item = Result<watcher::Event<Node>, watcher::Error>>,
    ) {
        let mut relisting = BTreeSet::new();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.observe(event, &mut relisting),
                Err(error) => tracing::warn!(%error, "watching nodes"),
            }
        }
    }

    /// Yields each time a node becomes cordoned.
    pub fn newly_cordoned(&self) -> impl Stream<Item = ()> + Send + 'static {
        let receiver = self.newly.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.changed().await.ok()?;
            Some(((), receiver))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn node(name: &str, unschedulable: bool) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(unschedulable),
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    #[tokio::test]
    async fn a_cordon_is_known_and_announced_once_and_an_uncordon_forgotten() {
        let cordons = Cordons::default();
        let mut announced = Box::pin(cordons.newly_cordoned());
        let mut relisting = BTreeSet::new();
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(node("a", false)),
            watcher::Event::InitApply(node("b", true)),
            watcher::Event::InitDone,
        ] {
            cordons.observe(event, &mut relisting);
        }
        assert!(cordons.is_cordoned("b") && !cordons.is_cordoned("a"));
        assert_eq!(announced.next().await, Some(()));
        cordons.observe(watcher::Event::Apply(node("a", true)), &mut relisting);
        // Applied again unchanged: no new announcement.
        cordons.observe(watcher::Event::Apply(node("a", true)), &mut relisting);
        assert!(cordons.is_cordoned("a"));
        assert_eq!(*cordons.newly.borrow(), 2);
        cordons.observe(watcher::Event::Apply(node("b", false)), &mut relisting);
        assert!(!cordons.is_cordoned("b"));
        // A relist without "a" cordoned forgets it.
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(node("a", false)),
            watcher::Event::InitDone,
        ] {
            cordons.observe(event, &mut relisting);
        }
        assert!(!cordons.is_cordoned("a"));
        assert_eq!(*cordons.newly.borrow(), 2);
    }
}
