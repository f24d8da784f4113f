//! `cargo run --example create_order`: see [`gorgon_examples::order`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gorgon_examples::order::demo().await
}
