//! What the pages show, computed from the engine's executions: rows of the list, steps of a
//! run with the class of their color, and the step graph laid out for SVG.

use gorgon_orchestration::{
    ExecutionDetail, Flow, StepDetail, StepState, StepStatus, TransactionState,
};

/// A time (engine clock, ms) as people read it, UTC.
pub fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|at| at.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

/// A duration in ms, short.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// Whether a run ended.
pub fn finished(state: TransactionState) -> bool {
    matches!(
        state,
        TransactionState::Done | TransactionState::Reverted | TransactionState::Failed
    )
}

/// Whether a step's invoke is asynchronous (it waits for an answer from outside).
pub fn is_async(flow: &Flow, step: &StepDetail) -> bool {
    flow.steps()[step.index].options.is_async.unwrap_or(false)
}

/// The class (and legend name) of a step's color: `waiting` is an async step waiting for its
/// answer from outside; a synchronous step whose handler runs is `invoking`.
pub fn step_class(step: &StepDetail, is_async: bool) -> &'static str {
    match (step.compensate.state, step.invoke.state, step.invoke.status) {
        (StepState::Compensating, _, _) => "compensating",
        // The step that failed stays failed, though its side is marked reverted after.
        (_, StepState::Failed, _) | (StepState::Failed, _, _) => "failed",
        (StepState::Reverted, _, _) => "reverted",
        (_, StepState::Invoking, StepStatus::Waiting) if is_async => "waiting",
        (_, StepState::NotStarted, _) => "not-started",
        (_, StepState::Invoking, _) => "invoking",
        (_, StepState::Done, _) => "done",
        (_, StepState::Skipped | StepState::SkippedFailure, _) => "skipped",
        (_, StepState::Timeout, _) => "timeout",
        _ => "not-started",
    }
}

/// Steps done of all steps.
pub fn progress(detail: &ExecutionDetail) -> (usize, usize) {
    let done = detail
        .steps
        .iter()
        .filter(|s| s.invoke.state == StepState::Done)
        .count();
    (done, detail.steps.len())
}

/// One step as the detail page shows it.
#[derive(Debug, Clone)]
pub struct StepView {
    /// `_root.a.b`.
    pub id: String,
    /// The action.
    pub action: String,
    /// Its color class.
    pub class: &'static str,
    /// `done / ok`.
    pub invoke: String,
    /// `dormant / idle`.
    pub compensate: String,
    /// Handler calls of the current side.
    pub attempts: u32,
    /// First start.
    pub started: String,
    /// Last attempt.
    pub last_attempt: String,
    /// Its output, as pretty JSON.
    pub output: Option<String>,
    /// Its compensation input, as pretty JSON.
    pub compensation_input: Option<String>,
    /// Its errors.
    pub errors: Vec<String>,
    /// Whether its invoke waits for an answer from outside.
    pub waiting: bool,
}

fn pretty(data: &Option<gorgon_orchestration::Data>) -> Option<String> {
    data.as_ref()
        .and_then(|d| d.to_json().ok())
        .map(|json| serde_json::to_string_pretty(&json).unwrap_or_default())
}

impl StepView {
    /// The view of `step` of `flow`.
    pub fn of(flow: &Flow, step: &StepDetail) -> Self {
        let is_async = is_async(flow, step);
        Self {
            id: step.id.clone(),
            action: step.action.clone(),
            class: step_class(step, is_async),
            invoke: format!("{} / {}", step.invoke.state, step.invoke.status),
            compensate: format!("{} / {}", step.compensate.state, step.compensate.status),
            attempts: step.attempts,
            started: step.started_at.map(time).unwrap_or_default(),
            last_attempt: step.last_attempt.map(time).unwrap_or_default(),
            output: pretty(&step.output),
            compensation_input: pretty(&step.compensation_input),
            errors: step
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.handler, e.error.message))
                .collect(),
            waiting: is_async
                && step.invoke.state == StepState::Invoking
                && step.invoke.status == StepStatus::Waiting,
        }
    }
}

/// A node of the drawn graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// Left, in px.
    pub x: u32,
    /// Top, in px.
    pub y: u32,
    /// The action.
    pub label: String,
    /// Its color class.
    pub class: &'static str,
    /// The step id (for the link to its history row).
    pub id: String,
}

/// An edge, from a parent's bottom to a child's top.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Start x.
    pub x1: u32,
    /// Start y.
    pub y1: u32,
    /// End x.
    pub x2: u32,
    /// End y.
    pub y2: u32,
}

/// The step graph laid out: depth downwards, parallel branches side by side.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The edges.
    pub edges: Vec<Edge>,
    /// The drawing's width.
    pub width: u32,
    /// The drawing's height.
    pub height: u32,
}

/// Node size and spacing, in px.
pub const NODE_W: u32 = 150;
/// Node height.
pub const NODE_H: u32 = 34;
const LANE: u32 = 170;
const ROW: u32 = 64;

/// Lays out the flow's steps: each leaf gets a lane, a parent sits over its children.
pub fn graph(flow: &Flow, detail: &ExecutionDetail) -> Graph {
    let steps = flow.steps();
    let mut lanes = vec![0f32; steps.len()];
    let mut next_lane = 0f32;
    fn place(
        index: usize,
        steps: &[gorgon_orchestration::flow::FlowStep],
        lanes: &mut [f32],
        next: &mut f32,
    ) {
        let children = &steps[index].next;
        if children.is_empty() {
            lanes[index] = *next;
            *next += 1.0;
            return;
        }
        for &child in children {
            place(child, steps, lanes, next);
        }
        let first = lanes[children[0]];
        let last = lanes[children[children.len() - 1]];
        lanes[index] = (first + last) / 2.0;
    }
    place(0, steps, &mut lanes, &mut next_lane);
    let class_of = |index: usize| {
        detail
            .steps
            .iter()
            .find(|s| s.index == index)
            .map(|s| step_class(s, is_async(flow, s)))
            .unwrap_or("not-started")
    };
    let position = |index: usize| {
        let x = (lanes[index] * LANE as f32) as u32 + 10;
        let y = (steps[index].depth.saturating_sub(1) as u32) * ROW + 10;
        (x, y)
    };
    let mut graph = Graph::default();
    for (index, step) in steps.iter().enumerate().skip(1) {
        let (x, y) = position(index);
        graph.nodes.push(Node {
            x,
            y,
            label: step.action.clone(),
            class: class_of(index),
            id: step.id.clone(),
        });
        if index != 0 && step.parent.is_some_and(|p| p != 0) {
            let (px, py) = position(step.parent.unwrap_or_default());
            graph.edges.push(Edge {
                x1: px + NODE_W / 2,
                y1: py + NODE_H,
                x2: x + NODE_W / 2,
                y2: y,
            });
        }
        graph.width = graph.width.max(x + NODE_W + 10);
        graph.height = graph.height.max(y + NODE_H + 10);
    }
    graph
}
