//! `create_order`: validate the inventory, create the order, reserve the inventory and take the
//! payment in parallel, send the confirmation only when the payment was captured, allocate the
//! order to a warehouse.
//!
//! ```text
//!  validate-inventory ─► create-order ─┬► reserve-inventory ─┬► when payment-captured:  ─► allocate-warehouse
//!                         ↩ cancel it  │   ↩ release it      │    send-confirmation        ↩ deallocate
//!                                      └► process-payment ───┘
//!                                          ↩ refund it
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use gorgon_workflows::{
    App, Error, Services, Step, StepContext, StepFailure, StepResponse, StepResult,
    TransactionState, Workflow,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{compensated, ran, run_as};

/// The workflow's name.
pub const WORKFLOW: &str = "create-order";

/// A customer's order: who, how they pay, what.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderInput {
    /// Where the confirmation goes.
    pub email: String,
    /// The payment method: a card token, or `bank-transfer` (paid later).
    pub payment_method: String,
    /// The products.
    pub lines: Vec<Line>,
}

/// A product, a quantity and a unit price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product's SKU.
    pub sku: String,
    /// How many units.
    pub quantity: u32,
    /// The price of one unit, in cents.
    pub unit_price: u64,
}

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Created, being processed.
    Pending,
    /// Allocated to a warehouse: will ship.
    Placed,
    /// Given up: nothing will ship.
    Cancelled,
}

/// An order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Its id.
    pub id: u64,
    /// The customer's email.
    pub email: String,
    /// The products.
    pub lines: Vec<Line>,
    /// The total, in cents.
    pub total: u64,
    /// Where it stands.
    pub status: OrderStatus,
    /// The warehouse shipping it, once allocated.
    pub warehouse: Option<String>,
}

/// The order module's service, in memory.
#[derive(Debug, Default)]
pub struct Orders {
    state: Mutex<(u64, BTreeMap<u64, Order>)>,
}

impl Orders {
    /// Creates a pending order.
    pub fn create(&self, input: &OrderInput) -> Order {
        let mut state = self.state.lock();
        state.0 += 1;
        let order = Order {
            id: state.0,
            email: input.email.clone(),
            lines: input.lines.clone(),
            total: input
                .lines
                .iter()
                .map(|l| u64::from(l.quantity) * l.unit_price)
                .sum(),
            status: OrderStatus::Pending,
            warehouse: None,
        };
        state.1.insert(order.id, order.clone());
        order
    }

    /// Changes an order's status and warehouse; `None` when it does not exist.
    pub fn update(&self, id: u64, status: OrderStatus, warehouse: Option<String>) -> Option<Order> {
        let mut state = self.state.lock();
        let order = state.1.get_mut(&id)?;
        order.status = status;
        order.warehouse = warehouse;
        Some(order.clone())
    }

    /// An order.
    pub fn get(&self, id: u64) -> Option<Order> {
        self.state.lock().1.get(&id).cloned()
    }

    /// The orders, by id.
    pub fn all(&self) -> Vec<Order> {
        self.state.lock().1.values().cloned().collect()
    }
}

/// Stock of a product: on hand and reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stock {
    /// Units in the warehouses.
    pub on_hand: u32,
    /// Units reserved for orders.
    pub reserved: u32,
}

/// A reservation of stock for an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Its id.
    pub id: u64,
    /// The order it is for.
    pub order_id: u64,
    /// SKU and quantity.
    pub lines: Vec<(String, u32)>,
}

/// The inventory module's service, in memory.
#[derive(Debug, Default)]
pub struct Inventory {
    state: Mutex<InventoryState>,
}

#[derive(Debug, Default)]
struct InventoryState {
    next_id: u64,
    stock: BTreeMap<String, Stock>,
    reservations: BTreeMap<u64, Reservation>,
}

impl Inventory {
    /// Adds stock on hand.
    pub fn with_stock(self, sku: &str, on_hand: u32) -> Self {
        self.state
            .lock()
            .stock
            .entry(sku.to_string())
            .or_default()
            .on_hand += on_hand;
        self
    }

    /// Whether every line is available (on hand, not reserved); the refusal says which is not.
    pub fn check(&self, lines: &[Line]) -> Result<(), String> {
        let state = self.state.lock();
        for line in lines {
            let stock = state.stock.get(&line.sku).copied().unwrap_or_default();
            let available = stock.on_hand.saturating_sub(stock.reserved);
            if line.quantity > available {
                return Err(format!(
                    "{}: {} asked, {available} available",
                    line.sku, line.quantity
                ));
            }
        }
        Ok(())
    }

