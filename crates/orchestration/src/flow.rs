//! The flow model: Medusa's step tree (`TransactionStepsDefinition`) and the workflow options.
//!
//! A [`FlowDefinition`] is what users (or the SDK) write; [`Flow::compile`] checks it and turns it
//! into a [`Flow`]: a flat table of steps in breadth-first order with parent and child links,
//! depths and the invoke and compensate orders the state machine walks.
//!
//! ```
//! use gorgon_orchestration::flow::{Flow, FlowDefinition, WorkflowOptions};
//!
//! let json = r#"{"next": {"action": "a", "maxRetries": 2, "next": [{"action": "b"}, {"action": "c"}]}}"#;
//! let definition = FlowDefinition::from_json(json).unwrap();
//! let flow = Flow::compile("restock", definition, WorkflowOptions::default()).unwrap();
//! assert_eq!(flow.len(), 3);
//! assert_eq!(flow.step(flow.step_index("b").unwrap()).parent, flow.step_index("a"));
//! ```

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The separator of idempotency keys; no name may contain it.
pub const KEY_SEPARATOR: char = ':';

/// One node of the step tree, exactly Medusa's `TransactionStepsDefinition`.
///
/// The root node has no `action`; every other node names its step. `next` holds one child, or an
/// array of children that run in parallel.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowDefinition {
    /// The step's stable name; unique within the workflow. Absent only on the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The step (or parallel steps) that follow this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Next>,
    /// The per-step options.
    #[serde(flatten)]
    pub options: StepOptions,
}

/// The children of a node: one step, or several that run in parallel.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Next {
    /// A single child.
    One(Box<FlowDefinition>),
    /// Parallel children.
    Many(Vec<FlowDefinition>),
}

/// `skipOnPermanentFailure`: `true` skips every descendant; a step name skips up to that step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SkipOnPermanentFailure {
    /// `true` skips every descendant, `false` is the default (no skipping).
    All(bool),
    /// Skipping stops at the named descendant, which then runs with its subtree.
    Until(String),
}

/// The per-step options of Medusa's §2.2, with the same names and defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepOptions {
    /// Re-tries after a temporary failure (default 0): a step runs at most `max_retries + 1` times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// `false`: a temporarily failed step waits for the next resume instead of retrying at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_retry: Option<bool>,
    /// Seconds between retries; retries are then driven by a timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<f64>,
    /// Seconds after which a step still waiting for an async response is invoked again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval_awaiting: Option<f64>,
    /// The cap on awaiting re-invocations (doubled while compensating).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_awaiting_retries: Option<u32>,
    /// Seconds after the step's first start after which it is marked `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// The invoke is fire-and-forget: the step waits for `set_step_success` / `set_step_failure`.
    #[serde(default, rename = "async", skip_serializing_if = "Option::is_none")]
    pub is_async: Option<bool>,
    /// The same as `async`, for the compensation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate_async: Option<bool>,
    /// An async step completes by itself when its handler returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_execution: Option<bool>,
    /// Marks a sub-workflow step: it waits for the child's callback even in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested: Option<bool>,
    /// The step is marked reverted without calling its compensation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_compensation: Option<bool>,
    /// On permanent failure the step stays failed and the workflow goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_permanent_failure: Option<bool>,
    /// On permanent failure the descendants are skipped (all, or up to the named step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_on_permanent_failure: Option<SkipOnPermanentFailure>,
    /// Whether the step's response is saved for later steps (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_response: Option<bool>,
    /// The step's children start without waiting for it or its siblings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_wait: Option<bool>,
    /// Forces a durable checkpoint around this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    /// An opaque id Medusa's builder attaches to each node; kept, never interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

