//! The `gorgon` command with no application modules of its own: `gorgon db migrate`, then
//! `gorgon start`, runs the framework on SQLite with nothing configured. An application with
//! modules has its own `main` calling `gorgon_cli::run`.

use gorgon_framework::AppBuilder;

fn main() -> std::process::ExitCode {
    gorgon_cli::run(|_| Ok(AppBuilder::new()))
}