    /// Reserves the lines of an order (checked again: stock may have moved since).
    pub fn reserve(&self, order: &Order) -> Result<Reservation, String> {
        self.check(&order.lines)?;
        let mut state = self.state.lock();
        state.next_id += 1;
        let reservation = Reservation {
            id: state.next_id,
            order_id: order.id,
            lines: order
                .lines
                .iter()
                .map(|l| (l.sku.clone(), l.quantity))
                .collect(),
        };
        for (sku, quantity) in &reservation.lines {
            state.stock.entry(sku.clone()).or_default().reserved += quantity;
        }
        state
            .reservations
            .insert(reservation.id, reservation.clone());
        Ok(reservation)
    }

    /// Releases a reservation (nothing happens when it does not exist).
    pub fn release(&self, id: u64) {
        let mut state = self.state.lock();
        if let Some(reservation) = state.reservations.remove(&id) {
            for (sku, quantity) in reservation.lines {
                let stock = state.stock.entry(sku).or_default();
                stock.reserved = stock.reserved.saturating_sub(quantity);
            }
        }
    }

    /// The stock of every product.
    pub fn stock(&self) -> BTreeMap<String, Stock> {
        self.state.lock().stock.clone()
    }

    /// The reservations, by id.
    pub fn reservations(&self) -> Vec<Reservation> {
        self.state.lock().reservations.values().cloned().collect()
    }
}

/// Where a payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    /// The money was taken.
    Captured,
    /// Awaiting the customer's transfer.
    AwaitingTransfer,
    /// Given back.
    Refunded,
}

/// A payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Its id.
    pub id: u64,
    /// The order paid.
    pub order_id: u64,
    /// The amount, in cents.
    pub amount: u64,
    /// Where it stands.
    pub status: PaymentStatus,
}

/// The payment provider, in memory: cards are captured at once, except the declined ones;
/// `bank-transfer` waits for the customer's money.
#[derive(Debug, Default)]
pub struct Payments {
    declined: Vec<String>,
    state: Mutex<(u64, BTreeMap<u64, Payment>)>,
}

/// The payment method of a payment made later by bank transfer.
pub const BANK_TRANSFER: &str = "bank-transfer";

impl Payments {
    /// The provider, declining the cards in `declined`.
    pub fn declining(declined: &[&str]) -> Self {
        Payments {
            declined: declined.iter().map(|c| c.to_string()).collect(),
            state: Mutex::default(),
        }
    }

    /// Takes the payment of an order.
    pub async fn pay(&self, order: &Order, method: &str) -> Result<Payment, String> {
        // The provider's round trip.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.declined.iter().any(|c| c == method) {
            return Err(format!("card {method} declined"));
        }
        let mut state = self.state.lock();
        state.0 += 1;
        let payment = Payment {
            id: state.0,
            order_id: order.id,
            amount: order.total,
            status: if method == BANK_TRANSFER {
                PaymentStatus::AwaitingTransfer
            } else {
                PaymentStatus::Captured
            },
        };
        state.1.insert(payment.id, payment.clone());
        Ok(payment)
    }

    /// Refunds (or voids) a payment.
    pub fn refund(&self, id: u64) {
        if let Some(payment) = self.state.lock().1.get_mut(&id) {
            payment.status = PaymentStatus::Refunded;
        }
    }

    /// The payments, by id.
    pub fn all(&self) -> Vec<Payment> {
        self.state.lock().1.values().cloned().collect()
    }
}

/// An email sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// The recipient.
    pub to: String,
    /// The subject.
    pub subject: String,
}

/// The notification service, in memory: it keeps what it sent.
#[derive(Debug, Default)]
pub struct Mailer {
    sent: Mutex<Vec<Email>>,
}

impl Mailer {
    /// Sends an email.
    pub fn send(&self, email: Email) {
        self.sent.lock().push(email);
    }

    /// What was sent, in order.
    pub fn sent(&self) -> Vec<Email> {
        self.sent.lock().clone()
    }
}

/// The warehouses, in memory: orders are allocated to the first one.
#[derive(Debug)]
pub struct Warehouses {
    names: Vec<String>,
    allocations: Mutex<BTreeMap<u64, String>>,
}