impl StepOptions {
    /// The retries after a temporary failure.
    pub fn max_retries(&self) -> u32 {
        self.max_retries.unwrap_or(0)
    }
    /// Whether a temporary failure is retried without waiting for a resume.
    pub fn auto_retry(&self) -> bool {
        self.auto_retry.unwrap_or(true)
    }
    /// Whether the invoke handler is asynchronous.
    pub fn is_async(&self) -> bool {
        self.is_async.unwrap_or(false)
    }
    /// Whether the compensate handler is asynchronous.
    pub fn compensate_async(&self) -> bool {
        self.compensate_async.unwrap_or(false)
    }
    /// Whether an async step completes when its handler returns.
    pub fn background_execution(&self) -> bool {
        self.background_execution.unwrap_or(false)
    }
    /// Whether the step is a nested workflow.
    pub fn nested(&self) -> bool {
        self.nested.unwrap_or(false)
    }
    /// Whether compensation skips the handler.
    pub fn no_compensation(&self) -> bool {
        self.no_compensation.unwrap_or(false)
    }
    /// Whether a permanent failure lets the workflow go on.
    pub fn continue_on_permanent_failure(&self) -> bool {
        self.continue_on_permanent_failure.unwrap_or(false)
    }
    /// Whether a permanent failure skips descendants (Medusa's truthiness: any step name counts).
    pub fn skips_on_permanent_failure(&self) -> bool {
        match &self.skip_on_permanent_failure {
            None | Some(SkipOnPermanentFailure::All(false)) => false,
            Some(SkipOnPermanentFailure::All(true)) => true,
            Some(SkipOnPermanentFailure::Until(name)) => !name.is_empty(),
        }
    }
    /// The step at which skipping stops, if one is named.
    pub fn skip_until(&self) -> Option<&str> {
        match &self.skip_on_permanent_failure {
            Some(SkipOnPermanentFailure::Until(name)) if !name.is_empty() => Some(name),
            _ => None,
        }
    }
    /// Whether the response is saved for later steps.
    pub fn save_response(&self) -> bool {
        self.save_response.unwrap_or(true)
    }
    /// Whether the step's children may start without waiting.
    pub fn no_wait(&self) -> bool {
        self.no_wait.unwrap_or(false)
    }
    /// The retry interval in milliseconds, when set and positive.
    pub fn retry_interval_ms(&self) -> Option<u64> {
        seconds_to_ms(self.retry_interval)
    }
    /// The awaiting retry interval in milliseconds, when set and positive.
    pub fn retry_interval_awaiting_ms(&self) -> Option<u64> {
        seconds_to_ms(self.retry_interval_awaiting)
    }
    /// The step timeout in milliseconds, when set and positive.
    pub fn timeout_ms(&self) -> Option<u64> {
        seconds_to_ms(self.timeout)
    }
    /// Whether the handler of `side` is asynchronous.
    pub fn is_async_side(&self, side: crate::HandlerType) -> bool {
        match side {
            crate::HandlerType::Invoke => self.is_async(),
            crate::HandlerType::Compensate => self.compensate_async(),
        }
    }
}

/// The workflow-level options of Medusa's `TransactionModelOptions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowOptions {
    /// Seconds after the start after which the whole transaction times out and is compensated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// A finished transaction id returns its stored result instead of running again. Every
    /// store keeps an idempotent run until its retention time ends (for good without one), so
    /// the answer holds however many runs come after: the in-memory store bounds only the
    /// runs that are neither idempotent nor retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// Seconds a finished execution is kept before it is removed: by the retention sweep
    /// (`Engine::spawn_retention_sweep`), and by the in-memory store itself, which keeps it
    /// that long whatever its bound on other runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_time: Option<f64>,
    /// Persist checkpoints (forced on by async steps, timeouts, retry intervals, idempotency, retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
}

