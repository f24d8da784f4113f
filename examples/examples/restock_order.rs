//! `cargo run --example restock_order`: see [`gorgon_examples::restock`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gorgon_examples::restock::demo().await
}