impl Warehouses {
    /// Warehouses with these names.
    pub fn new(names: &[&str]) -> Self {
        Warehouses {
            names: names.iter().map(|n| n.to_string()).collect(),
            allocations: Mutex::default(),
        }
    }

    /// Allocates an order to a warehouse.
    pub fn allocate(&self, order_id: u64) -> Option<String> {
        let name = self.names.first()?.clone();
        self.allocations.lock().insert(order_id, name.clone());
        Some(name)
    }

    /// Removes an order's allocation.
    pub fn deallocate(&self, order_id: u64) {
        self.allocations.lock().remove(&order_id);
    }

    /// The allocations: order id to warehouse.
    pub fn allocations(&self) -> BTreeMap<u64, String> {
        self.allocations.lock().clone()
    }
}

/// What the workflow returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The order, allocated.
    pub order: Order,
    /// Its payment.
    pub payment: Payment,
    /// The confirmation, when it was sent.
    pub confirmation: Option<Email>,
}

async fn validate_inventory(input: OrderInput, ctx: StepContext) -> StepResult<()> {
    match ctx.service::<Inventory>()?.check(&input.lines) {
        Ok(()) => {
            ran(&ctx, "all lines in stock");
            Ok(StepResponse::new(()))
        }
        Err(refusal) => {
            ran(&ctx, format!("FAILED: {refusal}"));
            Ok(StepResponse::permanent_failure(refusal))
        }
    }
}

async fn create_order(input: OrderInput, ctx: StepContext) -> StepResult<Order, u64> {
    let order = ctx.service::<Orders>()?.create(&input);
    ran(
        &ctx,
        format!("order #{} pending, total {}", order.id, order.total),
    );
    Ok(StepResponse::new(order.clone()).with_compensation(order.id))
}

async fn cancel_order(id: Option<u64>, ctx: StepContext) -> Result<(), StepFailure> {
    if let Some(id) = id {
        ctx.service::<Orders>()?
            .update(id, OrderStatus::Cancelled, None);
        compensated(&ctx, format!("order #{id} cancelled"));
    }
    Ok(())
}

async fn reserve_inventory(order: Order, ctx: StepContext) -> StepResult<Reservation, u64> {
    match ctx.service::<Inventory>()?.reserve(&order) {
        Ok(reservation) => {
            ran(
                &ctx,
                format!("reservation #{} {:?}", reservation.id, reservation.lines),
            );
            let id = reservation.id;
            Ok(StepResponse::new(reservation).with_compensation(id))
        }
        Err(refusal) => {
            ran(&ctx, format!("FAILED: {refusal}"));
            Ok(StepResponse::permanent_failure(refusal))
        }
    }
}

async fn release_inventory(id: Option<u64>, ctx: StepContext) -> Result<(), StepFailure> {
    if let Some(id) = id {
        ctx.service::<Inventory>()?.release(id);
        compensated(&ctx, format!("reservation #{id} released"));
    }
    Ok(())
}

async fn process_payment(
    (order, input): (Order, OrderInput),
    ctx: StepContext,
) -> StepResult<Payment, u64> {
    match ctx
        .service::<Payments>()?
        .pay(&order, &input.payment_method)
        .await
    {
        Ok(payment) => {
            ran(
                &ctx,
                format!(
                    "payment #{} of {} {:?}",
                    payment.id, payment.amount, payment.status
                ),
            );
            let id = payment.id;
            Ok(StepResponse::new(payment).with_compensation(id))
        }
        Err(refusal) => {
            ran(&ctx, format!("FAILED: {refusal}"));
            Ok(StepResponse::permanent_failure(refusal))
        }
    }
}

async fn refund_payment(id: Option<u64>, ctx: StepContext) -> Result<(), StepFailure> {
    match id {
        Some(id) => {
            ctx.service::<Payments>()?.refund(id);
            compensated(&ctx, format!("payment #{id} refunded"));
        }
        None => compensated(&ctx, "no payment was taken: nothing to refund"),
    }
    Ok(())
}

async fn send_confirmation(
    (order, payment): (Order, Payment),
    ctx: StepContext,
) -> StepResult<Email> {
    let email = Email {
        to: order.email.clone(),
        subject: format!("Order #{} confirmed: {} paid", order.id, payment.amount),
    };
    ctx.service::<Mailer>()?.send(email.clone());
    ran(&ctx, format!("sent {:?} to {}", email.subject, email.to));
    Ok(StepResponse::new(email))
}

