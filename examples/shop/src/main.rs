//! The shop application's command: `shop db migrate`, `shop exec seed`, `shop start`, and the
//! rest of `gorgon_cli`'s commands.

fn main() -> std::process::ExitCode {
    gorgon_cli::run(gorgon_example_shop::app)
}