impl WorkflowOptions {
    /// Reads the options from JSON, naming the offending field on error.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let de = &mut serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(de).map_err(|e| Error::InvalidFlow {
            path: display_path(&e.path().to_string()),
            reason: e.inner().to_string(),
        })
    }
    /// The transaction timeout in milliseconds, when set and positive.
    pub fn timeout_ms(&self) -> Option<u64> {
        seconds_to_ms(self.timeout)
    }
    /// Whether the idempotent option is on.
    pub fn idempotent(&self) -> bool {
        self.idempotent.unwrap_or(false)
    }
    /// The retention in milliseconds, when set and positive.
    pub fn retention_ms(&self) -> Option<u64> {
        seconds_to_ms(self.retention_time)
    }
}

impl FlowDefinition {
    /// Reads a step tree from JSON. An unknown option or a wrong type is refused with the path of
    /// the offending field (`next.next[1].maxRetries`).
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::InvalidFlow {
                path: "(root)".into(),
                reason: e.to_string(),
            })?;
        Self::from_value(value)
    }

    /// Reads a step tree from an already parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, Error> {
        Self::parse_node(value, "")
    }

    fn parse_node(value: serde_json::Value, path: &str) -> Result<Self, Error> {
        let here = |field: &str| {
            if path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            }
        };
        let serde_json::Value::Object(mut map) = value else {
            return Err(Error::InvalidFlow {
                path: if path.is_empty() {
                    "(root)".into()
                } else {
                    path.to_string()
                },
                reason: "expected a step object".into(),
            });
        };
        let action = match map.remove("action") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => {
                return Err(Error::InvalidFlow {
                    path: here("action"),
                    reason: format!("expected a string, got {other}"),
                });
            }
        };
        let next = match map.remove("next") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(items)) => {
                let base = here("next");
                let children = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| Self::parse_node(item, &format!("{base}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Next::Many(children))
            }
            Some(item) => Some(Next::One(Box::new(Self::parse_node(item, &here("next"))?))),
        };
        let options: StepOptions = serde_path_to_error::deserialize(serde_json::Value::Object(map))
            .map_err(|e| {
                let inner = e.path().to_string();
                let field = if inner == "." { String::new() } else { inner };
                let reason = e.inner().to_string();
                // An unknown field is reported at the node; name it from the message.
                let field = if field.is_empty() {
                    reason.split('`').nth(1).unwrap_or_default().to_string()
                } else {
                    field
                };
                Error::InvalidFlow {
                    path: if field.is_empty() {
                        here("")
                    } else {
                        here(&field)
                    },
                    reason,
                }
            })?;
        Ok(FlowDefinition {
            action,
            next,
            options,
        })
    }

    /// Writes the step tree as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a flow definition always serializes")
    }

    /// A root whose children run one after another in the given order.
    pub fn chain(steps: impl IntoIterator<Item = FlowDefinition>) -> Self {
        let mut steps: Vec<FlowDefinition> = steps.into_iter().collect();
        let mut next: Option<Next> = None;
        while let Some(mut step) = steps.pop() {
            step.next = next;
            next = Some(Next::One(Box::new(step)));
        }
        FlowDefinition {
            action: None,
            next,
            options: StepOptions::default(),
        }
    }

    /// A step node with the given action and options and no children.
    pub fn step(action: impl Into<String>, options: StepOptions) -> Self {
        FlowDefinition {
            action: Some(action.into()),
            next: None,
            options,
        }
    }

    fn children(&self) -> &[FlowDefinition] {
        match &self.next {
            None => &[],
            Some(Next::One(child)) => std::slice::from_ref(child.as_ref()),
            Some(Next::Many(children)) => children,
        }
    }
}

fn display_path(path: &str) -> String {
    if path == "." {
        "(root)".to_string()
    } else {
        path.to_string()
    }
}

impl<'de> Deserialize<'de> for FlowDefinition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        FlowDefinition::from_value(value).map_err(serde::de::Error::custom)
    }
}

fn seconds_to_ms(seconds: Option<f64>) -> Option<u64> {
    match seconds {
        Some(s) if s > 0.0 && s.is_finite() => Some((s * 1000.0).round() as u64),
        _ => None,
    }
}