async fn allocate(
    (order, _reservation): (Order, Reservation),
    ctx: StepContext,
) -> StepResult<Order, u64> {
    let warehouse = ctx
        .service::<Warehouses>()?
        .allocate(order.id)
        .ok_or_else(|| StepFailure::permanent("no warehouse"))?;
    let order = ctx
        .service::<Orders>()?
        .update(order.id, OrderStatus::Placed, Some(warehouse.clone()))
        .ok_or_else(|| StepFailure::permanent(format!("order #{} is gone", order.id)))?;
    ran(&ctx, format!("order #{} placed at {warehouse}", order.id));
    let id = order.id;
    Ok(StepResponse::new(order).with_compensation(id))
}

async fn deallocate(id: Option<u64>, ctx: StepContext) -> Result<(), StepFailure> {
    if let Some(id) = id {
        ctx.service::<Warehouses>()?.deallocate(id);
        ctx.service::<Orders>()?
            .update(id, OrderStatus::Pending, None);
        compensated(&ctx, format!("order #{id} deallocated"));
    }
    Ok(())
}

/// The create-order workflow: `OrderInput` in, the placed order out.
pub fn workflow() -> Result<Workflow<OrderInput, Placed>, Error> {
    let validate = Step::new("validate-inventory", validate_inventory).requires::<Inventory>();
    let create = Step::new("create-order", create_order)
        .compensate(cancel_order)
        .requires::<Orders>();
    let reserve = Step::new("reserve-inventory", reserve_inventory)
        .compensate(release_inventory)
        .requires::<Inventory>();
    let pay = Step::new("process-payment", process_payment)
        .compensate(refund_payment)
        .requires::<Payments>();
    let confirm = Step::new("send-confirmation", send_confirmation).requires::<Mailer>();
    let allocate = Step::new("allocate-warehouse", allocate)
        .compensate(deallocate)
        .requires::<Warehouses>()
        .requires::<Orders>();
    Workflow::define(WORKFLOW, |b, input| {
        b.step(&validate, input);
        let order = b.step(&create, input);
        let (reservation, payment) =
            b.parallel(|b| (b.step(&reserve, order), b.step(&pay, (order, input))));
        let confirmation = b.when(
            "payment-captured",
            payment,
            |payment: &Payment| payment.status == PaymentStatus::Captured,
            |b| b.step(&confirm, (order, payment)),
        );
        let order = b.step(&allocate, (order, reservation));
        b.transform(
            (order, payment, confirmation),
            |(order, payment, confirmation)| Placed {
                order,
                payment,
                confirmation,
            },
        )
    })
}

/// The example's services.
pub struct OrderServices {
    /// The orders.
    pub orders: Arc<Orders>,
    /// The stock and reservations.
    pub inventory: Arc<Inventory>,
    /// The payments; card `tok_declined` is declined.
    pub payments: Arc<Payments>,
    /// The emails sent.
    pub mailer: Arc<Mailer>,
    /// The warehouses.
    pub warehouses: Arc<Warehouses>,
}

impl Default for OrderServices {
    fn default() -> Self {
        OrderServices {
            orders: Arc::default(),
            inventory: Arc::new(
                Inventory::default()
                    .with_stock("tee", 10)
                    .with_stock("mug", 5),
            ),
            payments: Arc::new(Payments::declining(&["tok_declined"])),
            mailer: Arc::default(),
            warehouses: Arc::new(Warehouses::new(&["berlin"])),
        }
    }
}

impl OrderServices {
    /// The registry the steps resolve them from, by type.
    pub fn registry(&self) -> Services {
        Services::new()
            .with(self.orders.clone())
            .with(self.inventory.clone())
            .with(self.payments.clone())
            .with(self.mailer.clone())
            .with(self.warehouses.clone())
    }

    fn print(&self) {
        println!("  state: orders:");
        for o in self.orders.all() {
            let at = o.warehouse.as_deref().unwrap_or("-");
            println!(
                "           #{} {} {:?} total {} warehouse {at}",
                o.id, o.email, o.status, o.total
            );
        }
        let stock: Vec<String> = (self.inventory.stock().iter())
            .map(|(sku, s)| format!("{sku} {} on hand, {} reserved", s.on_hand, s.reserved))
            .collect();
        println!("         stock: {}", stock.join("; "));
        let reservations: Vec<String> = (self.inventory.reservations().iter())
            .map(|r| format!("#{} for order #{}", r.id, r.order_id))
            .collect();
        println!("         reservations: {}", reservations.join(", "));
        let payments: Vec<String> = (self.payments.all().iter())
            .map(|p| format!("#{} order #{} {:?}", p.id, p.order_id, p.status))
            .collect();
        println!("         payments: {}", payments.join(", "));
        let sent: Vec<String> = (self.mailer.sent().iter())
            .map(|e| format!("{:?} to {}", e.subject, e.to))
            .collect();
        println!("         emails sent: {}", sent.join(", "));
    }
}

