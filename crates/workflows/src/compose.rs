//! Composition: the [`Builder`] a workflow's composer receives, typed [`Handle`]s, and the
//! nodes the composer produces (steps and `when` decisions), dispatched by step index at run time.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use gorgon_orchestration::{Data, HandlerType, StepCall, StepOptions, StepOutcome};

use crate::context::{Payload, StepContext};
use crate::error::Error;
use crate::node::{
    Compiled, Composed, Env, Node, NodeDef, Resolver, Runtime, ready, resolution_failure,
    resolve_input,
};
use crate::step::{Saved, Step, Value};

/// The workflow input of a run whose payload or input came from a store (JSON).
#[cold]
#[inline(never)]
fn decode_input<In: Value>(env: &Env<'_>) -> Result<In, Error> {
    Payload::with(env.payload(), env.workflow, |p| {
        p.input.decode::<In>().map_err(|e| Error::Decode {
            workflow: env.workflow.to_string(),
            source_name: "input".to_string(),
            reason: e.to_string(),
        })
    })?
}

/// A step's output from its saved response when that came from a store (JSON).
#[cold]
#[inline(never)]
fn decode_output<O: Value, C: Value>(
    data: &Data,
    workflow: &str,
    name: &str,
) -> Result<Option<O>, Error> {
    Saved::<O, C>::read(data)
        .map(|saved| saved.output)
        .map_err(|e| Error::Decode {
            workflow: workflow.to_string(),
            source_name: name.to_string(),
            reason: e.to_string(),
        })
}

/// A typed reference to a value a workflow will have at run time: its input, a step's output, a
/// transform's result. Handles are `Copy`; they are only meaningful inside the composer of the
/// workflow that made them.
///
/// A step taking an `Order` is fed a `Handle<Order>`:
///
/// ```
/// use gorgon_workflows::{Handle, Step, StepContext, StepResponse, StepResult, Workflow};
/// #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Order { id: u32 }
/// async fn ship(order: Order, _: StepContext) -> StepResult<u32> { Ok(StepResponse::new(order.id)) }
/// let ship = Step::new("ship", ship);
/// let wf = Workflow::define("right", |b, order: Handle<Order>| b.step(&ship, order)).unwrap();
/// assert_eq!(wf.flow().len(), 1);
/// ```
///
/// and cannot be fed a `Handle<Product>`:
///
/// ```compile_fail
/// use gorgon_workflows::{Step, StepContext, StepResponse, StepResult, Workflow};
/// #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Order { id: u32 }
/// #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Product { sku: String }
/// async fn ship(order: Order, _: StepContext) -> StepResult<u32> { Ok(StepResponse::new(order.id)) }
/// let ship = Step::new("ship", ship);
/// let wf = Workflow::define("wrong", |b, product: gorgon_workflows::Handle<Product>| {
///     b.step(&ship, product) // expected `Order`, found `Product`
/// });
/// ```
pub struct Handle<T> {
    slot: usize,
    builder: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Handle<T> {}

impl<T> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handle<{}>#{}", std::any::type_name::<T>(), self.slot)
    }
}

/// The resolved form of some [`Inputs`]; opaque.
#[doc(hidden)]
pub struct Source<T> {
    pub(crate) resolver: Resolver<T>,
    /// The stage whose steps produce the value (`None`: the input, always available).
    pub(crate) stage: Option<usize>,
}

impl<T: Send + 'static> Source<T> {
    /// The source of `f` applied to this source's value (what `#[derive(Inputs)]` builds on).
    #[doc(hidden)]
    pub fn map<U>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Source<U> {
        let resolver = self.resolver;
        Source {
            resolver: Arc::new(move |env: &Env<'_>| Ok(resolver(env)?.map(&f))),
            stage: self.stage,
        }
    }
}

