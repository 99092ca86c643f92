//! The HA engine of one cluster: it watches the primary through its heartbeat stream,
//! and when the primary is lost it gathers every instance's report, asks [`decide`],
//! fences, records the target before anything acts, promotes and re-points. The same
//! engine runs in the controller (Kubernetes: pod addresses, the status subresource)
//! and in the tests and the benchmark (loopback ports, a spec file): the [`World`]
//! trait is the only difference.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use super::client::{self, Watch};
use super::decide::{Blocked, FailoverDecision, Promotion, decide};
use super::input::{Cluster, Instance, Role};
use super::plan;
use super::wire::{InstanceReport, Instruction};
use crate::api::{FailoverRecord, InstanceState};
use crate::instance::quorum::Bounds;

/// Failures of the world's reads and writes, logged and retried.
pub type WorldError = Box<dyn std::error::Error + Send + Sync>;

/// One pod of the cluster and where its status port answers (`host:port`); no address
/// while the pod has none (not scheduled, or gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub pod: String,
    pub address: Option<String>,
}

/// What the cluster's record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub current_primary: Option<String>,
    pub target_primary: Option<String>,
    pub bounds: Bounds,
    /// The synchronous set the primary last reported, as recorded (so that an engine
    /// that starts while the primary is already gone still chooses safely).
    pub sync: Option<SyncSet>,
    /// `status.instancesStatus`.
    pub instances: Vec<InstanceState>,
}

impl Recorded {
    /// What a Postgres's spec and status say.
    pub fn of(postgres: &crate::api::Postgres) -> Self {
        let status = postgres.status.clone().unwrap_or_default();
        Self {
            current_primary: status.current_primary,
            target_primary: status.target_primary,
            bounds: Bounds::of(&postgres.spec.quorum),
            sync: status.sync_quorum.map(|quorum| SyncSet {
                quorum: usize::try_from(quorum).unwrap_or(0),
                standbys: status.sync_standbys,
            }),
            instances: status.instances_status,
        }
    }
}

/// `ANY quorum (standbys)` as the primary reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncSet {
    pub quorum: usize,
    pub standbys: Vec<String>,
}

/// What the engine tells the world, for events, conditions and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// The primary stopped answering as a primary.
    PrimaryLost {
        pod: String,
        reason: String,
    },
    FailoverStarted {
        from: String,
        promotion: Promotion,
    },
    FailoverCompleted {
        from: String,
        to: String,
        /// Asynchronous replication: the old primary's WAL the new one lacked, as the
        /// choice saw it (`None` under a quorum, or when this engine did not choose).
        lost_wal_bytes: Option<u64>,
        /// From the first sign of trouble to the promoted primary taking writes.
        elapsed: Duration,
    },
    /// `None`: no longer blocked.
    Blocked(Option<String>),
    SwitchoverCompleted {
        from: String,
        to: String,
        /// From the old primary's last write to the new one taking writes.
        write_gap: Duration,
    },
    /// The switchover asked for in `targetPrimary` was not done; the record names the
    /// current primary again.
    SwitchoverRefused {
        from: String,
        to: String,
        reason: String,
    },
}

impl Announcement {
    /// `status.lastFailover`, for a failover completed now.
    pub fn failover_record(&self) -> Option<FailoverRecord> {
        let Announcement::FailoverCompleted {
            from,
            to,
            elapsed,
            lost_wal_bytes,
        } = self
        else {
            return None;
        };
        Some(FailoverRecord {
            from: from.clone(),
            to: to.clone(),
            completed_at: k8s_openapi::jiff::Timestamp::now().to_string(),
            seconds: elapsed.as_secs_f64(),
            // The status schema's integers are signed (int64).
            lost_wal_bytes: lost_wal_bytes.map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
        })
    }
}