fn print_placed(placed: &Placed) {
    println!(
        "  result: order #{} {:?} at {}, payment {:?}, confirmation {}",
        placed.order.id,
        placed.order.status,
        placed.order.warehouse.as_deref().unwrap_or("-"),
        placed.payment.status,
        if placed.confirmation.is_some() {
            "sent"
        } else {
            "not sent"
        },
    );
}

/// An order of 2 tees and 1 mug, paid with `payment_method`.
pub fn input(email: &str, payment_method: &str) -> OrderInput {
    OrderInput {
        email: email.into(),
        payment_method: payment_method.into(),
        lines: vec![
            Line {
                sku: "tee".into(),
                quantity: 2,
                unit_price: 1500,
            },
            Line {
                sku: "mug".into(),
                quantity: 1,
                unit_price: 900,
            },
        ],
    }
}

/// Runs the example: an order paid by card (confirmed), one paid by bank transfer (placed, no
/// confirmation yet: the `when` is not taken), one whose card is declined (reservation released,
/// order cancelled, no confirmation). Fails if an end state is wrong.
pub async fn demo() -> anyhow::Result<()> {
    let services = OrderServices::default();
    let app = App::new(services.registry());
    let workflow = workflow()?;
    app.register(&workflow)?;

    println!("== run 1: ann orders 2 tees and a mug, pays by card");
    let placed = run_as(
        &app,
        &workflow,
        "order-ann",
        input("ann@example.com", "tok_visa"),
    )
    .await?;
    print_placed(&placed);
    services.print();
    ensure!(placed.order.status == OrderStatus::Placed);
    ensure!(placed.order.warehouse.as_deref() == Some("berlin"));
    ensure!(placed.payment.status == PaymentStatus::Captured);
    ensure!(services.mailer.sent() == vec![placed.confirmation.context("no confirmation")?]);

    println!("== run 2: bob orders the same, pays by bank transfer: no confirmation yet");
    let placed = run_as(
        &app,
        &workflow,
        "order-bob",
        input("bob@example.com", BANK_TRANSFER),
    )
    .await?;
    print_placed(&placed);
    services.print();
    ensure!(placed.order.status == OrderStatus::Placed);
    ensure!(placed.payment.status == PaymentStatus::AwaitingTransfer);
    ensure!(placed.confirmation.is_none(), "bob was sent a confirmation");
    ensure!(services.mailer.sent().len() == 1);
    let reserved_before = services.inventory.stock();

    println!("== run 3: cat orders the same, her card is declined");
    let error = match run_as(
        &app,
        &workflow,
        "order-cat",
        input("cat@example.com", "tok_declined"),
    )
    .await
    {
        Ok(placed) => anyhow::bail!("the declined order was placed: {placed:?}"),
        Err(error) => error,
    };
    println!("  result: {error}");
    services.print();
    ensure!(matches!(
        error,
        Error::Failed {
            state: TransactionState::Reverted,
            ..
        }
    ));
    ensure!(error.errors()[0].action == "process-payment");
    let cats = services
        .orders
        .all()
        .into_iter()
        .find(|o| o.email == "cat@example.com")
        .context("cat's order was never created")?;
    ensure!(
        cats.status == OrderStatus::Cancelled,
        "cat's order: {cats:?}"
    );
    ensure!(
        services
            .inventory
            .reservations()
            .iter()
            .all(|r| r.order_id != cats.id),
        "cat's reservation was not released"
    );
    ensure!(services.inventory.stock() == reserved_before);
    ensure!(
        services
            .mailer
            .sent()
            .iter()
            .all(|e| e.to != "cat@example.com"),
        "cat was sent a confirmation"
    );
    ensure!(!services.warehouses.allocations().contains_key(&cats.id));
    println!("ok: the declined order was cancelled, its stock released, no confirmation sent");
    Ok(())
}
