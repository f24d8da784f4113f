//! One worker of the crash test: connects to the shared store, registers the test's
//! workflows and serves (renews its leases, takes over due transactions) until it is killed.

use clap::Parser;
use gorgon_crash_tests::{Backend, CallLog, connect_store, engine};

/// A crash-test worker.
#[derive(Parser)]
struct Args {
    /// The shared store.
    #[arg(long, value_enum)]
    store: Backend,
    /// The namespace: PostgreSQL schema or Redis key prefix.
    #[arg(long)]
    namespace: String,
    /// This incarnation's worker id.
    #[arg(long)]
    worker: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let store = connect_store(args.store, &args.namespace).await?;
    let calls = CallLog::connect(args.store, &args.namespace).await?;
    let engine = engine(store, &args.worker, calls)?;
    println!("ready");
    engine.serve(std::future::pending()).await;
    Ok(())
}
