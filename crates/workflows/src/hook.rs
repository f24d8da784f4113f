//! Hooks: a workflow declares a named hook with typed data; an application binds a handler step
//! to it ([`App::bind_hook`](crate::App::bind_hook), optionally with its own compensation, which
//! takes part in rollback). An unbound hook is not in the flow at all, so it costs nothing.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use gorgon_orchestration::{Data, StepCall, StepOptions, StepOutcome};

use crate::compose::{Builder, Handle, Inputs, StepNode};
use crate::error::Error;
use crate::node::{Compiled, Composed, HookDecl, Node, NodeDef, Resolver, Runtime, ready};
use crate::step::{Step, Value};

/// A hook: a named point of a workflow where an application can run its own step, with the data
/// `T`, producing `R` (Medusa's `createHook`).
///
/// Declare it next to the workflow, use it in the composer with [`Builder::hook`], and bind a
/// handler on the app with [`App::bind_hook`](crate::App::bind_hook): every use of the
/// workflow on that app runs it, nested uses included.
pub struct Hook<T, R = ()> {
    name: Cow<'static, str>,
    _types: PhantomData<fn(T) -> R>,
}

impl<T, R> Clone for Hook<T, R> {
    fn clone(&self) -> Self {
        Hook {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<T, R> std::fmt::Debug for Hook<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hook({})", self.name)
    }
}

impl<T, R> Hook<T, R> {
    /// A hook with this (stable) name; it is the name of its step in the flow.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Hook {
            name: name.into(),
            _types: PhantomData,
        }
    }
    /// The hook's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The node of an unbound hook; never in the flow, so never called.
struct UnboundHook;

impl Node for UnboundHook {
    fn invoke(&self, _call: StepCall, _rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        ready(StepOutcome::Skip)
    }
    fn compensate(&self, _call: StepCall, _rt: &Runtime) -> BoxFuture<'static, StepOutcome> {
        ready(StepOutcome::Success(None))
    }
    fn external_success(&self, _output: Box<dyn Any + Send>) -> Option<Data> {
        None
    }
    fn output_type(&self) -> &'static str {
        "()"
    }
}

impl Builder {
    /// Declares `hook` here, with `input` as its data. Returns the handler's result: `None`
    /// when no handler is bound (or the handler skipped). Hooks inside a `when` block run only
    /// when the block does.
    pub fn hook<T, R>(
        &mut self,
        hook: &Hook<T, R>,
        input: impl Inputs<Values = T>,
    ) -> Handle<Option<R>>
    where
        T: Send + 'static,
        R: Clone + Send + Sync + 'static,
    {
        let name = hook.name.clone();
        let stage = self.next_stage();
        let source = self.checked_source(input, &name, stage);
        let decl = Arc::new(HookDecl {
            input: Box::new(source.resolver),
            guards: self.guards.clone().into_boxed_slice(),
            types: TypeId::of::<(T, R)>(),
            type_name: std::any::type_name::<Hook<T, R>>(),
        });
        let index = self.add_node(
            NodeDef {
                name: name.clone(),
                options: StepOptions::default(),
                node: Arc::new(UnboundHook),
                requires: Vec::new(),
                hook: Some((decl, false)),
            },
            stage,
        );
        let workflow = self.workflow().to_string();
        let resolver: Resolver<Option<R>> = Arc::new(move |env| {
            let Some(data) = env.response(index) else {
                return Ok(Some(None));
            };
            let output = env.compiled.nodes[index]
                .node
                .output_any(&data)
                .map_err(|e| Error::Decode {
                    workflow: workflow.clone(),
                    source_name: name.to_string(),
                    reason: e.to_string(),
                })?;
            Ok(Some(
                output.and_then(|o| o.downcast::<R>().ok()).map(|o| *o),
            ))
        });
        self.slot(resolver, Some(stage))
    }
}

/// The node of `handler` bound to `hook` in `compiled`: its index in definition order, and the
/// node that replaces the unbound hook.
pub(crate) fn bound_node<T, R, C>(
    compiled: &Compiled,
    hook: &Hook<T, R>,
    handler: &Step<T, R, C>,
) -> Result<(usize, NodeDef), Error>
where
    T: Send + 'static,
    R: Value,
    C: Value,
{
    let unknown = || Error::UnknownHook {
        workflow: compiled.name.to_string(),
        hook: hook.name.to_string(),
    };
    let n = compiled
        .nodes
        .iter()
        .position(|d| d.name == hook.name && d.hook.is_some())
        .ok_or_else(unknown)?;
    let Some((decl, _)) = compiled.nodes[n].hook.clone() else {
        return Err(unknown());
    };
    let input = decl
        .input
        .downcast_ref::<Resolver<T>>()
        .filter(|_| decl.types == TypeId::of::<(T, R)>())
        .ok_or_else(|| Error::HookType {
            workflow: compiled.name.to_string(),
            hook: hook.name.to_string(),
            declared: decl.type_name,
        })?
        .clone();
    let mut options = handler.options.clone();
    if handler.compensate.is_none() {
        options.no_compensation = Some(true);
    }
    let node = NodeDef {
        name: hook.name.clone(),
        options,
        node: Arc::new(StepNode {
            step: handler.clone(),
            input,
            guards: decl.guards.clone(),
        }),
        requires: handler.requires.clone(),
        hook: Some((decl, true)),
    };
    Ok((n, node))
}

impl Compiled {
    /// The same workflow with other nodes (hook handlers bound), compiled again.
    pub(crate) fn with_nodes(&self, nodes: Vec<NodeDef>) -> Result<Compiled, Error> {
        Compiled::build(
            self.name.clone(),
            self.options.clone(),
            Composed {
                stages: self.stages.clone(),
                nodes,
                children: self.children.clone(),
            },
        )
    }
}