/// The index of a step in its [`Flow`]; index 0 is the root.
pub type StepIndex = usize;

/// One step of a compiled flow.
#[derive(Clone, Debug)]
pub struct FlowStep {
    /// Medusa's dotted step id, `_root.a.b`.
    pub id: String,
    /// The step's action name (empty for the root).
    pub action: String,
    /// Depth below the root (the root is 0).
    pub depth: usize,
    /// The parent step (`None` for the root).
    pub parent: Option<StepIndex>,
    /// The children, in definition order.
    pub next: Vec<StepIndex>,
    /// The step's options.
    pub options: StepOptions,
}

/// A checked, compiled flow: the step table the state machine runs.
#[derive(Clone, Debug)]
pub struct Flow {
    workflow: std::sync::Arc<str>,
    definition: FlowDefinition,
    options: WorkflowOptions,
    steps: Vec<FlowStep>,
    by_action: HashMap<String, StepIndex>,
    invoke_order: Vec<StepIndex>,
    invoke_position: Vec<usize>,
    compensate_order: Vec<StepIndex>,
    compensate_position: Vec<usize>,
    has_async_steps: bool,
    store: bool,
    /// The workflow timeout and each step's, in milliseconds, converted once (the state
    /// machine asks at every step event).
    timeout_ms: Option<u64>,
    step_timeouts_ms: Vec<Option<u64>>,
}

