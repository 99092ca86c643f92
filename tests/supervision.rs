//! The postmaster under the instance manager's supervisor, with a real server: a killed
//! postmaster comes back, SIGTERM gives a smart shutdown (fast when clients stay), and no
//! postgres process outlives the supervisor; a requested restart is a fast shutdown and
//! an immediate start.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use postgres_operator::instance::supervise::{
    Event, HoldDown, PostmasterCommand, ShutdownMode, Timing, supervise,
};
use std::sync::Arc;
use support::instance::processes_mentioning;
use support::postgres::DataDir;

use tokio::sync::{Notify, mpsc, watch};

fn timing() -> Timing {
    Timing {
        restart_delay: Duration::from_millis(200),
        max_restart_delay: Duration::from_secs(2),
        smart_timeout: Duration::from_secs(1),
        fast_timeout: Duration::from_secs(10),
        immediate_timeout: Duration::from_secs(5),
    }
}

struct Supervised {
    dir: DataDir,
    stop: watch::Sender<bool>,
    restart: Arc<Notify>,
    hold: watch::Sender<HoldDown>,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<ShutdownMode>,
}

fn start() -> Supervised {
    let dir = DataDir::init();
    let (program, args) = dir.postmaster();
    let command = PostmasterCommand {
        program,
        args,
        stderr: None,
    };
    let (stop, stopping) = watch::channel(false);
    let (sender, events) = mpsc::unbounded_channel();
    let restart = Arc::new(Notify::new());
    let restarts = restart.clone();
    let (hold, held) = watch::channel(HoldDown::Released);
    let task = tokio::spawn(async move {
        supervise(&command, timing(), stopping, restarts, held, sender)
            .await
            .unwrap()
    });
    Supervised {
        dir,
        stop,
        restart,
        hold,
        events,
        task,
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("an event in time")
        .expect("the supervisor is alive")
}

async fn wait_ready(dir: &DataDir) {
    support::wait_for("the server accepts connections", || dir.is_ready()).await;
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Every live process whose command line mentions the data directory.
fn processes_of(dir: &DataDir) -> Vec<(u32, String)> {
    processes_mentioning(&dir.data_dir.to_string_lossy())
}

#[tokio::test]
async fn a_killed_postmaster_is_restarted_and_shutdown_leaves_no_process() {
    let mut s = start();
    let Event::Started { pid: first } = next_event(&mut s.events).await else {
        panic!("expected Started")
    };
    wait_ready(&s.dir).await;
    std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(matches!(
        next_event(&mut s.events).await,
        Event::Died { .. }
    ));
    // The old backends may still hold shared memory for a moment: the supervisor retries.
    let second = loop {
        match next_event(&mut s.events).await {
            Event::Started { pid } => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if alive(pid) && s.dir.is_ready() {
                    break pid;
                }
            }
            Event::Died { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_ne!(first, second);
    wait_ready(&s.dir).await;
    s.stop.send(true).unwrap();
    assert_eq!(s.task.await.unwrap(), ShutdownMode::Smart);
    assert!(!alive(second));
    support::wait_for("every postgres process of the directory is gone", || {
        processes_of(&s.dir).is_empty()
    })
    .await;
    assert!(
        !s.dir.data_dir.join("postmaster.pid").exists(),
        "a clean shutdown removes postmaster.pid"
    );
}

#[tokio::test]
async fn sigterm_escalates_to_fast_shutdown_when_clients_stay() {
    let mut s = start();
    next_event(&mut s.events).await;
    wait_ready(&s.dir).await;
    let mut config = tokio_postgres::Config::new();
    config
        .host(s.dir.socket_dir.to_str().unwrap())
        .port(s.dir.port)
        .user("postgres")
        .dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let held = tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();

    let started = Instant::now();
    s.stop.send(true).unwrap();
    assert_eq!(
        s.task.await.unwrap(),
        ShutdownMode::Fast,
        "smart shutdown waits for the client, then fast disconnects it"
    );
    assert!(started.elapsed() >= timing().smart_timeout);
    assert!(matches!(
        next_event(&mut s.events).await,
        Event::ShutDown {
            mode: ShutdownMode::Fast
        }
    ));
    let _ = held.await;
    support::wait_for("every postgres process of the directory is gone", || {
        processes_of(&s.dir).is_empty()
    })
    .await;
    drop(client);
    assert!(s.dir.root().exists());
}

#[tokio::test]
async fn a_requested_restart_stops_fast_and_starts_again_at_once() {
    let mut s = start();
    let Event::Started { pid: first } = next_event(&mut s.events).await else {
        panic!("expected Started")
    };
    wait_ready(&s.dir).await;
    let started = Instant::now();
    s.restart.notify_one();
    assert_eq!(
        next_event(&mut s.events).await,
        Event::Restarting {
            mode: ShutdownMode::Fast
        }
    );
    let Event::Started { pid: second } = next_event(&mut s.events).await else {
        panic!("expected Started")
    };
    assert_ne!(first, second);
    assert!(!alive(first));
    wait_ready(&s.dir).await;
    assert!(
        started.elapsed() < timing().smart_timeout + Duration::from_secs(5),
        "no smart-shutdown wait and no restart backoff"
    );
    s.stop.send(true).unwrap();
    assert_eq!(s.task.await.unwrap(), ShutdownMode::Smart);
}

#[tokio::test]
async fn a_held_postmaster_stops_at_once_and_stays_down_until_released() {
    let mut s = start();
    let Event::Started { pid: first } = next_event(&mut s.events).await else {
        panic!("expected Started")
    };
    wait_ready(&s.dir).await;
    s.hold.send(HoldDown::Immediate).unwrap();
    assert_eq!(
        next_event(&mut s.events).await,
        Event::HeldDown {
            mode: ShutdownMode::Immediate
        }
    );
    assert!(!alive(first));
    // Held: no restart, however long it stays down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(s.events.try_recv().is_err(), "nothing starts while held");
    assert!(processes_of(&s.dir).is_empty());
    s.hold.send(HoldDown::Released).unwrap();
    let Event::Started { pid: second } = next_event(&mut s.events).await else {
        panic!("expected Started")
    };
    assert_ne!(first, second);
    wait_ready(&s.dir).await;
    s.stop.send(true).unwrap();
    s.task.await.unwrap();
}
