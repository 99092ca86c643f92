//! What the manager does on the HA engine's word (see `ha_api`): fence, promote,
//! follow; and what goes with it: stepping a former primary down to a standby (rewind
//! or re-clone), keeping the standbys' replication slots ready on every instance so
//! that they can stream from whichever is promoted, and lifting a fence the engine
//! never came back to.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{BoxError, InstanceError, Instructed, Manager, Role, role_of};
use crate::ha::wire::Instruction;
use crate::instance::bootstrap::Tools;
use crate::instance::controldata;
use crate::instance::files::slot_name;
use crate::instance::ha_api::HaView;
use crate::instance::provision::MAINTENANCE_DB;
use crate::instance::rejoin::{self, Rejoined};
use crate::instance::source::Snapshot;
use crate::instance::supervise::HoldDown;
use crate::manifests::names;

/// A fence the engine did not follow up within this long is lifted: the instance goes
/// back to what the spec source says (so an engine that died midway never leaves a
/// cluster fenced).
pub const FENCE_LEASE: Duration = Duration::from_secs(30);

/// How long a primary waits for the HA engine once the record names another
/// instance, before it steps down on its own.
pub const STEP_DOWN_AFTER: Duration = Duration::from_secs(5);

/// How long a fenced standby's WAL receiver may take to stop.
const RECEIVER_STOP: Duration = Duration::from_secs(3);

/// How long a held-down postmaster may take to exit.
const POSTMASTER_STOP: Duration = Duration::from_secs(30);

/// A slot on a standby that holds back more WAL than this while unused is dropped
/// (and made again, unreserved): a standby must not fill its disk for a peer that
/// streams from elsewhere.
const STANDBY_SLOT_RETENTION: i64 = 64 * 1024 * 1024;

/// Slots of the cluster's other pods that do not exist yet, made without reserving
/// WAL: they reserve when their standby first streams.
const CREATE_SLOTS_SQL: &str = "SELECT count(pg_create_physical_replication_slot(name)) \
     FROM unnest($1::text[]) AS name \
     WHERE name NOT IN (SELECT slot_name FROM pg_replication_slots)";

const DROP_STALE_STANDBY_SLOTS_SQL: &str = "SELECT count(pg_drop_replication_slot(slot_name)) \
     FROM pg_replication_slots \
     WHERE pg_is_in_recovery() AND slot_type = 'physical' AND NOT active \
       AND restart_lsn IS NOT NULL \
       AND pg_wal_lsn_diff(pg_last_wal_replay_lsn(), restart_lsn) > $1::bigint";

/// Slots of this cluster's pods beyond `replicas` (a scale-down removed them): named as
/// [`slot_name`] names a pod of the cluster, `$1` being that name without its ordinal.
/// Inactive only: a pod still shutting down keeps its slot until it has gone.
const DROP_REMOVED_SLOTS_SQL: &str = "SELECT count(pg_drop_replication_slot(slot_name)) \
     FROM pg_replication_slots \
     WHERE slot_type = 'physical' AND NOT active \
       AND starts_with(slot_name::text, $1) \
       AND substr(slot_name::text, length($1) + 1) ~ '^[0-9]+$' \
       AND substr(slot_name::text, length($1) + 1)::numeric >= $2::int";

impl Manager {
    /// Publishes what the HA endpoints report.
    pub(super) fn publish_view(&self) {
        // Kept from what write_files recorded: one read of the published view.
        let (config_written_at, config_digest) = self
            .ha_view
            .read()
            .map(|view| (view.config_written_at, view.config_digest.clone()))
            .unwrap_or_default();
        let view = HaView {
            role: match self.role {
                Role::Primary => crate::ha::Role::Primary,
                Role::Standby { .. } => crate::ha::Role::Standby,
            },
            following: match &self.role {
                Role::Standby { primary } => Some(primary.clone()),
                Role::Primary => None,
            },
            fenced: self.fenced_at.is_some(),
            stopped_at_lsn: self.stopped_at_lsn,
            restart_wanted: self.restart_wanted_since.is_some() && self.role == Role::Primary,
            config_written_at,
            config_digest,
        };
        if let Ok(mut published) = self.ha_view.write() {
            *published = view;
        }
    }