impl Flow {
    /// Checks a definition and compiles it. Refused with [`Error::InvalidFlow`] naming the field:
    /// a step without an action, a duplicate action, a name containing `:`, a negative or
    /// non-finite duration, a `skipOnPermanentFailure` target that is not a descendant.
    pub fn compile(
        workflow: impl Into<String>,
        definition: FlowDefinition,
        options: WorkflowOptions,
    ) -> Result<Self, Error> {
        let workflow = workflow.into();
        check_name(&workflow).map_err(|reason| Error::InvalidFlow {
            path: "workflow".into(),
            reason,
        })?;
        if definition.action.is_some() {
            return Err(Error::InvalidFlow {
                path: "action".into(),
                reason: "the root of a flow has no action; put the first step in `next`".into(),
            });
        }
        check_duration("timeout", options.timeout)?;
        check_duration("retentionTime", options.retention_time)?;

        let mut steps = vec![FlowStep {
            id: "_root".into(),
            action: String::new(),
            depth: 0,
            parent: None,
            next: Vec::new(),
            options: definition.options.clone(),
        }];
        let mut by_action = HashMap::new();
        // Breadth-first, as Medusa's buildSteps: the table order is the tie-break of every scan.
        let mut queue: VecDeque<(&FlowDefinition, StepIndex, String)> = VecDeque::new();
        for (i, child) in definition.children().iter().enumerate() {
            queue.push_back((child, 0, child_path("next", &definition, i)));
        }
        while let Some((node, parent, path)) = queue.pop_front() {
            let action = node.action.clone().ok_or_else(|| Error::InvalidFlow {
                path: format!("{path}.action"),
                reason: "every step needs an action".into(),
            })?;
            check_name(&action).map_err(|reason| Error::InvalidFlow {
                path: format!("{path}.action"),
                reason,
            })?;
            if by_action.contains_key(&action) {
                return Err(Error::InvalidFlow {
                    path: format!("{path}.action"),
                    reason: format!("step {action} is already defined in the workflow"),
                });
            }
            for (field, value) in [
                ("retryInterval", node.options.retry_interval),
                (
                    "retryIntervalAwaiting",
                    node.options.retry_interval_awaiting,
                ),
                ("timeout", node.options.timeout),
            ] {
                check_duration(&format!("{path}.{field}"), value)?;
            }
            let index = steps.len();
            let depth = steps[parent].depth + 1;
            let id = format!("{}.{}", steps[parent].id, action);
            steps[parent].next.push(index);
            by_action.insert(action.clone(), index);
            steps.push(FlowStep {
                id,
                action,
                depth,
                parent: Some(parent),
                next: Vec::new(),
                options: node.options.clone(),
            });
            for (i, child) in node.children().iter().enumerate() {
                queue.push_back((child, index, child_path(&format!("{path}.next"), node, i)));
            }
        }

        // A skip target must be a descendant of the step that names it.
        for (index, step) in steps.iter().enumerate().skip(1) {
            if let Some(target) = step.options.skip_until() {
                let found = by_action
                    .get(target)
                    .is_some_and(|&t| is_descendant(&steps, t, index));
                if !found {
                    return Err(Error::InvalidFlow {
                        path: format!(
                            "{}.skipOnPermanentFailure",
                            step.id.trim_start_matches("_root.")
                        ),
                        reason: format!("`{target}` is not a descendant of step {}", step.action),
                    });
                }
            }
        }

        let mut invoke_order: Vec<StepIndex> = (1..steps.len()).collect();
        invoke_order.sort_by_key(|&i| steps[i].depth);
        let mut invoke_position = vec![0; steps.len()];
        for (position, &step) in invoke_order.iter().enumerate() {
            invoke_position[step] = position;
        }
        let mut compensate_order = invoke_order.clone();
        compensate_order.sort_by_key(|&i| std::cmp::Reverse(steps[i].depth));
        let mut compensate_position = vec![0; steps.len()];
        for (position, &step) in compensate_order.iter().enumerate() {
            compensate_position[step] = position;
        }

        let has_async_steps = steps.iter().any(|s| s.options.is_async());
        let forces_store = steps.iter().any(|s| {
            s.options.is_async()
                || s.options.timeout_ms().is_some()
                || s.options.retry_interval_ms().is_some()
                || s.options.retry_interval_awaiting_ms().is_some()
        });
        let store = options.store.unwrap_or(false)
            || forces_store
            || options.timeout_ms().is_some()
            || options.idempotent()
            || options.retention_ms().is_some();

        let timeout_ms = options.timeout_ms();
        let step_timeouts_ms = steps.iter().map(|s| s.options.timeout_ms()).collect();
        Ok(Flow {
            timeout_ms,
            step_timeouts_ms,
            workflow: workflow.into(),
            definition,
            options,
            steps,
            by_action,
            invoke_order,
            invoke_position,
            compensate_order,
            compensate_position,
            has_async_steps,
            store,
        })
    }

    /// The workflow this flow belongs to.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }
    /// The workflow name, shared.
    pub fn workflow_arc(&self) -> &std::sync::Arc<str> {
        &self.workflow
    }
    /// The definition the flow was compiled from.
    pub fn definition(&self) -> &FlowDefinition {
        &self.definition
    }
    /// The workflow options.
    pub fn options(&self) -> &WorkflowOptions {
        &self.options
    }
    /// The number of steps, the root excluded.
    pub fn len(&self) -> usize {
        self.steps.len() - 1
    }
    /// Whether the flow has no step at all.
    pub fn is_empty(&self) -> bool {
        self.steps.len() == 1
    }
    /// Every step, the root (index 0) included.
    pub fn steps(&self) -> &[FlowStep] {
        &self.steps
    }
    /// One step by index.
    pub fn step(&self, index: StepIndex) -> &FlowStep {
        &self.steps[index]
    }
    /// The index of the step with this action.
    pub fn step_index(&self, action: &str) -> Option<StepIndex> {
        self.by_action.get(action).copied()
    }
    /// Steps by ascending depth (breadth-first within a depth): the invoke scan order.
    pub fn invoke_order(&self) -> &[StepIndex] {
        &self.invoke_order
    }
    /// The position of a step in [`invoke_order`](Self::invoke_order).
    pub fn invoke_position(&self, step: StepIndex) -> usize {
        self.invoke_position[step]
    }
    /// Steps by descending depth: the compensation scan order.
    pub fn compensate_order(&self) -> &[StepIndex] {
        &self.compensate_order
    }
    /// The position of a step in [`compensate_order`](Self::compensate_order).
    pub fn compensate_position(&self, step: StepIndex) -> usize {
        self.compensate_position[step]
    }
    /// Whether any step is async.
    pub fn has_async_steps(&self) -> bool {
        self.has_async_steps
    }
    /// Whether checkpoints are kept durably (Medusa's derived `store` option).
    pub fn store(&self) -> bool {
        self.store
    }
    /// The workflow timeout in milliseconds (`WorkflowOptions::timeout_ms`, converted once).
    pub fn timeout_ms(&self) -> Option<u64> {
        self.timeout_ms
    }
    /// A step's timeout in milliseconds (`StepOptions::timeout_ms`, converted once).
    pub fn step_timeout_ms(&self, step: StepIndex) -> Option<u64> {
        self.step_timeouts_ms[step]
    }
}