/// What a step, a transform or a hook can take: a [`Handle`]; `()` (no input); a tuple of
/// inputs (up to twelve, nested as deep as needed: the values arrive as a tuple of the same
/// shape); a `Vec` of inputs (the values arrive as a `Vec`); or a struct of handles made by
/// `#[derive(Inputs)]` on the struct of values (Medusa's object inputs). When any part is
/// absent (its step was skipped) the whole is absent.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the input of a step, a transform or a hook",
    note = "an input is a `Handle<T>`, `()`, a tuple of inputs, a `Vec` of inputs, or a `<Struct>Handles` made by `#[derive(Inputs)]`; a `&Handle` is not one: handles are `Copy`, pass them by value"
)]
pub trait Inputs {
    /// The values the handles stand for.
    type Values: Send + 'static;
    #[doc(hidden)]
    fn source(self, builder: &Builder, user: &str) -> Result<Source<Self::Values>, Error>;
}

impl<T: Clone + Send + Sync + 'static> Inputs for Handle<T> {
    type Values = T;
    fn source(self, builder: &Builder, user: &str) -> Result<Source<T>, Error> {
        builder.source_of(self, user)
    }
}

/// No input: for a step that needs none (its function takes `()`).
impl Inputs for () {
    type Values = ();
    fn source(self, _builder: &Builder, _user: &str) -> Result<Source<()>, Error> {
        Ok(Source {
            resolver: Arc::new(|_env: &Env<'_>| Ok(Some(()))),
            stage: None,
        })
    }
}

macro_rules! tuple_inputs {
    ($($name:ident $var:ident),+) => {
        impl<$($name: Inputs),+> Inputs for ($($name,)+) {
            type Values = ($($name::Values,)+);
            fn source(self, builder: &Builder, user: &str) -> Result<Source<Self::Values>, Error> {
                let ($($var,)+) = self;
                let ($($var,)+) = ($($var.source(builder, user)?,)+);
                let stage = [$($var.stage),+].into_iter().flatten().max();
                let ($($var,)+) = ($($var.resolver,)+);
                Ok(Source {
                    resolver: Arc::new(move |env: &Env<'_>| {
                        $(let Some($var) = ($var)(env)? else { return Ok(None) };)+
                        Ok(Some(($($var,)+)))
                    }),
                    stage,
                })
            }
        }
    };
}

/// A list of inputs (the members of a `parallel` block, say) resolves to the list of values.
impl<X: Inputs> Inputs for Vec<X> {
    type Values = Vec<X::Values>;
    fn source(self, builder: &Builder, user: &str) -> Result<Source<Self::Values>, Error> {
        let sources = self
            .into_iter()
            .map(|input| input.source(builder, user))
            .collect::<Result<Vec<_>, _>>()?;
        let stage = sources.iter().filter_map(|s| s.stage).max();
        let resolvers: Vec<_> = sources.into_iter().map(|s| s.resolver).collect();
        Ok(Source {
            resolver: Arc::new(move |env: &Env<'_>| {
                let mut values = Vec::with_capacity(resolvers.len());
                for resolver in &resolvers {
                    let Some(value) = resolver(env)? else {
                        return Ok(None);
                    };
                    values.push(value);
                }
                Ok(Some(values))
            }),
            stage,
        })
    }
}

tuple_inputs!(A a);
tuple_inputs!(A a, B b);
tuple_inputs!(A a, B b, C c);
tuple_inputs!(A a, B b, C c, D d);
tuple_inputs!(A a, B b, C c, D d, E e);
tuple_inputs!(A a, B b, C c, D d, E e, F f);
tuple_inputs!(A a, B b, C c, D d, E e, F f, G g);
tuple_inputs!(A a, B b, C c, D d, E e, F f, G g, H h);
tuple_inputs!(A a, B b, C c, D d, E e, F f, G g, H h, I i);
tuple_inputs!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j);
tuple_inputs!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j, K k);
tuple_inputs!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j, K k, L l);

/// What a `when` body returns: nothing, a handle, or a tuple of those (up to twelve, nested as
/// deep as needed); each handle comes out optional (`None` when the branch did not run).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from a `when` body",
    note = "a `when` body returns `()`, a `Handle<T>` or a tuple of those; each comes out as a `Handle<Option<T>>`"
)]
pub trait Branch {
    /// The handles as seen after the block: `None` when the branch did not run.
    type Output;
    /// Wraps the body's handles.
    fn optional(self, builder: &mut Builder) -> Self::Output;
}

impl Branch for () {
    type Output = ();
    fn optional(self, _: &mut Builder) {}
}