    /// Cut off from the engine and every standby: hold the server down until the
    /// engine says what to do.
    pub(super) fn fence_isolated(&mut self) {
        if self.role != Role::Primary || self.self_fenced {
            return;
        }
        self.self_fenced = true;
        self.fenced_at = Some(Instant::now());
        self.held_down.send_replace(HoldDown::Immediate);
        self.publish_view();
    }

    /// Carries out `instruction`; the error says why not.
    pub(super) async fn instruct(
        &mut self,
        instruction: Instruction,
        snapshot: &Snapshot,
    ) -> Result<(), String> {
        if !matches!(instruction, Instruction::Fence { .. }) {
            self.self_fenced = false;
        }
        if !matches!(instruction, Instruction::HandOver { .. }) {
            self.stopped_at_lsn = None;
        }
        // The engine acts: no stepping down on the record alone.
        self.named_elsewhere = None;
        match instruction {
            Instruction::HandOver { to } => self.hand_over(&to).await,
            Instruction::Fence { primary } => self.fence(&primary).await,
            Instruction::Promote => {
                self.remember_target(snapshot, self.settings.pod_name.clone());
                match self.role {
                    Role::Primary => {
                        self.fenced_at = None;
                        self.held_down.send_replace(HoldDown::Released);
                        self.publish_view();
                        Ok(())
                    }
                    Role::Standby { .. } => self.become_primary().await.map_err(|e| e.to_string()),
                }
            }
            Instruction::Follow { primary } => {
                if primary == self.settings.pod_name {
                    return Err("told to follow itself".to_string());
                }
                self.remember_target(snapshot, primary.clone());
                match self.role {
                    Role::Standby { .. } => {
                        self.role = Role::Standby { primary };
                        self.fenced_at = None;
                        self.write_and_reload(snapshot).await;
                        self.publish_view();
                        Ok(())
                    }
                    Role::Primary => self
                        .step_down(snapshot, &primary)
                        .await
                        .map_err(|e| e.to_string()),
                }
            }
        }
    }

