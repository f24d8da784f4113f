//! Composition without arity limits: large tuples of inputs, struct inputs made of handles,
//! steps without input, constants, `when` blocks returning many handles, and inference.

use gorgon_workflows::{
    App, Handle, Inputs, Services, Step, StepContext, StepResponse, StepResult, Workflow,
};
use serde::{Deserialize, Serialize};

fn app() -> App {
    App::new(Services::new())
}

#[tokio::test]
async fn a_step_takes_six_handles_and_a_transform_seven() -> anyhow::Result<()> {
    type Six = (u32, u32, u32, u32, u32, u32);
    async fn sum(input: Six, _: StepContext) -> StepResult<u32> {
        let (a, b, c, d, e, f) = input;
        Ok(StepResponse::new(a + b + c + d + e + f))
    }
    async fn add(n: u32) -> StepResult<u32> {
        Ok(StepResponse::new(n + 1))
    }
    let sum = Step::new("sum", sum);
    let add = Step::new("add", add);
    let wf = Workflow::define("wide", |b, n| {
        let h: Vec<Handle<u32>> = (0..6)
            .map(|i| b.step(&add.named(format!("add-{i}")), n))
            .collect();
        let total = b.step(&sum, (h[0], h[1], h[2], h[3], h[4], h[5]));
        b.transform(
            (total, h[0], h[1], h[2], h[3], h[4], h[5]),
            |(total, a, b, c, d, e, f)| total * 10 + a + b + c + d + e + f,
        )
    })?;
    let app = app();
    app.register(&wf)?;
    // add gives n + 1 = 2 six times: the sum is 12; then 120 + 12.
    assert_eq!(app.run(&wf, 1).await?, 132);
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Inputs)]
struct ShipInput {
    order: u32,
    address: String,
    express: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, Inputs)]
struct Wide {
    f0: u8,
    f1: u8,
    f2: u8,
    f3: u8,
    f4: u8,
    f5: u8,
    f6: u8,
    f7: u8,
    f8: u8,
    f9: u8,
    f10: u8,
    f11: u8,
    f12: u8,
    f13: u8,
}

#[tokio::test]
async fn a_struct_of_handles_feeds_a_step_taking_the_struct() -> anyhow::Result<()> {
    async fn ship(input: ShipInput) -> StepResult<String> {
        let speed = if input.express { "express" } else { "standard" };
        Ok(StepResponse::new(format!(
            "{} to {} ({speed})",
            input.order, input.address
        )))
    }
    async fn count(input: Wide) -> StepResult<u32> {
        let fields = [
            input.f0, input.f1, input.f2, input.f3, input.f4, input.f5, input.f6, input.f7,
            input.f8, input.f9, input.f10, input.f11, input.f12, input.f13,
        ];
        Ok(StepResponse::new(
            fields.iter().map(|&f| u32::from(f)).sum(),
        ))
    }
    let ship = Step::new("ship", ship);
    let count = Step::new("count", count);
    let wf = Workflow::define("ship", |b, order: Handle<u32>| {
        let address = b.constant("1 Main St".to_string());
        let express = b.transform(order, |order: u32| order > 100);
        b.step(
            &ship,
            ShipInputHandles {
                order,
                address,
                express,
            },
        )
    })?;
    let wide = Workflow::define("wide-struct", |b, n: Handle<u8>| {
        b.step(
            &count,
            WideHandles {
                f0: n,
                f1: n,
                f2: n,
                f3: n,
                f4: n,
                f5: n,
                f6: n,
                f7: n,
                f8: n,
                f9: n,
                f10: n,
                f11: n,
                f12: n,
                f13: n,
            },
        )
    })?;
    let app = app();
    app.register(&wf)?;
    app.register(&wide)?;
    assert_eq!(app.run(&wf, 7).await?, "7 to 1 Main St (standard)");
    assert_eq!(app.run(&wf, 700).await?, "700 to 1 Main St (express)");
    assert_eq!(app.run(&wide, 2).await?, 28);
    Ok(())
}

#[tokio::test]
async fn a_step_without_input_and_a_when_returning_five_handles() -> anyhow::Result<()> {
    async fn now(_: ()) -> StepResult<u64> {
        Ok(StepResponse::new(42))
    }
    async fn twice(n: u64) -> StepResult<u64> {
        Ok(StepResponse::new(n * 2))
    }
    let now = Step::new("now", now);
    let twice = Step::new("twice", twice);
    let wf = Workflow::define("branchy", |b, big: Handle<bool>| {
        let stamp = b.step(&now, ());
        let (a, c, d, e, f) = b.when(
            "big",
            big,
            |big| *big,
            |b| {
                let a = b.step(&twice.named("t1"), stamp);
                let c = b.step(&twice.named("t2"), a);
                let d = b.step(&twice.named("t3"), c);
                let e = b.step(&twice.named("t4"), d);
                let f = b.step(&twice.named("t5"), e);
                (a, c, d, e, f)
            },
        );
        b.transform((stamp, a, c, d, e, f), |(stamp, a, c, d, e, f)| {
            (stamp, [a, c, d, e, f])
        })
    })?;
    let app = app();
    app.register(&wf)?;
    let (stamp, taken) = app.run(&wf, true).await?;
    assert_eq!(stamp, 42);
    assert_eq!(
        taken,
        [Some(84), Some(168), Some(336), Some(672), Some(1344)]
    );
    let (_, skipped) = app.run(&wf, false).await?;
    assert_eq!(skipped, [None; 5]);
    Ok(())
}

#[tokio::test]
async fn the_input_type_is_inferred_from_an_annotated_transform() -> anyhow::Result<()> {
    #[derive(Clone, Serialize, Deserialize)]
    struct Order {
        id: u32,
        lines: Vec<u32>,
    }
    // The first use is a transform: naming the type in its closure is enough, the composer's
    // input is inferred from it.
    let wf = Workflow::define("inferred", |b, order| {
        b.transform(order, |order: Order| {
            order.id + order.lines.iter().sum::<u32>()
        })
    })?;
    let app = app();
    app.register(&wf)?;
    let order = Order {
        id: 1,
        lines: vec![2, 3],
    };
    assert_eq!(app.run(&wf, order).await?, 6);
    Ok(())
}