impl<T: Clone + Send + Sync + 'static> Branch for Handle<T> {
    type Output = Handle<Option<T>>;
    fn optional(self, builder: &mut Builder) -> Self::Output {
        builder.optional(self)
    }
}

macro_rules! tuple_branch {
    ($($name:ident $var:ident),+) => {
        impl<$($name: Branch),+> Branch for ($($name,)+) {
            type Output = ($($name::Output,)+);
            fn optional(self, builder: &mut Builder) -> Self::Output {
                let ($($var,)+) = self;
                ($($var.optional(builder),)+)
            }
        }
    };
}

tuple_branch!(A a);
tuple_branch!(A a, B b);
tuple_branch!(A a, B b, C c);
tuple_branch!(A a, B b, C c, D d);
tuple_branch!(A a, B b, C c, D d, E e);
tuple_branch!(A a, B b, C c, D d, E e, F f);
tuple_branch!(A a, B b, C c, D d, E e, F f, G g);
tuple_branch!(A a, B b, C c, D d, E e, F f, G g, H h);
tuple_branch!(A a, B b, C c, D d, E e, F f, G g, H h, I i);
tuple_branch!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j);
tuple_branch!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j, K k);
tuple_branch!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j, K k, L l);

pub(crate) struct StepNode<I, O, C> {
    pub(crate) step: Step<I, O, C>,
    pub(crate) input: Resolver<I>,
    pub(crate) guards: Box<[usize]>,
}

impl<I: Send + 'static, O: Value, C: Value> Node for StepNode<I, O, C> {
    fn invoke(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        let input = match resolve_input(&call, rt, &self.guards, &self.input) {
            Ok(Some(input)) => input,
            Ok(None) => return ready(StepOutcome::Skip),
            Err(error) => return ready(resolution_failure(error)),
        };
        (self.step.invoke)(input, StepContext::new(call, rt, false))
    }

    fn compensate(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        let Some(compensate) = &self.step.compensate else {
            return ready(StepOutcome::Success(None));
        };
        let (input, failed) = match call.response_at(call.step(), HandlerType::Invoke) {
            None => (None, true),
            // In memory the response keeps its type: only the compensation input is cloned.
            Some(data) => match data.downcast_ref::<Saved<O, C>>() {
                Some(saved) => (saved.compensation_input_cloned(), saved.output.is_none()),
                None => match Saved::<O, C>::read(&data) {
                    Ok(saved) => {
                        let failed = saved.output.is_none();
                        (saved.compensation_input(), failed)
                    }
                    Err(e) => {
                        return ready(resolution_failure(Error::Decode {
                            workflow: call.workflow().to_string(),
                            source_name: call.action().to_string(),
                            reason: e.to_string(),
                        }));
                    }
                },
            },
        };
        compensate(input, StepContext::new(call, rt, failed))
    }

    fn external_success(&self, output: Box<dyn Any + Send>) -> Option<Data> {
        let output = output.downcast::<O>().ok()?;
        Some(Saved::<O, C>::success(*output))
    }

    fn output_type(&self) -> &'static str {
        std::any::type_name::<O>()
    }

    fn output_any(&self, data: &Data) -> Result<Option<Box<dyn Any + Send>>, serde_json::Error> {
        let output = match data.downcast_ref::<Saved<O, C>>() {
            Some(saved) => saved.output.clone(),
            None => Saved::<O, C>::read(data)?.output,
        };
        Ok(output.map(|o| Box::new(o) as Box<dyn Any + Send>))
    }
}

type Condition<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// The step of a `when` block: evaluates the condition once per run and saves the decision.
struct DecisionNode<T> {
    input: Resolver<T>,
    condition: Condition<T>,
    guards: Box<[usize]>,
}

impl<T: Send + 'static> Node for DecisionNode<T> {
    fn invoke(&self, call: StepCall, rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        let decision = resolve_input(&call, rt, &self.guards, &self.input)
            .map(|v| v.map(|v| (self.condition)(&v)));
        ready(match decision {
            Ok(Some(taken)) => StepOutcome::Success(Some(Data::new(taken))),
            Ok(None) => StepOutcome::Skip,
            Err(error) => resolution_failure(error),
        })
    }

    fn compensate(&self, _call: StepCall, _rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        ready(StepOutcome::Success(None))
    }

    fn external_success(&self, output: Box<dyn Any + Send>) -> Option<Data> {
        output.downcast::<bool>().ok().map(|b| Data::new(*b))
    }

    fn output_type(&self) -> &'static str {
        "bool"
    }

    fn saves_envelope(&self) -> bool {
        false
    }
}

