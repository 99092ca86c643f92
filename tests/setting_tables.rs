//! The setting tables of src/validate/settings/ are what the real servers say: each
//! generated major's `pg_settings` is read from a running server and compared with the
//! committed table. `REGENERATE_SETTING_TABLES=1` rewrites the tables instead (the
//! generator). The majors beside the system's come from scripts/install-postgres-majors.sh.

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use postgres_operator::validate::settings::table::{
    GENERATED_MAJORS, HEADER, PG_SETTINGS_QUERY, committed_tsv,
};
use support::postgres::{DataDir, PostgresServer, bin_dir_of, column};

async fn table_of_running_server(major: u32) -> String {
    let server = PostgresServer::start_on(DataDir::init_with(&bin_dir_of(major)));
    let client = server.admin("postgres").await;
    let version = column(&client, "SHOW server_version_num").await;
    assert!(
        version[0].starts_with(&major.to_string()),
        "asked for PostgreSQL {major}, got server_version_num {version:?}"
    );
    let rows = column(&client, PG_SETTINGS_QUERY).await;
    format!("{HEADER}\n{}\n", rows.join("\n"))
}

fn tsv_path(major: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("src/validate/settings/pg{major}.tsv"))
}

/// The lines only one side has, for a readable failure.
fn difference(committed: &str, generated: &str) -> String {
    let only = |a: &str, b: &str, mark: &str| -> Vec<String> {
        a.lines()
            .filter(|line| !b.lines().any(|other| other == *line))
            .map(|line| format!("{mark} {line}"))
            .collect()
    };
    let mut lines = only(committed, generated, "-");
    lines.extend(only(generated, committed, "+"));
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_tables_match_the_real_servers() {
    let regenerate = std::env::var_os("REGENERATE_SETTING_TABLES").is_some();
    let mut stale = Vec::new();
    for major in GENERATED_MAJORS {
        let started = Instant::now();
        let generated = table_of_running_server(major).await;
        eprintln!(
            "PostgreSQL {major}: {} settings read in {:.1} s",
            generated.lines().count() - 1,
            started.elapsed().as_secs_f64()
        );
        if regenerate {
            std::fs::write(tsv_path(major), &generated).unwrap();
        } else if committed_tsv(major) != Some(generated.as_str()) {
            stale.push(format!(
                "pg{major}.tsv (- committed, + server):\n{}",
                difference(committed_tsv(major).unwrap_or_default(), &generated)
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "committed setting tables differ from the servers; review and regenerate with \
         REGENERATE_SETTING_TABLES=1 cargo test --test setting_tables:\n{}",
        stale.join("\n")
    );
}