fn child_path(base: &str, node: &FlowDefinition, i: usize) -> String {
    match node.next {
        Some(Next::Many(_)) => format!("{base}[{i}]"),
        _ => base.to_string(),
    }
}

fn is_descendant(steps: &[FlowStep], candidate: StepIndex, ancestor: StepIndex) -> bool {
    let mut cursor = steps[candidate].parent;
    while let Some(p) = cursor {
        if p == ancestor {
            return true;
        }
        cursor = steps[p].parent;
    }
    false
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name cannot be empty".into());
    }
    if name.contains(KEY_SEPARATOR) {
        return Err(format!(
            "`{name}` contains `{KEY_SEPARATOR}`, the idempotency key separator"
        ));
    }
    Ok(())
}

/// The longest duration a flow may give (ten years, in seconds): beyond it a deadline is no
/// longer a time a clock reaches.
pub const MAX_DURATION_SECONDS: f64 = 10.0 * 365.25 * 24.0 * 3600.0;

fn check_duration(path: &str, seconds: Option<f64>) -> Result<(), Error> {
    match seconds {
        Some(s) if !s.is_finite() || s < 0.0 => Err(Error::InvalidFlow {
            path: path.to_string(),
            reason: format!("expected a non-negative number of seconds, got {s}"),
        }),
        Some(s) if s > MAX_DURATION_SECONDS => Err(Error::InvalidFlow {
            path: path.to_string(),
            reason: format!("{s} seconds is longer than ten years ({MAX_DURATION_SECONDS})"),
        }),
        _ => Ok(()),
    }
}