pub(crate) struct Slot {
    resolver: Box<dyn Any + Send + Sync>,
    stage: Option<usize>,
}

static BUILDER_IDS: AtomicU64 = AtomicU64::new(1);

/// What a workflow's composer receives: it adds steps in order and hands out typed handles.
///
/// The composer runs once, when the workflow is defined; it never performs I/O. Steps are
/// chained in the order they are added (each after the previous one, as Medusa's composer does);
/// [`parallel`](Self::parallel) makes its steps siblings, and the next step waits for all of
/// them. Mistakes (a step name used twice, a handle from another workflow, a dependency between
/// parallel siblings) are collected and returned by [`Workflow::define`](crate::Workflow::define)
/// as a typed [`Error`].
pub struct Builder {
    workflow: Arc<str>,
    id: u64,
    stages: Vec<Vec<usize>>,
    nodes: Vec<NodeDef>,
    slots: Vec<Slot>,
    names: HashSet<String>,
    pub(crate) guards: Vec<usize>,
    parallel: Option<usize>,
    /// How many guards were active when the `parallel` block began.
    parallel_guards: usize,
    error: Option<Error>,
    pub(crate) children: Vec<Arc<Compiled>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("workflow", &self.workflow)
            .field("steps", &self.nodes.len())
            .finish()
    }
}

impl Builder {
    pub(crate) fn new(workflow: Arc<str>) -> Self {
        Builder {
            workflow,
            id: BUILDER_IDS.fetch_add(1, Ordering::Relaxed),
            stages: Vec::new(),
            nodes: Vec::new(),
            slots: Vec::new(),
            names: HashSet::new(),
            guards: Vec::new(),
            parallel: None,
            parallel_guards: 0,
            error: None,
            children: Vec::new(),
        }
    }

