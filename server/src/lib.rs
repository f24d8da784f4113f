//! The command line of a Gorgon application: an application's `main` builds its
//! [`AppBuilder`] and hands it to [`run`]; the `gorgon` binary does so with an empty one.
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     gorgon_cli::run(|config: &Config| {
//!         let mut app = AppBuilder::new();
//!         app.plugin(BrandPlugin).module(SupplierModule).workflow(&restock()?);
//!         Ok(app)
//!     })
//! }
//! ```
//!
//! | command | what it does |
//! |---|---|
//! | `start [--mode server\|worker\|shared] [--port N] [--migrate]` | builds the application, checks it, starts the subscribers and jobs (worker, shared) and serves HTTP (server, shared) until SIGTERM or Ctrl-C, then shuts down gracefully |
//! | `db migrate` | applies every pending migration and creates the link tables, with progress |
//! | `db rollback MODULE` | reverts the module's last batch |
//! | `db status` | every migration and link table, applied or not |
//! | `exec SCRIPT [ARGS…]` | runs a registered script with the application's services |
//! | `workflows list [--workflow W] [--state S] [--limit N]` | the stored executions, newest first |
//! | `workflows show ID [--workflow W]` | one execution, step by step (JSON) |
//! | `doctor` | every boot check, without serving |
//! | `user create -e EMAIL -p PASSWORD` | an admin user who logs in with this email and password |
//! | `user invite -e EMAIL` | an invite to become an admin user; prints its token |
//!
//! Every command takes `--profile dev|prod` (or `GORGON_PROFILE`) and `--root DIR` (where
//! `gorgon.toml` is read and relative paths start).

mod http;
mod providers;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gorgon_framework::{AppBuilder, BoxError, Config, Loader, MigrationLine, Profile, WorkerMode};
use gorgon_orchestration::{TransactionFilter, TransactionState};

pub use providers::register as register_providers;

/// How long a shutdown waits for running work before it stops anyway.
const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "gorgon",
    version,
    about = "Run and manage a Gorgon application"
)]
struct Cli {
    /// The profile: dev (SQLite, in-process providers) or prod (PostgreSQL, Redis).
    #[arg(long, global = true, env = "GORGON_PROFILE")]
    profile: Option<String>,
    /// The folder holding gorgon.toml (default: the current folder).
    #[arg(long, global = true)]
    root: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Starts the application.
    Start {
        /// What this instance runs (default: project.worker_mode).
        #[arg(long, value_parser = ["server", "worker", "shared"])]
        mode: Option<String>,
        /// The HTTP port (default: project.http.port).
        #[arg(long)]
        port: Option<u16>,
        /// Applies pending migrations first (what `db migrate` does).
        #[arg(long)]
        migrate: bool,
    },
    /// Database migrations.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Runs a script registered by the application.
    Exec {
        /// The script's name.
        script: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// Workflow executions.
    Workflows {
        #[command(subcommand)]
        command: WorkflowsCommand,
    },
    /// Runs every boot check without serving.
    Doctor,
    /// Admin users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Creates an admin user who logs in with this email and password.
    Create {
        /// The email.
        #[arg(short, long)]
        email: String,
        /// The password.
        #[arg(short, long)]
        password: String,
    },
    /// Invites someone to become an admin user; prints the invite's token.
    Invite {
        /// The email.
        #[arg(short, long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Applies pending migrations and creates link tables.
    Migrate,
    /// Reverts a module's last batch of migrations.
    Rollback {
        /// The module.
        module: String,
    },
    /// Shows every migration and link table.
    Status,
}

#[derive(Debug, Subcommand)]
enum WorkflowsCommand {
    /// Lists stored executions, newest first.
    List {
        /// Only this workflow's.
        #[arg(long)]
        workflow: Option<String>,
        /// Only in this state (done, failed, reverted, invoking…).
        #[arg(long)]
        state: Option<String>,
        /// At most this many (default 20).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Shows one execution.
    Show {
        /// The transaction id.
        id: String,
        /// Its workflow (found by listing when left out).
        #[arg(long)]
        workflow: Option<String>,
    },
}

/// Parses the process's arguments, builds the application with `builder` and runs the command.
/// Returns the process's exit code (1 on any error, printed with its help lines).
pub fn run<F>(builder: F) -> ExitCode
where
    F: FnOnce(&Config) -> Result<AppBuilder, BoxError>,
{
    run_from(std::env::args_os(), builder)
}

/// [`run`] with these arguments (the first is the program's name).
pub fn run_from<I, T, F>(args: I, builder: F) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
    F: FnOnce(&Config) -> Result<AppBuilder, BoxError>,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli, builder)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Config, BoxError> {
    let mut loader = Loader::new();
    if let Some(root) = &cli.root {
        loader = loader.root(root);
    }
    if let Some(profile) = &cli.profile {
        loader = loader.profile(Profile::parse(profile)?);
    }
    Ok(loader.load()?)
}

async fn dispatch<F>(cli: Cli, builder: F) -> Result<(), BoxError>
where
    F: FnOnce(&Config) -> Result<AppBuilder, BoxError>,
{
    let mut config = load(&cli)?;
    let mut builder = builder(&config)?;
    // The core API, then the dashboard, ahead of every plugin: any of them may override.
    builder.plugin_first(gorgon_admin_ui::AdminUiPlugin);
    builder.plugin_first(gorgon_api::CorePlugin);
    providers::register(builder.providers());
    match cli.command {
        Command::Db { command } => {
            let prepared = builder.prepare(config).await?;
            let migrations = prepared.migrations();
            match command {
                DbCommand::Migrate => {
                    let bar = indicatif::ProgressBar::new_spinner();
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar.set_message("migrating");
                    let started = std::time::Instant::now();
                    let done = migrations
                        .migrate(|line| {
                            bar.println(format!("  applied {line}"));
                            bar.set_message(line.to_owned());
                        })
                        .await;
                    bar.finish_and_clear();
                    let done = done?;
                    println!(
                        "{} applied in {:.1?}{}",
                        plural(
                            done.len(),
                            "migration or link table",
                            "migrations and link tables"
                        ),
                        started.elapsed(),
                        if done.is_empty() {
                            " (everything was up to date)"
                        } else {
                            ""
                        }
                    );
                }
                DbCommand::Rollback { module } => {
                    let done = migrations
                        .rollback(&module, |line| println!("  {line}"))
                        .await?;
                    println!("{} reverted", plural(done.len(), "migration", "migrations"));
                }
                DbCommand::Status => {
                    for line in migrations.status().await? {
                        match line {
                            MigrationLine::Module(status) => {
                                let state = match status.state {
                                    gorgon_data::MigrationState::Applied { batch, at } => {
                                        format!("applied (batch {batch}, {at})")
                                    }
                                    gorgon_data::MigrationState::Changed { batch } => {
                                        format!("CHANGED since applied (batch {batch})")
                                    }
                                    gorgon_data::MigrationState::Pending => "pending".to_owned(),
                                    gorgon_data::MigrationState::Unknown { batch } => format!(
                                        "applied (batch {batch}) but no longer in the module"
                                    ),
                                };
                                println!("{:<12} {:<40} {state}", status.module, status.name);
                            }
                            MigrationLine::Link {
                                table,
                                created,
                                changed,
                            } => {
                                let state = match (created, changed) {
                                    (false, _) => "pending",
                                    (true, false) => "created",
                                    (true, true) => "created, definition CHANGED since",
                                };
                                println!("{:<12} {:<40} {state}", "link", table);
                            }
                        }
                    }
                }
            }
        }
        Command::Doctor => {
            let app = builder.build(config).await?;
            println!(
                "ok: {} modules ({}), {} subscribers, {} jobs, {} scripts, {} entities for Query",
                app.modules().len(),
                app.modules().join(", "),
                app.subscribers().len(),
                app.jobs().len(),
                app.scripts().len(),
                app.query().entities().count(),
            );
        }
        Command::User { command } => {
            let app = builder.build(config).await?;
            let users = app
                .service::<gorgon_api::user::UserService>()
                .ok_or("the user module is disabled")?;
            match command {
                UserCommand::Create { email, password } => {
                    let auth = app
                        .service::<gorgon_api::auth_module::AuthService>()
                        .ok_or("the auth module is disabled")?;
                    // The identity and the user together, or neither.
                    let user = app
                        .db()
                        .transaction(|| async {
                            let identity = auth.register(&email, &password).await?;
                            let user = users
                                .create_user(gorgon_api::user::NewUser {
                                    email: email.clone(),
                                    ..Default::default()
                                })
                                .await?;
                            auth.link_actor(&identity.id, "user", &user.id).await?;
                            Ok::<_, BoxError>(user)
                        })
                        .await?;
                    println!("created user {} ({email})", user.id);
                }
                UserCommand::Invite { email } => {
                    let invite = users.invite(&email).await?;
                    println!(
                        "invited {email}; token {} (valid until {})",
                        invite.token, invite.expires_at
                    );
                }
            }
        }
        Command::Exec { script, args } => {
            let app = builder.build(config).await?;
            app.run_script(&script, args).await?;
        }
        Command::Workflows { command } => {
            let app = builder.build(config).await?;
            let engine = app.workflows().engine();
            match command {
                WorkflowsCommand::List {
                    workflow,
                    state,
                    limit,
                } => {
                    let mut filter = TransactionFilter {
                        limit,
                        ..TransactionFilter::default()
                    };
                    filter.workflow = workflow.map(Into::into);
                    if let Some(state) = state {
                        filter.states = vec![parse_state(&state)?];
                    }
                    let page = engine.list(&filter).await?;
                    println!(
                        "{:<32} {:<40} {:<20} created",
                        "workflow", "transaction", "state"
                    );
                    for item in page.items {
                        let created = chrono::DateTime::from_timestamp_millis(
                            i64::try_from(item.created_at).unwrap_or(0),
                        )
                        .map(|at| at.to_rfc3339())
                        .unwrap_or_default();
                        println!(
                            "{:<32} {:<40} {:<20} {created}",
                            item.key.workflow,
                            item.key.id,
                            format!("{:?}", item.state)
                        );
                    }
                }
                WorkflowsCommand::Show { id, workflow } => {
                    let workflow = match workflow {
                        Some(workflow) => workflow,
                        None => find_workflow(engine, &id).await?,
                    };
                    let detail = engine.detail(&workflow, &id).await?;
                    println!("{}", serde_json::to_string_pretty(&detail)?);
                }
            }
        }
        Command::Start {
            mode,
            port,
            migrate,
        } => {
            if let Some(port) = port {
                config.project.http.port = port;
            }
            let mode = match mode.as_deref() {
                Some("server") => WorkerMode::Server,
                Some("worker") => WorkerMode::Worker,
                Some("shared") => WorkerMode::Shared,
                _ => config.project.worker_mode,
            };
            // The boot checks see the mode this instance runs in.
            config.project.worker_mode = mode;
            let prepared = builder.prepare(config).await?;
            if migrate {
                let done = prepared
                    .migrations()
                    .migrate(|line| tracing::info!("applied {line}"))
                    .await?;
                tracing::info!(
                    "{} applied",
                    plural(
                        done.len(),
                        "migration or link table",
                        "migrations and link tables"
                    )
                );
            }
            let app = prepared.build().await?;
            let running = app.start(mode).await?;
            let outcome = if mode.serves_http() {
                http::serve(&app, shutdown_signal()).await
            } else {
                tracing::info!("worker started; no HTTP in worker mode");
                shutdown_signal().await;
                Ok(())
            };
            running.shutdown(GRACE).await;
            outcome?;
        }
    }
    Ok(())
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn parse_state(state: &str) -> Result<TransactionState, BoxError> {
    serde_json::from_value(serde_json::Value::String(state.to_owned()))
        .map_err(|_| format!("unknown state `{state}`; use done, failed, reverted, invoking, compensating, waiting_to_compensate or not_started").into())
}

async fn find_workflow(
    engine: &gorgon_orchestration::Engine,
    id: &str,
) -> Result<String, BoxError> {
    let mut filter = TransactionFilter {
        limit: 500,
        ..TransactionFilter::default()
    };
    loop {
        let page = engine.list(&filter).await?;
        if let Some(item) = page.items.iter().find(|item| &*item.key.id == id) {
            return Ok(item.key.workflow.to_string());
        }
        match page.next {
            Some(next) => filter.after = Some(next),
            None => {
                return Err(format!(
                    "no stored execution has the transaction id `{id}`; give --workflow"
                )
                .into());
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