/// Where the engine reads and records the cluster.
pub trait World: Send + Sync {
    fn members(&self) -> impl Future<Output = Result<Vec<Member>, WorldError>> + Send;
    fn recorded(&self) -> impl Future<Output = Result<Recorded, WorldError>> + Send;
    /// `status.targetPrimary`, before any instance acts on it.
    fn record_target(&self, pod: &str) -> impl Future<Output = Result<(), WorldError>> + Send;
    /// `status.currentPrimary`, once `pod` runs as the primary.
    fn record_primary(&self, pod: &str) -> impl Future<Output = Result<(), WorldError>> + Send;
    /// The synchronous set the primary reports, when it changes.
    fn record_sync(&self, sync: &SyncSet) -> impl Future<Output = Result<(), WorldError>> + Send;
    /// `status.instancesStatus`, when it changes.
    fn record_instances(
        &self,
        instances: &[InstanceState],
    ) -> impl Future<Output = Result<(), WorldError>> + Send;
    fn announce(&self, announcement: Announcement) -> impl Future<Output = ()> + Send;
    /// Called on every look while a failover is blocked: a world whose record of it can
    /// be overwritten by another writer puts it back.
    fn confirm_blocked(&self, _message: &str) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The token instructions carry (see `ha::token`), from the cluster's current
    /// superuser password; asked before each round of instructions, so a rotated
    /// password is followed.
    fn instruct_token(&self) -> impl Future<Output = Option<String>> + Send;
}

/// The engine's clocks.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A primary silent for this long on its heartbeat stream is suspect.
    pub silence: Duration,
    /// Each instance's report gets this long during a failover.
    pub report_deadline: Duration,
    /// Pause between two looks during a failover.
    pub retry: Duration,
    /// The watch is re-opened this often, to pick up a changed cluster record.
    pub refresh: Duration,
    /// A fence or a follow gets this long; a promotion `promote_deadline`.
    pub instruct_deadline: Duration,
    pub promote_deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            silence: Duration::from_millis(1000),
            // Over the instance's own deadline for its server (400 ms): a stalled
            // server's manager still answers in time, and the stall gets the restart
            // grace rather than the lost-node one.
            report_deadline: Duration::from_millis(700),
            retry: Duration::from_millis(100),
            refresh: Duration::from_secs(10),
            instruct_deadline: Duration::from_secs(5),
            promote_deadline: Duration::from_secs(60),
        }
    }
}

/// An engine's first look comes within this long of its start.
const START_SPREAD: Duration = Duration::from_secs(1);

/// How often a new cluster's first primary is looked for.
const NEW_CLUSTER_POLL: Duration = Duration::from_secs(2);

/// Why the watch of the primary ended.
#[derive(Debug)]
enum WatchEnd {
    /// Time to look at the record again.
    Refresh,
    /// The primary may be lost.
    Suspect(String),
}

pub struct Engine<W> {
    world: W,
    timing: Timing,
    /// The synchronous set and flushed position of the primary's last heartbeat.
    sync: Option<SyncSet>,
    primary_lsn: Option<u64>,
    /// `status.instancesStatus` as last recorded.
    instances: Option<Vec<InstanceState>>,
}

impl<W: World> Engine<W> {
    pub fn new(world: W, timing: Timing) -> Self {
        Self {
            world,
            timing,
            sync: None,
            primary_lsn: None,
            instances: None,
        }
    }

    pub fn world(&self) -> &W {
        &self.world
    }

