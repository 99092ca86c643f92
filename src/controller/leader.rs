//! Leader election on a `coordination.k8s.io` Lease, so several operator replicas can
//! run and exactly one reconciles. The leader renews the Lease; a follower takes it over
//! once it expires; a leader shutting down releases it so the hand-over is immediate.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// One candidate's handle on the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// How long a Lease is valid without renewal, and how often it is renewed or retried.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(response) if response.code == 409)
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the Lease; true when this candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.identity.as_str());
        let expires = spec.renew_time.as_ref().and_then(|t| {
            t.0.checked_add(SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(0),
            )))
            .ok()
        });
        let expired = holder.is_none() || expires.is_none_or(|expiry| expiry < now);
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = match (ours, spec.acquire_time) {
            (true, Some(acquired)) => acquired.0,
            _ => now,
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // The resourceVersion makes this a compare-and-swap: two candidates racing for
        // an expired Lease cannot both win.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if held, so a follower takes over without waiting for expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }
}

/// Why leading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop; the Lease was released.
    Shutdown,
    /// Could not renew in time: another replica may lead now, so this one must stop.
    LostLease,
}

/// Waits to become leader, then runs `work` (given a future that resolves when the work
/// must stop) while renewing the Lease. Returns when `shutdown` resolves (releasing the
/// Lease after the work finished) or when the Lease is lost.
pub async fn lead<W, Fut>(
    lock: LeaseLock,
    timing: Timing,
    shutdown: impl Future<Output = ()> + Send,
    work: W,
) -> Ended
where
    W: FnOnce(futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        match lock.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot read or take the leader Lease"),
        }
        tokio::select! {
            () = &mut shutdown => return Ended::Shutdown,
            () = tokio::time::sleep(timing.retry_every) => {}
        }
    }
    tracing::info!(identity = lock.identity(), "leading");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
        let _ = stopped.await;
    });
    let mut worker = tokio::spawn(work(stopped));
    let mut last_renewal = tokio::time::Instant::now();
    let ended = loop {
        tokio::select! {
            () = &mut shutdown => break Ended::Shutdown,
            _ = &mut worker => break Ended::Shutdown,
            () = tokio::time::sleep(timing.renew_every) => {
                match lock.try_acquire_or_renew().await {
                    Ok(true) => last_renewal = tokio::time::Instant::now(),
                    Ok(false) => break Ended::LostLease,
                    Err(error) => {
                        tracing::warn!(%error, "cannot renew the leader Lease");
                        // Stop before the Lease can expire and another replica lead.
                        if last_renewal.elapsed() + timing.renew_every >= timing.lease_duration {
                            break Ended::LostLease;
                        }
                    }
                }
            }
        }
    };
    let _ = stop.send(());
    let _ = tokio::time::timeout(timing.lease_duration, &mut worker).await;
    worker.abort();
    if ended == Ended::Shutdown
        && let Err(error) = lock.release().await
    {
        tracing::warn!(%error, "cannot release the leader Lease");
    }
    tracing::info!(identity = lock.identity(), ?ended, "stopped leading");
    ended
}