/// Names used more than once would make idempotency keys ambiguous; exposed for the SDK.
pub fn duplicate_actions<'a>(actions: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    actions.into_iter().filter(|a| !seen.insert(*a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<Flow, Error> {
        Flow::compile(
            "wf",
            FlowDefinition::from_json(json)?,
            WorkflowOptions::default(),
        )
    }

    fn path_of(err: Error) -> String {
        match err {
            Error::InvalidFlow { path, .. } => path,
            other => panic!("expected InvalidFlow, got {other:?}"),
        }
    }

    #[test]
    fn breadth_first_table_with_depths() {
        let flow = compile(
            r#"{"next":[{"action":"one"},{"action":"two","next":{"action":"four"}},{"action":"three","next":{"action":"five"}}]}"#,
        )
        .unwrap();
        let actions: Vec<_> = flow.steps().iter().map(|s| s.action.as_str()).collect();
        assert_eq!(actions, ["", "one", "two", "three", "four", "five"]);
        assert_eq!(
            flow.step(flow.step_index("four").unwrap()).id,
            "_root.two.four"
        );
        assert_eq!(flow.step(4).depth, 2);
        let order: Vec<_> = flow
            .compensate_order()
            .iter()
            .map(|&i| flow.step(i).action.as_str())
            .collect();
        assert_eq!(order, ["four", "five", "one", "two", "three"]);
    }

    #[test]
    fn unknown_option_names_the_field() {
        let err = compile(
            r#"{"next":{"action":"a","next":[{"action":"b"},{"action":"c","maxRetrys":1}]}}"#,
        )
        .unwrap_err();
        assert_eq!(path_of(err), "next.next[1].maxRetrys");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = FlowDefinition::from_json(r#"{"next":{"action":"a","maxRetries":"three"}}"#)
            .unwrap_err();
        assert_eq!(path_of(err), "next.maxRetries");
    }

    #[test]
    fn duplicate_action_is_refused() {
        let err = compile(r#"{"next":{"action":"a","next":{"action":"a"}}}"#).unwrap_err();
        assert_eq!(path_of(err), "next.next.action");
    }

    #[test]
    fn skip_target_must_be_a_descendant() {
        let err =
            compile(r#"{"next":[{"action":"a","skipOnPermanentFailure":"b"},{"action":"b"}]}"#)
                .unwrap_err();
        assert_eq!(path_of(err), "a.skipOnPermanentFailure");
        compile(r#"{"next":{"action":"a","skipOnPermanentFailure":"c","next":{"action":"b","next":{"action":"c"}}}}"#)
            .unwrap();
    }

    #[test]
    fn names_with_the_separator_and_negative_durations_are_refused() {
        assert_eq!(
            path_of(compile(r#"{"next":{"action":"a:b"}}"#).unwrap_err()),
            "next.action"
        );
        assert_eq!(
            path_of(compile(r#"{"next":{"action":"a","timeout":-1}}"#).unwrap_err()),
            "next.timeout"
        );
        // A duration no clock reaches (it would overflow a deadline) is refused too.
        assert_eq!(
            path_of(compile(r#"{"next":{"action":"a","retryInterval":1e300}}"#).unwrap_err()),
            "next.retryInterval"
        );
        assert!(compile(r#"{"next":{"action":"a","timeout":315000000}}"#).is_ok());
        assert_eq!(
            path_of(compile(r#"{"next":{"next":{"action":"b"}}}"#).unwrap_err()),
            "next.action"
        );
    }

    #[test]
    fn store_is_derived_like_medusa() {
        assert!(!compile(r#"{"next":{"action":"a"}}"#).unwrap().store());
        assert!(
            compile(r#"{"next":{"action":"a","async":true}}"#)
                .unwrap()
                .store()
        );
        assert!(
            compile(r#"{"next":{"action":"a","retryInterval":1}}"#)
                .unwrap()
                .store()
        );
        let opts = WorkflowOptions::from_json(r#"{"idempotent":true}"#).unwrap();
        let flow = Flow::compile(
            "wf",
            FlowDefinition::from_json(r#"{"next":{"action":"a"}}"#).unwrap(),
            opts,
        )
        .unwrap();
        assert!(flow.store());
        assert!(WorkflowOptions::from_json(r#"{"timeot":1}"#).is_err());
    }

    #[test]
    fn round_trips_through_json() {
        let json = r#"{"next":{"action":"a","async":true,"skipOnPermanentFailure":true,"next":[{"action":"b","saveResponse":false},{"action":"c"}]}}"#;
        let def = FlowDefinition::from_json(json).unwrap();
        let back = FlowDefinition::from_value(def.to_json()).unwrap();
        assert_eq!(def, back);
        assert_eq!(
            def.to_json(),
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    #[test]
    fn chain_builds_a_sequence() {
        let def = FlowDefinition::chain(
            ["a", "b", "c"].map(|a| FlowDefinition::step(a, StepOptions::default())),
        );
        let flow = Flow::compile("wf", def, WorkflowOptions::default()).unwrap();
        assert_eq!(flow.step(3).id, "_root.a.b.c");
    }
}
