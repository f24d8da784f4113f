//! [`Workflow`]: a composed, compiled workflow, and the handler that runs its steps.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use gorgon_orchestration::flow::Next;
use gorgon_orchestration::{
    Flow, FlowDefinition, Handler, HandlerType, StepCall, StepError, StepIndex, StepOptions,
    StepOutcome, WorkflowOptions,
};

use crate::app::AppInner;
use crate::compose::{Builder, Composed, Handle, NodeDef, Resolver};
use crate::error::Error;
use crate::services::Services;
use crate::step::Value;

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

/// A workflow: typed input `In`, typed result `Out`, defined once by a composer.
///
/// Cheap to clone. Register it on an [`App`](crate::App), then run it there.
pub struct Workflow<In, Out> {
    pub(crate) compiled: Arc<Compiled>,
    pub(crate) result: Resolver<Out>,
    _input: PhantomData<fn(In)>,
}

impl<In, Out> Clone for Workflow<In, Out> {
    fn clone(&self) -> Self {
        Workflow {
            compiled: self.compiled.clone(),
            result: self.result.clone(),
            _input: PhantomData,
        }
    }
}

impl<In, Out> std::fmt::Debug for Workflow<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.compiled.name)
            .field("steps", &self.compiled.nodes.len())
            .finish()
    }
}

impl<In: Value, Out: Clone + Send + Sync + 'static> Workflow<In, Out> {
    /// Defines a workflow: `composer` receives the input as a handle, adds the steps, and returns
    /// the handle of the result. It runs once, now, and performs no I/O.
    pub fn define<F>(name: impl Into<String>, composer: F) -> Result<Self, Error>
    where
        F: FnOnce(&mut Builder, Handle<In>) -> Handle<Out>,
    {
        Self::define_with(name, WorkflowOptions::default(), composer)
    }

    /// [`define`](Self::define) with workflow options (timeout, idempotent, retention, store).
    pub fn define_with<F>(
        name: impl Into<String>,
        options: WorkflowOptions,
        composer: F,
    ) -> Result<Self, Error>
    where
        F: FnOnce(&mut Builder, Handle<In>) -> Handle<Out>,
    {
        let name: Arc<str> = Arc::from(name.into());
        let mut builder = Builder::new(name.clone());
        let input = builder.input::<In>();
        let output = composer(&mut builder, input);
        let result = builder.result(output);
        let composed = builder.finish()?;
        Ok(Workflow {
            compiled: Arc::new(Compiled::build(name, options, composed)?),
            result,
            _input: PhantomData,
        })
    }
}

impl<In, Out> Workflow<In, Out> {
    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.compiled.name
    }
    /// The compiled flow (the step tree the orchestrator runs).
    pub fn flow(&self) -> &Flow {
        &self.compiled.flow
    }
    /// The step names in definition order.
    pub fn step_names(&self) -> impl Iterator<Item = &str> {
        self.compiled.nodes.iter().map(|n| n.name.as_ref())
    }
}

/// The orchestrator handler of a workflow registered on an app: dispatches by step index, and
/// gives the nodes what they run with.
pub(crate) struct Runtime {
    pub(crate) compiled: Arc<Compiled>,
    /// The app, for nested workflows (weak: the app owns the engine, which owns this).
    pub(crate) app: Weak<AppInner>,
    /// The services and the app, as the transactions of this workflow keep them for their step
    /// contexts (an `Arc<StepEnv>`).
    pub(crate) env: Arc<dyn std::any::Any + Send + Sync>,
}

impl Runtime {
    pub(crate) fn new(
        compiled: Arc<Compiled>,
        services: Arc<Services>,
        app: Weak<AppInner>,
    ) -> Self {
        let env = Arc::new(StepEnv {
            services,
            app: app.clone(),
        });
        Runtime { compiled, app, env }
    }
}

/// What a step context reads from its app.
pub(crate) struct StepEnv {
    pub(crate) services: Arc<Services>,
    /// The app, for its event bus (looked up when a step emits).
    pub(crate) app: Weak<AppInner>,
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
