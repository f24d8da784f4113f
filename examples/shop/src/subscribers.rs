//! The milestone subscriber: every 1,000 points a customer crosses earns one email. The email's
//! idempotency key is the customer and the milestone, so an event delivered twice (or two
//! events racing across the same milestone) sends it once.

use gorgon_framework::{BoxError, Event, Subscriber};
use gorgon_notification::{Channel, IdempotencyKey, Notifier};
use gorgon_workflows::Service;
use serde_json::json;

use crate::loyalty::{POINTS_ADDED, PointsAdded};

/// Points between two milestones.
pub const MILESTONE: i64 = 1000;

/// The notification template the email uses.
pub const TEMPLATE: &str = "loyalty-milestone";

async fn milestone(event: Event<PointsAdded>, notifier: Service<Notifier>) -> Result<(), BoxError> {
    let PointsAdded {
        customer_id,
        email,
        added,
        total,
    } = event.data;
    let before = total - added;
    let email_channel = Channel::new("email")?;
    for reached in (before / MILESTONE + 1)..=(total / MILESTONE) {
        let points = reached * MILESTONE;
        let key = IdempotencyKey::new(format!("loyalty-milestone:{customer_id}:{points}"))?;
        notifier
            .send(
                &email,
                &email_channel,
                TEMPLATE,
                &json!({ "points": points, "customer_id": customer_id }),
                &key,
            )
            .await?;
        tracing::info!(%customer_id, points, "milestone email sent");
    }
    Ok(())
}

/// The `loyalty-milestone` subscriber on `loyalty.points_added`.
pub fn milestone_subscriber() -> Subscriber {
    Subscriber::new("loyalty-milestone", POINTS_ADDED, milestone)
}