    /// The name of the workflow being defined.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    pub(crate) fn fail(&mut self, error: Error) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    pub(crate) fn slot<T: 'static>(
        &mut self,
        resolver: Resolver<T>,
        stage: Option<usize>,
    ) -> Handle<T> {
        self.slots.push(Slot {
            resolver: Box::new(resolver),
            stage,
        });
        Handle {
            slot: self.slots.len() - 1,
            builder: self.id,
            _type: PhantomData,
        }
    }

    pub(crate) fn source_of<T: 'static>(
        &self,
        handle: Handle<T>,
        user: &str,
    ) -> Result<Source<T>, Error> {
        let foreign = || Error::ForeignHandle {
            workflow: self.workflow.to_string(),
            step: user.to_string(),
        };
        if handle.builder != self.id {
            return Err(foreign());
        }
        let slot = self.slots.get(handle.slot).ok_or_else(foreign)?;
        let resolver = slot
            .resolver
            .downcast_ref::<Resolver<T>>()
            .ok_or_else(foreign)?;
        Ok(Source {
            resolver: resolver.clone(),
            stage: slot.stage,
        })
    }

    /// A source that resolves to an error; stands in after a definition error.
    fn broken<T: 'static>(&self) -> Source<T> {
        Source {
            resolver: Arc::new(|env: &Env<'_>| {
                Err(Error::NotRegistered {
                    workflow: env.workflow.to_string(),
                })
            }),
            stage: None,
        }
    }

    pub(crate) fn input<In: Value>(&mut self) -> Handle<In> {
        let resolver: Resolver<In> = Arc::new(|env: &Env<'_>| {
            // In memory the payload and the input keep their types: two downcasts and a clone.
            let typed = env.payload().downcast_ref::<Payload>();
            match typed.and_then(|p| p.input.downcast_ref::<In>()) {
                Some(input) => Ok(Some(input.clone())),
                None => decode_input(env).map(Some),
            }
        });
        self.slot(resolver, None)
    }

    /// The stage the next node goes into.
    pub(crate) fn next_stage(&self) -> usize {
        self.parallel.unwrap_or(self.stages.len())
    }

    pub(crate) fn add_node(&mut self, def: NodeDef, stage: usize) -> usize {
        if !self.names.insert(def.name.to_string()) {
            self.fail(Error::DuplicateStep {
                workflow: self.workflow.to_string(),
                step: def.name.to_string(),
            });
        }
        let node = self.nodes.len();
        self.nodes.push(def);
        if stage == self.stages.len() {
            self.stages.push(Vec::new());
        }
        self.stages[stage].push(node);
        node
    }

    pub(crate) fn checked_source<X: Inputs>(
        &mut self,
        inputs: X,
        user: &str,
        stage: usize,
    ) -> Source<X::Values> {
        match inputs.source(self, user) {
            Ok(source) => {
                if source.stage.is_some_and(|s| s >= stage) {
                    self.fail(Error::ParallelDependency {
                        workflow: self.workflow.to_string(),
                        step: user.to_string(),
                    });
                }
                source
            }
            Err(error) => {
                self.fail(error);
                self.broken()
            }
        }
    }

    /// Adds `step` after the previous one (or beside its parallel siblings), fed with `input`;
    /// returns the handle of its output.
    ///
    /// At run time the step is skipped when its input is absent (the step producing it was
    /// skipped) or when an enclosing `when` was not taken.
    pub fn step<I, O, C>(
        &mut self,
        step: &Step<I, O, C>,
        input: impl Inputs<Values = I>,
    ) -> Handle<O>
    where
        I: Send + 'static,
        O: Value,
        C: Value,
    {
        let stage = self.next_stage();
        let source = self.checked_source(input, &step.name, stage);
        let mut options = step.options.clone();
        if step.compensate.is_none() {
            options.no_compensation = Some(true);
        }
        let node = Arc::new(StepNode {
            step: step.clone(),
            input: source.resolver,
            guards: self.guards.clone().into_boxed_slice(),
        });
        self.add_output_node::<O, C>(
            NodeDef {
                name: step.name.clone(),
                options,
                node,
                requires: step.requires.clone(),
                hook: None,
            },
            stage,
        )
    }

    /// Adds a node whose response is a `Saved<O, C>`, and returns the handle of its output.
    pub(crate) fn add_output_node<O: Value, C: Value>(
        &mut self,
        def: NodeDef,
        stage: usize,
    ) -> Handle<O> {
        let name = def.name.clone();
        let index = self.add_node(def, stage);
        let workflow = self.workflow.clone();
        let resolver: Resolver<O> = Arc::new(move |env: &Env<'_>| {
            env.with_response(index, |data| match data {
                None => Ok(None),
                Some(data) => match data.downcast_ref::<Saved<O, C>>() {
                    Some(saved) => Ok(saved.output.clone()),
                    None => decode_output::<O, C>(data, &workflow, &name),
                },
            })
        });
        self.slot(resolver, Some(stage))
    }

    /// A value computed from other values by a pure function. No step is created: the function
    /// runs whenever a step (or the result) needs the value, so it is recomputed on resume and
    /// must not have side effects.
    pub fn transform<X, U, F>(&mut self, inputs: X, f: F) -> Handle<U>
    where
        X: Inputs,
        U: Clone + Send + Sync + 'static,
        F: Fn(X::Values) -> U + Send + Sync + 'static,
    {
        let stage = self.next_stage();
        let source = self.checked_source(inputs, "transform", stage);
        let input = source.resolver;
        let guards: Box<[usize]> = self.guards.clone().into_boxed_slice();
        let resolver: Resolver<U> = Arc::new(move |env: &Env<'_>| {
            if !guards.is_empty() && !env.guards_pass(&guards)? {
                return Ok(None);
            }
            Ok(input(env)?.map(&f))
        });
        self.slot(resolver, source.stage)
    }

    /// A handle to a value known at definition: for a step or transform input that is a
    /// constant. It is part of the definition (not saved with the run).
    pub fn constant<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Handle<T> {
        let resolver: Resolver<T> = Arc::new(move |_env: &Env<'_>| Ok(Some(value.clone())));
        self.slot(resolver, None)
    }

    /// The value of `handle`, or `None` when it is absent (its step was skipped, its `when`
    /// not taken), instead of skipping the steps that consume it.
    pub fn optional<T: Clone + Send + Sync + 'static>(
        &mut self,
        handle: Handle<T>,
    ) -> Handle<Option<T>> {
        let source = match self.source_of(handle, "optional") {
            Ok(source) => source,
            Err(error) => {
                self.fail(error);
                self.broken()
            }
        };
        let input = source.resolver;
        let resolver: Resolver<Option<T>> = Arc::new(move |env: &Env<'_>| Ok(Some(input(env)?)));
        self.slot(resolver, source.stage)
    }

    /// Runs the steps `body` adds only when `condition` holds for `inputs`.
    ///
    /// The condition is evaluated once per run, by a step named `name`, and its decision is saved
    /// as that step's response: a resumed run takes the same branch even if the condition would
    /// now say otherwise. The handles the body returns come out optional (`None` when the
    /// branch did not run). Inside [`parallel`](Self::parallel), the block's steps are members
    /// of the parallel group and the decision runs just before the group (a `when` nested in
    /// another `when` inside `parallel` is refused).
    pub fn when<X, R, F>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        inputs: X,
        condition: F,
        body: impl FnOnce(&mut Builder) -> R,
    ) -> R::Output
    where
        X: Inputs,
        R: Branch,
        F: Fn(&X::Values) -> bool + Send + Sync + 'static,
    {
        let name = name.into();
        // Inside `parallel`, the decision runs in the stage before the block's members.
        let stage = match self.parallel {
            Some(members) => {
                if self.guards.len() > self.parallel_guards {
                    self.fail(Error::NotInParallel {
                        workflow: self.workflow.to_string(),
                        what: "a `when` nested in a `when`",
                        step: name.to_string(),
                    });
                }
                members - 1
            }
            None => self.next_stage(),
        };
        let source = self.checked_source(inputs, &name, stage);
        let node = Arc::new(DecisionNode {
            input: source.resolver,
            condition: Arc::new(condition) as Condition<X::Values>,
            guards: self.guards.clone().into_boxed_slice(),
        });
        let index = self.add_node(
            NodeDef {
                name,
                options: StepOptions {
                    no_compensation: Some(true),
                    ..StepOptions::default()
                },
                node,
                requires: Vec::new(),
                hook: None,
            },
            stage,
        );
        self.guards.push(index);
        let branch = body(self);
        self.guards.pop();
        branch.optional(self)
    }

    /// Makes the steps `body` adds run in parallel (siblings in the flow); the step after the
    /// block waits for all of them. Returns what the body returns (their handles). A step of the
    /// block cannot consume the output of another step of the same block.
    ///
    /// The synchronous steps of a parallel round are polled together on the run's task: their
    /// awaits (I/O, timers) overlap, but CPU-bound work in one holds up the others. Give heavy
    /// computation to `tokio::task::spawn_blocking` inside the step, or make the step
    /// [`background_execution`](crate::Step::background_execution), which runs on a task of
    /// its own.
    pub fn parallel<R>(&mut self, body: impl FnOnce(&mut Builder) -> R) -> R {
        if self.parallel.is_some() {
            return body(self);
        }
        // A stage for the decisions of `when` blocks inside, then the members' stage; empty
        // stages are left out of the flow.
        self.stages.push(Vec::new());
        self.stages.push(Vec::new());
        self.parallel = Some(self.stages.len() - 1);
        self.parallel_guards = self.guards.len();
        let out = body(self);
        self.parallel = None;
        out
    }

    /// What the composer produced: the stages, the nodes, the child workflows.
    pub(crate) fn finish(self) -> Result<Composed, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        Ok(Composed {
            stages: self.stages,
            nodes: self.nodes,
            children: self.children,
        })
    }

    pub(crate) fn result<Out: 'static>(&mut self, handle: Handle<Out>) -> Resolver<Out> {
        match self.source_of(handle, "the workflow result") {
            Ok(source) => source.resolver,
            Err(error) => {
                self.fail(error);
                self.broken().resolver
            }
        }
    }
}