    /// Watches and fails over, for as long as the future is polled.
    pub async fn run(mut self) {
        // Engines start together (a new leader takes over every cluster at once): their
        // first looks are spread, so that a thousand clusters do not open a thousand
        // streams in the same millisecond.
        let spread = u64::try_from(START_SPREAD.as_millis())
            .unwrap_or(1000)
            .max(1);
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % spread)).await;
        loop {
            if let Err(error) = self.step().await {
                tracing::warn!(%error, "HA engine: retrying");
                tokio::time::sleep(self.timing.retry * 10).await;
            }
        }
    }

    /// One watch of the primary, and the failover it may lead to.
    async fn step(&mut self) -> Result<(), WorldError> {
        let recorded = self.world.recorded().await?;
        if self.sync.is_none() {
            self.sync = recorded.sync.clone();
        }
        if self.instances.is_none() {
            self.instances = Some(recorded.instances.clone());
        }
        let Some(current) = recorded.current_primary.clone() else {
            // A new cluster: its first primary is not a failover; it is recorded once it
            // runs as one.
            self.record_first_primary(&recorded).await?;
            return Ok(());
        };
        if let Some(target) = recorded
            .target_primary
            .clone()
            .filter(|target| *target != current)
        {
            // Asked for while the primary runs: a switchover; else a failover under way.
            if self.runs_as_primary(&current).await {
                return self.switch_over(&current, &target).await;
            }
            return self.fail_over(&current, Instant::now()).await;
        }
        let members = self.world.members().await?;
        let address = members
            .iter()
            .find(|m| m.pod == current)
            .and_then(|m| m.address.clone());
        let end = match address {
            Some(address) => self.watch_primary(&address, &current, &members).await,
            None => WatchEnd::Suspect("the primary's pod has no address".to_string()),
        };
        match end {
            WatchEnd::Refresh => Ok(()),
            WatchEnd::Suspect(reason) => {
                let since = Instant::now();
                tracing::warn!(primary = %current, %reason, "primary suspect");
                self.world
                    .announce(Announcement::PrimaryLost {
                        pod: current.clone(),
                        reason,
                    })
                    .await;
                self.fail_over(&current, since).await
            }
        }
    }

    /// Records the primary of a cluster that has none recorded yet: the target (the
    /// first pod, unless one is named), once it reports that it runs as the primary.
    async fn record_first_primary(&mut self, recorded: &Recorded) -> Result<(), WorldError> {
        let members = self.world.members().await?;
        let target = recorded
            .target_primary
            .clone()
            .or_else(|| members.first().map(|m| m.pod.clone()));
        let address = target.as_ref().and_then(|target| {
            members
                .iter()
                .find(|m| m.pod == *target)
                .and_then(|m| m.address.clone())
        });
        if let (Some(target), Some(address)) = (target, address)
            && let Ok(report) = client::report(&address, self.timing.report_deadline).await
            && report.report.role == Role::Primary
            && report.report.running
            && !report.fenced
        {
            tracing::info!(primary = %target, "recording the cluster's first primary");
            return self.world.record_primary(&target).await;
        }
        tokio::time::sleep(NEW_CLUSTER_POLL).await;
        Ok(())
    }

    /// Reads the primary's heartbeats until it breaks, falls silent, stops being a
    /// running primary, or the refresh period ends.
    async fn watch_primary(
        &mut self,
        address: &str,
        primary: &str,
        members: &[Member],
    ) -> WatchEnd {
        let mut watch = match Watch::open(address, self.timing.silence).await {
            Ok(watch) => watch,
            Err(error) => return WatchEnd::Suspect(error.to_string()),
        };
        let until = Instant::now() + self.timing.refresh;
        while Instant::now() < until {
            let report = match watch.next(self.timing.silence).await {
                Ok(report) => report,
                Err(error) => return WatchEnd::Suspect(error.to_string()),
            };
            // A switchover asked for meanwhile.
            if self.world.recorded().await.is_ok_and(|r| {
                r.target_primary
                    .is_some_and(|t| Some(t) != r.current_primary)
            }) {
                return WatchEnd::Refresh;
            }
            if report.report.role != Role::Primary || !report.report.running || report.fenced {
                return WatchEnd::Suspect(format!("it reports {}", describe(&report)));
            }
            self.primary_lsn = report.report.received_lsn;
            // The primary would rather hand over than restart for its settings: the
            // target is recorded, and the next step carries the switchover out.
            if report.restart_wanted
                && let Some(to) = self.restart_switchover_target(&report, members).await
            {
                tracing::info!(from = primary, %to, "switchover for settings that need a restart");
                match self.world.record_target(&to).await {
                    Ok(()) => return WatchEnd::Refresh,
                    Err(error) => tracing::warn!(%error, "cannot record the switchover target"),
                }
            }
            let sync = SyncSet {
                quorum: report.sync_quorum,
                standbys: report.sync_standbys.clone(),
            };
            if self.sync.as_ref() != Some(&sync) {
                if let Err(error) = self.world.record_sync(&sync).await {
                    tracing::warn!(%error, "cannot record the synchronous set");
                    continue;
                }
                self.sync = Some(sync);
            }
            let instances = instance_states(primary, members, &report);
            if self.instances.as_ref() != Some(&instances) {
                if let Err(error) = self.world.record_instances(&instances).await {
                    tracing::warn!(%error, "cannot record the instances");
                    continue;
                }
                self.instances = Some(instances);
            }
        }
        WatchEnd::Refresh
    }

    /// The standby to hand a primary that asks to be restarted over to, from what the
    /// standbys it names say now.
    async fn restart_switchover_target(
        &self,
        primary: &InstanceReport,
        members: &[Member],
    ) -> Option<String> {
        let standbys: Vec<Member> = members
            .iter()
            .filter(|m| primary.streaming_standbys.contains(&m.pod))
            .cloned()
            .collect();
        let reports = self.reports(&standbys).await;
        let reports: Vec<&InstanceReport> = reports.values().collect();
        plan::restart_switchover_target(primary, &reports)
    }

    /// Every member's report, gathered at once; silent members are absent.
    async fn reports(&self, members: &[Member]) -> BTreeMap<String, InstanceReport> {
        let asks = members.iter().filter_map(|member| {
            let address = member.address.clone()?;
            let deadline = self.timing.report_deadline;
            Some(async move { client::report(&address, deadline).await.ok() })
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .map(|report| (report.pod.clone(), report))
            .collect()
    }

    fn cluster(
        &self,
        recorded: &Recorded,
        members: &[Member],
        reports: &BTreeMap<String, InstanceReport>,
        unhealthy_since: Option<SystemTime>,
    ) -> Cluster {
        let sync = self.sync.clone().unwrap_or_default();
        Cluster {
            instances: members
                .iter()
                .map(|member| Instance {
                    pod: member.pod.clone(),
                    in_sync_set: sync.standbys.contains(&member.pod),
                    report: reports.get(&member.pod).map(|r| r.report.clone()),
                })
                .collect(),
            bounds: recorded.bounds,
            sync_quorum: sync.quorum,
            primary_lsn: self.primary_lsn,
            current_primary: recorded.current_primary.clone(),
            target_primary: recorded.target_primary.clone(),
            unhealthy_since,
        }
    }

    /// Decides and acts until the primary is back or another runs: see the module.
    async fn fail_over(&mut self, from: &str, since: Instant) -> Result<(), WorldError> {
        let mut unhealthy_since = None;
        let mut fenced: BTreeSet<String> = BTreeSet::new();
        // Standbys that answered but could not be fenced (a WAL receiver that does not
        // stop): they might still acknowledge the old primary's commits, so they count
        // as silent and are never chosen, until a fence asked again while blocked takes.
        let mut unfenceable: BTreeSet<String> = BTreeSet::new();
        let mut old_primary_fenced = false;
        let mut blocked: Option<String> = None;
        let mut lost_wal_bytes: Option<u64> = None;
        loop {
            let recorded = self.world.recorded().await?;
            let members = self.world.members().await?;
            let mut reports = self.reports(&members).await;
            reports.retain(|pod, _| !unfenceable.contains(pod));
            // A primary held down (fenced, or isolated on its own) is not restarting:
            // no restart grace for it.
            let held_primary = reports
                .get(from)
                .filter(|r| r.report.role == Role::Primary && r.fenced)
                .map(|_| from.to_string());
            if let Some(held) = &held_primary {
                reports.remove(held);
            }
            let cluster = self.cluster(&recorded, &members, &reports, unhealthy_since);
            match decide(&cluster, SystemTime::now()) {
                FailoverDecision::Nothing => {
                    tracing::info!(primary = %from, "the primary answers again; no failover");
                    let standbys: BTreeSet<String> = fenced
                        .iter()
                        .filter(|pod| {
                            reports
                                .get(*pod)
                                .is_some_and(|r| r.report.role == Role::Standby)
                        })
                        .cloned()
                        // One whose fence failed may have been fenced after all.
                        .chain(unfenceable.iter().cloned())
                        .collect();
                    self.unfence(from, &members, &standbys).await;
                    if blocked.is_some() {
                        self.world.announce(Announcement::Blocked(None)).await;
                    }
                    return Ok(());
                }
                FailoverDecision::Wait {
                    unhealthy_since: first,
                    until,
                } => {
                    unhealthy_since = Some(first);
                    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(left.min(self.timing.retry)).await;
                }
                FailoverDecision::Blocked(reason) => {
                    let message = reason.to_string();
                    if blocked.as_ref() != Some(&message) {
                        tracing::warn!(%message, "failover blocked");
                        self.world
                            .announce(Announcement::Blocked(Some(message.clone())))
                            .await;
                        blocked = Some(message);
                    } else {
                        self.world.confirm_blocked(&message).await;
                    }
                    if let Blocked::OtherPrimary { .. } = reason {
                        return Ok(());
                    }
                    // A standby whose fence failed counts as silent only until a fence
                    // takes: ask again. Else one whose WAL receiver stops later (a
                    // paused process let go, a slow disk) would keep the failover
                    // blocked for good although it answers and is fenced by then.
                    if !unfenceable.is_empty() {
                        let retry: Vec<&Member> = members
                            .iter()
                            .filter(|m| unfenceable.contains(&m.pod))
                            .collect();
                        let confirmed = self.fence(from, &retry).await;
                        if !confirmed.is_empty() {
                            for pod in confirmed {
                                unfenceable.remove(&pod);
                                fenced.insert(pod);
                            }
                            continue;
                        }
                    }
                    // Nobody can take over: the held primary, the one instance sure to
                    // hold every acknowledged commit, serves again.
                    if held_primary.is_some()
                        && let Some(address) = members
                            .iter()
                            .find(|m| m.pod == from)
                            .and_then(|m| m.address.clone())
                    {
                        tracing::warn!(primary = %from, "no standby can take over: releasing the held primary");
                        let token = self.world.instruct_token().await;
                        if let Err(error) = client::instruct(
                            &address,
                            token.as_deref(),
                            &Instruction::Promote,
                            self.timing.instruct_deadline,
                        )
                        .await
                        {
                            tracing::warn!(%error, "cannot release the held primary");
                        }
                    }
                    tokio::time::sleep(self.timing.retry * 5).await;
                }
                FailoverDecision::Promote(promotion) => {
                    if !old_primary_fenced {
                        old_primary_fenced = true;
                        self.fence_old_primary(from, &members).await;
                    }
                    // Positions are only final once no standby streams from the old
                    // primary: fence every answering standby, then look again.
                    let unfenced: Vec<&Member> = members
                        .iter()
                        .filter(|m| m.pod != from && !fenced.contains(&m.pod))
                        .filter(|m| {
                            reports
                                .get(&m.pod)
                                .is_some_and(|r| r.report.role == Role::Standby)
                        })
                        .collect();
                    if !unfenced.is_empty() {
                        let confirmed = self.fence(from, &unfenced).await;
                        for member in unfenced {
                            if !confirmed.contains(&member.pod) {
                                unfenceable.insert(member.pod.clone());
                            }
                        }
                        fenced.extend(confirmed);
                        continue;
                    }
                    tracing::warn!(from, to = %promotion.pod, lsn = promotion.lsn, "failover: recording the new target");
                    self.world.record_target(&promotion.pod).await?;
                    lost_wal_bytes = promotion.lost_wal_bytes;
                    self.world
                        .announce(Announcement::FailoverStarted {
                            from: from.to_string(),
                            promotion,
                        })
                        .await;
                }
                FailoverDecision::Continue { target, promoted } => {
                    let Some(address) = members
                        .iter()
                        .find(|m| m.pod == target)
                        .and_then(|m| m.address.clone())
                    else {
                        tokio::time::sleep(self.timing.retry * 5).await;
                        continue;
                    };
                    if !promoted {
                        let token = self.world.instruct_token().await;
                        let answer = client::instruct(
                            &address,
                            token.as_deref(),
                            &Instruction::Promote,
                            self.timing.promote_deadline,
                        )
                        .await;
                        if let Err(error) = answer {
                            tracing::warn!(%error, %target, "promotion failed; retrying");
                            tokio::time::sleep(self.timing.retry * 5).await;
                            continue;
                        }
                    }
                    self.world.record_primary(&target).await?;
                    let elapsed = since.elapsed();
                    tracing::warn!(from, to = %target, elapsed_ms = elapsed.as_millis() as u64, "failover complete");
                    self.follow(&target, &members).await;
                    self.world
                        .announce(Announcement::FailoverCompleted {
                            from: from.to_string(),
                            to: target.clone(),
                            lost_wal_bytes,
                            elapsed,
                        })
                        .await;
                    if blocked.is_some() {
                        self.world.announce(Announcement::Blocked(None)).await;
                    }
                    // The new primary's heartbeat brings its own set.
                    self.sync = None;
                    self.primary_lsn = None;
                    return Ok(());
                }
            }
        }
    }

    /// Fences `members` at once; the pods that confirmed.
    async fn fence(&self, primary: &str, members: &[&Member]) -> Vec<String> {
        let instruction = Instruction::Fence {
            primary: primary.to_string(),
        };
        let token = self.world.instruct_token().await;
        let asks = members.iter().filter_map(|member| {
            let address = member.address.clone()?;
            let instruction = instruction.clone();
            let deadline = self.timing.instruct_deadline;
            let pod = member.pod.clone();
            let token = token.clone();
            Some(async move {
                match client::instruct(&address, token.as_deref(), &instruction, deadline).await {
                    Ok(_) => Some(pod),
                    Err(error) => {
                        tracing::warn!(%error, %pod, "fencing failed");
                        None
                    }
                }
            })
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The old primary's manager, if it answers, stops its server and keeps it down.
    /// Nothing waits for it (a hung server may take long to stop): with a quorum the
    /// standbys' fence is what makes it harmless.
    async fn fence_old_primary(&self, primary: &str, members: &[Member]) {
        let Some(address) = members
            .iter()
            .find(|m| m.pod == primary)
            .and_then(|m| m.address.clone())
        else {
            return;
        };
        let instruction = Instruction::Fence {
            primary: primary.to_string(),
        };
        let deadline = self.timing.promote_deadline;
        let token = self.world.instruct_token().await;
        tokio::spawn(async move {
            let _ = client::instruct(&address, token.as_deref(), &instruction, deadline).await;
        });
    }

    /// Every member but `primary` follows it (the ones that do not answer learn it
    /// from the record when they come back).
    async fn follow(&self, primary: &str, members: &[Member]) {
        let instruction = Instruction::Follow {
            primary: primary.to_string(),
        };
        let token = self.world.instruct_token().await;
        let asks = members
            .iter()
            .filter(|m| m.pod != primary)
            .filter_map(|member| {
                let address = member.address.clone()?;
                let instruction = instruction.clone();
                let pod = member.pod.clone();
                let token = token.clone();
                // A former primary rewinds before it answers: nothing waits for it.
                let deadline = self.timing.promote_deadline;
                Some(tokio::spawn(async move {
                    if let Err(error) =
                        client::instruct(&address, token.as_deref(), &instruction, deadline).await
                    {
                        tracing::info!(%error, %pod, "not re-pointed now; it follows the record when it answers");
                    }
                }))
            })
            .collect::<Vec<_>>();
        // The standbys reload at once; wait for those briefly, not for a rewind.
        let _ = tokio::time::timeout(
            self.timing.instruct_deadline,
            futures::future::join_all(asks),
        )
        .await;
    }

    /// The primary came back while standbys were fenced: they follow it again.
    async fn unfence(&self, primary: &str, members: &[Member], fenced: &BTreeSet<String>) {
        let fenced: Vec<Member> = members
            .iter()
            .filter(|m| fenced.contains(&m.pod))
            .cloned()
            .collect();
        if !fenced.is_empty() {
            self.follow(primary, &fenced).await;
        }
    }
}

mod switchover;

/// `status.instancesStatus` from the primary's report: it runs; a standby is ready
/// when it streams from it.
fn instance_states(
    primary: &str,
    members: &[Member],
    report: &InstanceReport,
) -> Vec<InstanceState> {
    members
        .iter()
        .map(|member| {
            if member.pod == primary {
                return InstanceState {
                    name: member.pod.clone(),
                    role: "primary".to_string(),
                    ready: true,
                    sync_state: None,
                };
            }
            let synchronous = report.sync_quorum > 0 && report.sync_standbys.contains(&member.pod);
            InstanceState {
                name: member.pod.clone(),
                role: "standby".to_string(),
                ready: report.streaming_standbys.contains(&member.pod),
                sync_state: Some(if synchronous { "quorum" } else { "async" }.to_string()),
            }
        })
        .collect()
}

fn describe(report: &InstanceReport) -> String {
    let role = match report.report.role {
        Role::Primary => "primary",
        Role::Standby => "standby",
    };
    match (report.report.running, report.fenced) {
        (_, true) => format!("{role}, fenced"),
        (true, false) => format!("{role}, running"),
        (false, false) => format!("{role}, server not answering"),
    }
}
