//! A checkout flow run twice on the in-memory engine: once to the end, once with a declined
//! payment, which rolls back what was done. `cargo run -p gorgon-orchestration --example checkout`

use gorgon_orchestration::{
    Data, Engine, Flow, FlowDefinition, HandlerType, RunOptions, StepCall, StepOutcome,
    WorkflowOptions,
};
use serde_json::json;

const FLOW: &str = r#"{
  "next": {"action": "reserve-inventory",
    "next": [
      {"action": "charge-payment", "maxRetries": 2},
      {"action": "create-shipment"}
    ]}
}"#;

#[tokio::main]
async fn main() -> Result<(), gorgon_orchestration::Error> {
    let engine = Engine::in_memory();
    let flow = Flow::compile(
        "checkout",
        FlowDefinition::from_json(FLOW)?,
        WorkflowOptions::default(),
    )?;
    engine.register(flow, |call: StepCall| async move {
        let card = call
            .payload()
            .to_json()
            .ok()
            .and_then(|p| p["card"].as_str().map(str::to_string));
        println!(
            "  {:<10} {:<17} attempt {} ({})",
            call.handler_type(),
            call.action(),
            call.attempt(),
            call.idempotency_key()
        );
        match (call.action(), call.handler_type()) {
            ("charge-payment", HandlerType::Invoke) if card.as_deref() == Some("declined") => {
                StepOutcome::fail("the card was declined")
            }
            (action, _) => StepOutcome::ok(json!({ "done": action })),
        }
    })?;

    for card in ["valid", "declined"] {
        println!("checkout with a {card} card:");
        let options = RunOptions {
            transaction_id: Some(format!("order-{card}")),
            payload: Some(Data::json(json!({ "card": card }))),
            ..Default::default()
        };
        let run = engine.run("checkout", options).await?;
        println!("  => {}", run.state);
        for error in &run.errors {
            println!(
                "     error in {} {}: {}",
                error.handler_type, error.action, error.error
            );
        }
    }
    Ok(())
}
