//! A pipe between two programs (`pg_dump` into `restic backup --stdin`, `restic dump` into
//! `pg_restore`) that this process relays, so the consumer never sees end-of-input unless
//! the producer succeeded: restic turns end-of-input into a snapshot, and restic 0.14 has no
//! `--stdin-from-command`. When the producer fails, the consumer is killed first.

use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Bytes of stderr kept per program for error messages.
const STDERR_KEPT: usize = 8 * 1024;
/// Relay buffer: large enough that the copy costs nothing next to compression and upload.
const BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("relaying {producer} into {consumer}: {source}")]
    Relay {
        producer: String,
        consumer: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a successful pipe produced.
#[derive(Debug)]
pub struct Piped {
    /// Bytes that went through.
    pub bytes: u64,
    /// The consumer's standard output.
    pub stdout: String,
}

/// Runs `producer | consumer`; both must exit 0.
pub async fn pipe(mut producer: Command, mut consumer: Command) -> Result<Piped, PipeError> {
    let producer_name = program_name(&producer);
    let consumer_name = program_name(&consumer);
    producer
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut consumer_child = spawn_consumer(&mut consumer, &consumer_name)?;
    let mut producer_child = match producer.spawn() {
        Ok(child) => child,
        Err(source) => {
            kill(&mut consumer_child).await;
            return Err(PipeError::Spawn {
                program: producer_name,
                source,
            });
        }
    };
    let producer_err = tokio::spawn(tail(producer_child.stderr.take()));
    let consumer_err = tokio::spawn(tail(consumer_child.stderr.take()));
    let consumer_out = tokio::spawn(read_all(consumer_child.stdout.take()));

    let relayed = relay(&mut producer_child, &mut consumer_child).await;
    if let Ok(Relayed::ConsumerFailed(status)) = relayed {
        kill(&mut producer_child).await;
        return Err(PipeError::Failed {
            program: consumer_name,
            status: describe(status),
            stderr: consumer_err.await.unwrap_or_default(),
        });
    }
    let producer_status = producer_child.wait().await;
    let producer_stderr = producer_err.await.unwrap_or_default();
    let relay_error = |source| PipeError::Relay {
        producer: producer_name.clone(),
        consumer: consumer_name.clone(),
        source,
    };
    let bytes = match (relayed, producer_status) {
        (_, Ok(status)) if !status.success() => Err(PipeError::Failed {
            program: producer_name.clone(),
            status: describe(status),
            stderr: producer_stderr,
        }),
        (_, Err(source)) | (Err(source), Ok(_)) => Err(relay_error(source)),
        (Ok(Relayed::All(bytes) | Relayed::ConsumerDone(bytes)), Ok(_)) => Ok(bytes),
        (Ok(Relayed::ConsumerFailed(_)), Ok(_)) => Ok(0),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(failure) => {
            // Before its input ends, so it cannot take the partial stream for a whole one.
            kill(&mut consumer_child).await;
            return Err(failure);
        }
    };
    // Only now does the consumer see end-of-input.
    drop(consumer_child.stdin.take());
    let status = consumer_child.wait().await.map_err(relay_error)?;
    let stderr = consumer_err.await.unwrap_or_default();
    let stdout = consumer_out.await.unwrap_or_default();
    if !status.success() {
        return Err(PipeError::Failed {
            program: consumer_name,
            status: describe(status),
            stderr,
        });
    }
    Ok(Piped { bytes, stdout })
}

/// How a relay ended.
enum Relayed {
    /// Everything the producer wrote reached the consumer.
    All(u64),
    /// The consumer stopped reading and exited 0 (pg_restore leaves the end padding of a tar
    /// unread); the rest of the producer's output was drained so the producer could finish.
    ConsumerDone(u64),
    /// The consumer stopped reading and failed.
    ConsumerFailed(ExitStatus),
}

/// Copies the producer's stdout into the consumer's stdin, keeping the latter open.
async fn relay(producer: &mut Child, consumer: &mut Child) -> Result<Relayed, std::io::Error> {
    let (Some(mut from), Some(to)) = (producer.stdout.take(), consumer.stdin.as_mut()) else {
        return Err(std::io::Error::other("pipes were not set up"));
    };
    let mut buffer = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        match to.write_all(&buffer[..read]).await {
            Ok(()) => total += read as u64,
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                let status = consumer.wait().await?;
                if !status.success() {
                    return Ok(Relayed::ConsumerFailed(status));
                }
                total += read as u64;
                loop {
                    let read = from.read(&mut buffer).await?;
                    if read == 0 {
                        return Ok(Relayed::ConsumerDone(total));
                    }
                    total += read as u64;
                }
            }
            Err(error) => return Err(error),
        }
    }
    to.flush().await?;
    Ok(Relayed::All(total))
}

/// Runs one program to completion; its stdout on success, a [`PipeError`] otherwise.
pub async fn output(mut command: Command) -> Result<String, PipeError> {
    let program = program_name(&command);
    command.stdin(Stdio::null()).kill_on_drop(true);
    checked(program, command.output().await)
}

/// A finished program's stdout when it exited 0, else why not.
fn checked(
    program: String,
    out: std::io::Result<std::process::Output>,
) -> Result<String, PipeError> {
    let out = out.map_err(|source| PipeError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(PipeError::Failed {
            program,
            status: describe(out.status),
            stderr: last_bytes(&out.stderr),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn program_name(command: &Command) -> String {
    let program = command.as_std().get_program();
    std::path::Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The end of a program's stderr, where the reason for a failure is.
fn last_bytes(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_KEPT);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

async fn tail(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buffer = vec![0u8; 8192];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        kept.extend_from_slice(&buffer[..read]);
        if kept.len() > 2 * STDERR_KEPT {
            kept.drain(..kept.len() - STDERR_KEPT);
        }
    }
    last_bytes(&kept)
}

async fn read_all(stream: Option<impl AsyncRead + Unpin>) -> String {
    let mut text = String::new();
    if let Some(mut stream) = stream {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes).await;
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Kills the program when this process dies: a killed backup run must not leave a restic
/// that reads end-of-input and commits a partial snapshot.
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe
    // system call (prctl).
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// Starts a program that reads its standard input from this process, and dies with it.
fn spawn_consumer(consumer: &mut Command, program: &str) -> Result<Child, PipeError> {
    consumer
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(consumer);
    consumer.spawn().map_err(|source| PipeError::Spawn {
        program: program.to_string(),
        source,
    })
}

/// Writes `bytes` as the whole standard input of `consumer`; its stdout on success.
pub async fn feed(bytes: &[u8], mut consumer: Command) -> Result<String, PipeError> {
    let program = program_name(&consumer);
    let mut child = spawn_consumer(&mut consumer, &program)?;
    let mut stdin = child.stdin.take();
    let written = match stdin.as_mut() {
        Some(stdin) => stdin.write_all(bytes).await,
        None => Err(std::io::Error::other("stdin was not set up")),
    };
    if let Err(source) = written {
        kill(&mut child).await;
        return Err(PipeError::Relay {
            producer: "memory".to_string(),
            consumer: program,
            source,
        });
    }
    drop(stdin);
    checked(program, child.wait_with_output().await)
}
