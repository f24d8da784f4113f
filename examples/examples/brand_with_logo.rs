//! `cargo run --example brand_with_logo`: see [`gorgon_examples::brand`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gorgon_examples::brand::demo().await
}
