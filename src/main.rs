//! `postgres-operator`: one binary, one mode per subcommand.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postgres_operator::build::OperatorSettings;
use postgres_operator::build::cluster::{
    DEFAULT_OPERATOR_IMAGE, DEFAULT_OPERATOR_NAMESPACE, DEFAULT_POSTGRES_IMAGE_REPOSITORY,
};
use postgres_operator::build::secrets::RandomPasswords;
use postgres_operator::render::{self, OutputFormat};
use postgres_operator::{binaries, crdgen};

#[derive(Parser)]
#[command(
    name = "postgres-operator",
    version,
    about = "Kubernetes operator for highly available PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every object the controller would apply for Postgres manifests (no cluster needed).
    Render(RenderArgs),
    /// Print the CustomResourceDefinitions (Postgres, PostgresBackup) as YAML.
    Crds,
    /// Copy this binary and restic into DIR (init container of database and backup pods).
    CopyBinaries {
        /// Target directory, shared with the PostgreSQL container.
        dir: PathBuf,
        /// restic binary to copy along.
        #[arg(long, default_value = binaries::DEFAULT_RESTIC)]
        restic: PathBuf,
    },
}

#[derive(clap::Args)]
struct RenderArgs {
    /// Postgres manifest file (multi-document YAML allowed; `-` reads standard input). Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Namespace for manifests that do not set metadata.namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    output: OutputFormat,
    /// Image of the operator (copied into database and backup pods).
    #[arg(long, env = "OPERATOR_IMAGE", default_value = DEFAULT_OPERATOR_IMAGE)]
    operator_image: String,
    /// Repository of the PostgreSQL images; the tag is the major version.
    #[arg(long, env = "POSTGRES_IMAGE_REPOSITORY", default_value = DEFAULT_POSTGRES_IMAGE_REPOSITORY)]
    postgres_image_repository: String,
    /// Storage class for clusters that set none (empty: the cluster default).
    #[arg(long, env = "DEFAULT_STORAGE_CLASS", default_value = "")]
    default_storage_class: String,
    /// Namespace of the operator (allowed through the NetworkPolicy).
    #[arg(long, env = "OPERATOR_NAMESPACE", default_value = DEFAULT_OPERATOR_NAMESPACE)]
    operator_namespace: String,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Render(args) => run_render(args),
        Command::Crds => match crdgen::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("cannot serialize the CRDs: {e}")),
        },
        Command::CopyBinaries { dir, restic } => match binaries::copy_binaries(&dir, &restic) {
            Ok(copied) => {
                for path in copied {
                    println!("installed {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
    }
}

fn run_render(args: RenderArgs) -> ExitCode {
    let mut inputs = Vec::new();
    for file in &args.files {
        let text = if file == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map(|_| text)
        } else {
            std::fs::read_to_string(file)
        };
        match text {
            Ok(text) => inputs.push((file.clone(), text)),
            Err(e) => return fail(&format!("{file}: cannot read: {e}")),
        }
    }
    let settings = OperatorSettings {
        operator_image: args.operator_image,
        postgres_image_repository: args.postgres_image_repository,
        default_storage_class: Some(args.default_storage_class).filter(|c| !c.is_empty()),
        operator_namespace: args.operator_namespace,
    };
    let rendered =
        match render::render_inputs(&inputs, &args.namespace, &settings, &mut RandomPasswords) {
            Ok(rendered) => rendered,
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return ExitCode::FAILURE;
            }
        };
    match render::format_objects(&rendered, args.output) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
