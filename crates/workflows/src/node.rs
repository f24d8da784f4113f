//! Run time: the [`Node`]s of a composed workflow and the [`Compiled`] workflow that holds
//! them, the [`Runtime`] the engine calls (it dispatches by step index), the [`Env`] that
//! values are resolved against, and the [`Host`]: what nodes need from the app running them.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use gorgon_event_bus::EventBus;
use gorgon_orchestration::flow::Next;
use gorgon_orchestration::{
    Data, Engine, Execution, Flow, FlowDefinition, Handler, HandlerType, StepCall, StepError,
    StepIndex, StepOptions, StepOutcome, TransactionState, WorkflowOptions,
};

use crate::error::Error;
use crate::services::Requirement;

/// What the nodes of a workflow need from the app that runs it: its event bus (for the step
/// contexts that emit), and, for nested workflows and fan-out, its engine, its registered
/// workflows, its waiting for runs and its settling of their events. The app implements it; a
/// [`Runtime`] holds it weakly (the app owns the engine, which owns the runtime). A step's call
/// does not go through it: only emitting does, and starting, waiting for, completing or
/// cancelling child runs.
pub(crate) trait Host: Send + Sync {
    /// The app's event bus, when it has one.
    fn event_bus(&self) -> Option<Arc<dyn EventBus>>;
    /// The app's engine.
    fn engine(&self) -> &Engine;
    /// The workflow registered under `name`, as it runs on the app (its hooks bound).
    fn compiled_of(&self, name: &str) -> Option<Arc<Compiled>>;
    /// Waits until a run of `compiled` finishes or comes to wait for the outside (its own
    /// steps, or those of the workflows it nests).
    fn wait_engine_driven<'a>(
        &'a self,
        compiled: &'a Arc<Compiled>,
        execution: Execution,
    ) -> BoxFuture<'a, Result<Execution, Error>>;
    /// Waits until a run has finished (done, reverted or failed).
    fn wait_finished<'a>(
        &'a self,
        workflow: &'a str,
        transaction_id: &'a str,
    ) -> BoxFuture<'a, Result<Execution, Error>>;
    /// Settles the event group of a run that finished in `state` (released when done,
    /// discarded when rolled back); runs that hold their events are left alone.
    fn settle_events<'a>(
        &'a self,
        execution: &'a Execution,
        state: TransactionState,
    ) -> BoxFuture<'a, ()>;
}