    /// Switchover to `to`: stop cleanly, stay down, report the final checkpoint.
    async fn hand_over(&mut self, to: &str) -> Result<(), String> {
        if self.role != Role::Primary {
            return Err("only the primary hands over".to_string());
        }
        tracing::info!(%to, "switchover: stopping cleanly to hand over");
        self.fenced_at = Some(Instant::now());
        self.held_down.send_replace(HoldDown::Clean);
        self.publish_view();
        self.provisioner.release_all();
        if !self.wait_postmaster_stopped().await {
            return Err("the postmaster did not stop in time".to_string());
        }
        let tools = self.tools();
        let data_dir = self.settings.data_dir.clone();
        let control = tokio::task::spawn_blocking(move || controldata::read(&tools, &data_dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !control.shut_down_cleanly() {
            return Err(format!(
                "the server stopped in state {:?}, not cleanly",
                control.state
            ));
        }
        tracing::info!(
            checkpoint = control.checkpoint_lsn,
            "switchover: stopped cleanly"
        );
        self.stopped_at_lsn = Some(control.checkpoint_lsn);
        self.publish_view();
        Ok(())
    }

    /// The engine named `target` ahead of the spec source.
    fn remember_target(&mut self, snapshot: &Snapshot, target: String) {
        let named = snapshot.target_primary();
        self.instructed = (named != target).then_some(Instructed {
            target,
            over: named,
        });
    }

    /// A standby stops streaming (and its position stops moving); a primary's server is
    /// stopped at once and kept down.
    async fn fence(&mut self, primary: &str) -> Result<(), String> {
        self.fenced_at = Some(Instant::now());
        self.publish_view();
        match &self.role {
            Role::Primary => {
                tracing::warn!("fenced: stopping the server and keeping it down");
                self.held_down.send_replace(HoldDown::Immediate);
                if self.wait_postmaster_stopped().await {
                    Ok(())
                } else {
                    Err("the postmaster did not stop in time".to_string())
                }
            }
            Role::Standby { .. } => {
                tracing::warn!(%primary, "fenced: no longer streaming from the primary");
                let snapshot_files = self.write_detached();
                if let Err(error) = snapshot_files {
                    return Err(format!("cannot write the configuration: {error}"));
                }
                self.reload().await.map_err(|e| e.to_string())?;
                self.wait_receiver_stopped().await
            }
        }
    }

    /// Rewrites only the run-time include for a fenced standby: the rest of the files
    /// are as the last spec left them.
    fn write_detached(&self) -> Result<bool, crate::instance::files::FileError> {
        let conf = crate::instance::files::runtime_conf(
            &crate::instance::files::RuntimeRole::Detached,
            &self.listen(),
        );
        crate::instance::files::write_runtime_conf(&self.settings.data_dir, &conf)
    }

    async fn wait_receiver_stopped(&self) -> Result<(), String> {
        let deadline = Instant::now() + RECEIVER_STOP;
        loop {
            let stopped = async {
                let client = self.provisioner.connect(MAINTENANCE_DB).await?;
                let streaming: i64 = client
                    .query_one("SELECT count(*) FROM pg_stat_wal_receiver", &[])
                    .await?
                    .get(0);
                Ok::<_, BoxError>(streaming == 0)
            };
            match stopped.await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(error) => return Err(format!("cannot read the WAL receiver: {error}")),
            }
            if Instant::now() >= deadline {
                return Err("the WAL receiver did not stop in time".to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the postmaster is gone: no `postmaster.pid`, or its process is dead.
    async fn wait_postmaster_stopped(&self) -> bool {
        let deadline = Instant::now() + POSTMASTER_STOP;
        let pid_file = self.settings.data_dir.join("postmaster.pid");
        while Instant::now() < deadline {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok());
            let alive = pid
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
            if !alive {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Promotes the server and runs as the primary.
    pub(super) async fn become_primary(&mut self) -> Result<(), BoxError> {
        self.promote().await?;
        tracing::info!("promoted");
        self.role = Role::Primary;
        self.fenced_at = None;
        self.held_down.send_replace(HoldDown::Released);
        self.publish_view();
        Ok(())
    }

    /// A primary becomes a standby of `primary`: its server stops, rewinds (or is
    /// cloned again), and starts as a standby.
    pub(super) async fn step_down(
        &mut self,
        snapshot: &Snapshot,
        primary: &str,
    ) -> Result<(), InstanceError> {
        self.held_down.send_replace(HoldDown::Immediate);
        self.fenced_at.get_or_insert_with(Instant::now);
        self.publish_view();
        self.provisioner.release_all();
        if !self.wait_postmaster_stopped().await {
            tracing::error!("the postmaster did not stop; not rewinding");
            return Ok(());
        }
        let outcome = self.rejoin_once(snapshot, primary).await?;
        tracing::info!(?outcome, %primary, "stepped down to a standby");
        self.role = Role::Standby {
            primary: primary.to_string(),
        };
        self.fenced_at = None;
        self.self_fenced = false;
        self.write_files(snapshot)?;
        self.held_down.send_replace(HoldDown::Released);
        self.publish_view();
        Ok(())
    }

    async fn rejoin_once(
        &self,
        snapshot: &Snapshot,
        primary: &str,
    ) -> Result<Rejoined, InstanceError> {
        Ok(self
            .against_primary(snapshot, primary, rejoin::rejoin)
            .await??)
    }

    /// Runs `work` (blocking: PostgreSQL's tools) on this instance's data directory
    /// against `primary`, logged in as the snapshot's Secrets allow.
    async fn against_primary<T: Send + 'static>(
        &self,
        snapshot: &Snapshot,
        primary: &str,
        work: fn(&Tools, &Path, &rejoin::Source) -> T,
    ) -> Result<T, tokio::task::JoinError> {
        let endpoint = self.peer(primary);
        let tools = self.tools();
        let data_dir = self.settings.data_dir.clone();
        let superuser = snapshot
            .superuser_password()
            .unwrap_or_default()
            .to_string();
        let replication = snapshot
            .replication_password()
            .unwrap_or_default()
            .to_string();
        let pod = self.settings.pod_name.clone();
        tokio::task::spawn_blocking(move || {
            work(
                &tools,
                &data_dir,
                &rejoin::Source {
                    primary: &endpoint,
                    superuser_password: &superuser,
                    replication_password: &replication,
                    application_name: &pod,
                },
            )
        })
        .await
    }

    /// At start-up, a standby's existing directory is checked against its primary's
    /// system and timeline (see [`rejoin::realign`]). A primary that does not answer
    /// leaves it as it is: the standby starts on it and checks again at its next start.
    pub(super) async fn realign(
        &self,
        snapshot: &Snapshot,
        primary: &str,
    ) -> Result<(), InstanceError> {
        let outcome = self
            .against_primary(snapshot, primary, rejoin::realign)
            .await?;
        match outcome {
            Ok(None) => {}
            Ok(Some(how)) => {
                tracing::info!(?how, %primary, "the data now follows the primary's history")
            }
            Err(error) => {
                tracing::warn!(%error, %primary, "cannot check the data against the primary; starting on it as it is")
            }
        }
        Ok(())
    }

    /// At start-up, a former primary's directory joins the target's history before its
    /// server starts, retrying until the target answers. False when shut down first.
    pub(super) async fn rejoin(
        &self,
        snapshot: &Snapshot,
        primary: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, InstanceError> {
        loop {
            match self.rejoin_once(snapshot, primary).await {
                Ok(_) => return Ok(true),
                Err(error) => tracing::warn!(%error, "rejoining the primary failed; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.clone_retry) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(false),
            }
        }
    }

    /// A primary the record has named another instance in place of for
    /// [`STEP_DOWN_AFTER`], with no word from the HA engine meanwhile, steps down to a
    /// standby of the named one.
    pub(super) async fn step_down_if_still_named(&mut self, snapshot: &Snapshot) {
        let Some(since) = self.named_elsewhere else {
            return;
        };
        if since.elapsed() < STEP_DOWN_AFTER {
            return;
        }
        self.named_elsewhere = None;
        match role_of(&self.settings, snapshot, self.instructed.as_ref()) {
            Role::Standby { primary } if self.role == Role::Primary => {
                tracing::warn!(target = %primary, "still named in place of this primary, and no word from the HA engine: stepping down");
                if let Err(error) = self.step_down(snapshot, &primary).await {
                    // Held down meanwhile; tried again until the named primary answers.
                    tracing::error!(%error, "stepping down failed; the server stays down and it is tried again");
                    self.named_elsewhere = Some(Instant::now());
                }
            }
            _ => {}
        }
    }

    /// Lifts a fence older than [`FENCE_LEASE`]: back to what the spec source says.
    pub(super) async fn lift_expired_fence(&mut self, snapshot: &Snapshot) {
        if self.self_fenced
            || self
                .fenced_at
                .is_none_or(|fenced| fenced.elapsed() < FENCE_LEASE)
        {
            return;
        }
        tracing::warn!("the fence was not followed up; going back to the spec's target");
        self.fenced_at = None;
        self.instructed = None;
        if self.role == Role::Primary && role_of(&self.settings, snapshot, None) == Role::Primary {
            self.held_down.send_replace(HoldDown::Released);
        }
        self.publish_view();
        self.reconfigure(snapshot).await;
    }

    /// Every instance keeps a slot for each other pod, so that whichever is promoted
    /// already has the slots its standbys stream through.
    pub(super) async fn keep_slots_ready(
        &self,
        client: &tokio_postgres::Client,
        snapshot: &Snapshot,
    ) -> Result<(), tokio_postgres::Error> {
        let cluster = snapshot.cluster();
        let slots: Vec<String> = (0..snapshot.postgres.spec.replicas)
            .map(|ordinal| names::pod(&cluster, ordinal))
            .filter(|pod| *pod != self.settings.pod_name)
            .map(|pod| slot_name(&pod))
            .collect();
        client
            .query_one(DROP_STALE_STANDBY_SLOTS_SQL, &[&STANDBY_SLOT_RETENTION])
            .await?;
        // A removed instance's slot would keep the primary's WAL forever.
        let ordinal_prefix = slot_name(&names::pod(&cluster, 0))
            .strip_suffix('0')
            .map(str::to_string)
            .unwrap_or_default();
        client
            .query_one(
                DROP_REMOVED_SLOTS_SQL,
                &[&ordinal_prefix, &snapshot.postgres.spec.replicas],
            )
            .await?;
        client.query_one(CREATE_SLOTS_SQL, &[&slots]).await?;
        Ok(())
    }
}