/// A node of the flow, type-erased: dispatched by step index when the engine calls the workflow.
pub(crate) trait Node: Send + Sync {
    fn invoke(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome>;
    fn compensate(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome>;
    /// The response to save for an external `set_step_success` with this output.
    fn external_success(&self, output: Box<dyn Any + Send>) -> Option<Data>;
    /// The Rust type of the output, for errors.
    fn output_type(&self) -> &'static str;
    /// The output in a saved response, type-erased (for hooks, whose handler types are bound
    /// after composition).
    fn output_any(&self, data: &Data) -> Result<Option<Box<dyn Any + Send>>, serde_json::Error> {
        let _ = data;
        Ok(None)
    }
    /// The name of the workflow this node runs as a nested run, if it does (its transaction
    /// id is `<step>-<parent transaction>`).
    fn nested(&self) -> Option<Arc<str>> {
        None
    }
    /// Whether the node saves its response as the SDK's envelope (output and compensation
    /// input apart) rather than as the bare value (a `when` decision).
    fn saves_envelope(&self) -> bool {
        true
    }
}

/// A future that is ready with `outcome`.
pub(crate) fn ready(outcome: StepOutcome) -> BoxFuture<'static, StepOutcome> {
    Box::pin(std::future::ready(outcome))
}

/// A node's input for this call: `Ok(None)` when a guard is not taken or the input is absent.
pub(crate) fn resolve_input<T>(
    call: &StepCall,
    rt: &Runtime,
    guards: &[usize],
    input: &Resolver<T>,
) -> Result<Option<T>, Error> {
    let env = Env {
        source: EnvSource::Call(call),
        compiled: &rt.compiled,
        workflow: call.workflow(),
    };
    if !env.guards_pass(guards)? {
        return Ok(None);
    }
    input(&env)
}

/// The permanent failure of a node whose input does not resolve.
pub(crate) fn resolution_failure(error: Error) -> StepOutcome {
    StepOutcome::Failure {
        error: StepError::named("ResolveError", error.to_string()),
        permanent: true,
        response: None,
    }
}

/// What the composer recorded about a hook: how to read its data, and its guards.
pub(crate) struct HookDecl {
    /// A `Resolver<T>`.
    pub(crate) input: Box<dyn Any + Send + Sync>,
    pub(crate) guards: Box<[usize]>,
    /// The `TypeId` of the hook's `(T, R)`.
    pub(crate) types: TypeId,
    pub(crate) type_name: &'static str,
}

/// What a composer produced.
pub(crate) struct Composed {
    /// Nodes by stage: a stage's nodes are siblings; each stage follows the previous one.
    pub(crate) stages: Vec<Vec<usize>>,
    pub(crate) nodes: Vec<NodeDef>,
    pub(crate) children: Vec<Arc<Compiled>>,
}

/// A node as the builder records it.
#[derive(Clone)]
pub(crate) struct NodeDef {
    pub(crate) name: Cow<'static, str>,
    pub(crate) options: StepOptions,
    pub(crate) node: Arc<dyn Node>,
    pub(crate) requires: Vec<Requirement>,
    /// For a hook: its declaration, and whether a handler is bound (unbound hooks are left out
    /// of the flow).
    pub(crate) hook: Option<(Arc<HookDecl>, bool)>,
}

impl NodeDef {
    /// Whether the node is a step of the flow.
    pub(crate) fn in_flow(&self) -> bool {
        !matches!(self.hook, Some((_, false)))
    }
}

/// The map entry of a node that is not in the flow (an unbound hook).
pub(crate) const ABSENT: StepIndex = usize::MAX;

/// A workflow compiled from its composer: the flow, and the nodes in definition order.
pub(crate) struct Compiled {
    pub(crate) name: Arc<str>,
    pub(crate) options: WorkflowOptions,
    pub(crate) stages: Vec<Vec<usize>>,
    pub(crate) flow: Arc<Flow>,
    pub(crate) nodes: Vec<NodeDef>,
    /// Node (definition order) → step index in the flow.
    pub(crate) map: Vec<StepIndex>,
    /// Step index in the flow → node.
    pub(crate) by_index: Vec<usize>,
    /// The workflows run by nested-workflow and fan-out steps, registered with this one.
    pub(crate) children: Vec<Arc<Compiled>>,
    /// The id of the app that last found this workflow registered (0: none).
    pub(crate) checked_on: AtomicU64,
}

impl Compiled {
    /// The flow of composed nodes: each stage after the last member of the previous one;
    /// unbound hooks are left out.
    pub(crate) fn build(
        name: Arc<str>,
        options: WorkflowOptions,
        composed: Composed,
    ) -> Result<Self, Error> {
        let Composed {
            stages,
            nodes,
            children,
        } = composed;
        let mut next: Option<Next> = None;
        for stage in stages.iter().rev() {
            let mut defs: Vec<FlowDefinition> = stage
                .iter()
                .filter(|&&n| nodes[n].in_flow())
                .map(|&n| FlowDefinition::step(nodes[n].name.to_string(), nodes[n].options.clone()))
                .collect();
            let Some(last) = defs.last_mut() else {
                continue;
            };
            last.next = next.take();
            next = Some(if defs.len() == 1 {
                Next::One(Box::new(defs.remove(0)))
            } else {
                Next::Many(defs)
            });
        }
        let root = FlowDefinition {
            action: None,
            next,
            options: StepOptions::default(),
        };
        let flow = Flow::compile(name.to_string(), root, options.clone())?;
        let mut map = Vec::with_capacity(nodes.len());
        let mut by_index = vec![ABSENT; flow.steps().len()];
        for (n, node) in nodes.iter().enumerate() {
            match flow.step_index(&node.name) {
                Some(index) if node.in_flow() => {
                    map.push(index);
                    by_index[index] = n;
                }
                _ => map.push(ABSENT),
            }
        }
        Ok(Compiled {
            name,
            options,
            stages,
            flow: Arc::new(flow),
            nodes,
            map,
            by_index,
            children,
            checked_on: AtomicU64::new(0),
        })
    }
}

/// Where values are read from while a run executes: the running call, or a finished execution.
pub(crate) enum EnvSource<'a> {
    Call(&'a StepCall),
    Execution(&'a Execution),
}

/// The run being resolved against: its payload, its saved responses, and the compiled workflow
/// (which maps a node's definition order to its step index in the flow).
pub(crate) struct Env<'a> {
    pub(crate) source: EnvSource<'a>,
    pub(crate) compiled: &'a Compiled,
    pub(crate) workflow: &'a str,
}

impl Env<'_> {
    /// The run's payload (the input and the shared context).
    pub(crate) fn payload(&self) -> &Data {
        match self.source {
            EnvSource::Call(call) => call.payload(),
            EnvSource::Execution(execution) => execution.payload(),
        }
    }
    pub(crate) fn response(&self, node: usize) -> Option<Data> {
        self.with_response(node, |data| data.cloned())
    }
    /// Reads a node's saved response in place (no reference count taken); `read` gets `None`
    /// when there is none.
    pub(crate) fn with_response<R>(&self, node: usize, read: impl FnOnce(Option<&Data>) -> R) -> R {
        let index = self.compiled.map[node];
        if index == ABSENT {
            return read(None);
        }
        match self.source {
            EnvSource::Call(call) => call.responses().with(index, HandlerType::Invoke, read),
            EnvSource::Execution(execution) => {
                execution.responses().with(index, HandlerType::Invoke, read)
            }
        }
    }
    /// Whether every `when` decision in `guards` was taken (absent decisions count as not taken).
    #[inline]
    pub(crate) fn guards_pass(&self, guards: &[usize]) -> Result<bool, Error> {
        if guards.is_empty() {
            return Ok(true);
        }
        self.decisions_taken(guards)
    }
    fn decisions_taken(&self, guards: &[usize]) -> Result<bool, Error> {
        for &guard in guards {
            let taken = match self.response(guard) {
                None => false,
                Some(data) => match data.downcast_ref::<bool>() {
                    Some(taken) => *taken,
                    None => data.decode::<bool>().map_err(|e| Error::Decode {
                        workflow: self.workflow.to_string(),
                        source_name: format!("when decision #{guard}"),
                        reason: e.to_string(),
                    })?,
                },
            };
            if !taken {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Reads a value from a run: `Ok(None)` when it is absent (its step was skipped).
pub(crate) type Resolver<T> = Arc<dyn Fn(&Env<'_>) -> Result<Option<T>, Error> + Send + Sync>;

/// The orchestrator handler of a workflow registered on an app: dispatches by step index, and
/// gives the nodes what they run with.
pub(crate) struct Runtime {
    pub(crate) compiled: Arc<Compiled>,
    /// The app, for nested workflows (weak: the app owns the engine, which owns this).
    pub(crate) host: Weak<dyn Host>,
    /// The services and the app, as the transactions of this workflow keep them for their step
    /// contexts (a `StepEnv`).
    pub(crate) env: Arc<dyn Any + Send + Sync>,
}

impl Handler for Runtime {
    fn call<'life0, 'async_trait>(
        &'life0 self,
        call: StepCall,
    ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let compiled = &self.compiled;
        let node = compiled
            .by_index
            .get(call.step())
            .and_then(|&n| compiled.nodes.get(n));
        let Some(node) = node else {
            return Box::pin(std::future::ready(StepOutcome::Failure {
                error: StepError::new("no step is defined at this index"),
                permanent: true,
                response: None,
            }));
        };
        match call.handler_type() {
            HandlerType::Invoke => node.node.invoke(call, self),
            HandlerType::Compensate => node.node.compensate(call, self),
        }
    }
}
