//! [`StepContext`]: what a step knows about its run, and the run's shared [`WorkflowContext`].

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

use gorgon_event_bus::{EventBus, EventGroup, EventGroupId, EventId, Message};
use gorgon_orchestration::{Data, HandlerType, IdempotencyKey, StepCall};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::node::{Host, Runtime};
use crate::services::Services;

/// The context shared by every step of a run, saved with the run (it crosses checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowContext {
    /// Groups the events the run emits; the run id when the run does not give one.
    pub event_group_id: String,
    /// What the request that started the run said about itself.
    #[serde(default)]
    pub request: RequestMetadata,
}

/// Metadata of the request that started a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMetadata {
    /// The request id, for tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Who asked (a user or an API key id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// Anything else, as small string pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// The payload a run starts with: the typed input and the shared context.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub(crate) input: Data,
    pub(crate) context: Arc<WorkflowContext>,
    /// The run leaves its event group alone when it finishes (nested runs, whose parent
    /// decides; runs started with `RunOptions::hold_events`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) hold_events: bool,
}

impl Payload {
    /// The payload held by `data`: borrowed when typed, decoded when it came from a store.
    pub(crate) fn with<R>(
        data: &Data,
        workflow: &str,
        f: impl FnOnce(&Payload) -> R,
    ) -> Result<R, Error> {
        match data.downcast_ref::<Payload>() {
            Some(payload) => Ok(f(payload)),
            None => {
                let payload: Payload = data.decode().map_err(|e| Error::Decode {
                    workflow: workflow.to_string(),
                    source_name: "input".to_string(),
                    reason: e.to_string(),
                })?;
                Ok(f(&payload))
            }
        }
    }
}

/// The second argument of every step function: the run, the step, the shared context and the
/// application's services.
///
/// Cheap to clone (a reference count); everything is read lazily from the running call.
#[derive(Clone)]
pub struct StepContext {
    call: StepCall,
    /// The services and the app, when the transaction keeps another handler's (a workflow
    /// registered again on another app while it ran); usually they are read from the
    /// transaction's [`handler_data`](StepCall::handler_data).
    own_env: Option<Arc<dyn Any + Send + Sync>>,
    invoke_failed: bool,
}

/// What a step context reads from its app: the services, and the app itself for its event bus.
pub(crate) struct StepEnv {
    pub(crate) services: Arc<Services>,
    /// The app, for its event bus (looked up when a step emits).
    pub(crate) host: Weak<dyn Host>,
}

/// The services of a context whose transaction has no environment (not reached: every context
/// is made by a runtime that sets it).
fn no_services() -> &'static Services {
    static NONE: OnceLock<Services> = OnceLock::new();
    NONE.get_or_init(Services::new)
}

impl std::fmt::Debug for StepContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("workflow", &self.workflow())
            .field("transaction_id", &self.transaction_id())
            .field("step", &self.step_name())
            .field("attempt", &self.attempt())
            .finish()
    }
}

impl StepContext {
    #[inline]
    pub(crate) fn new(call: StepCall, rt: &Runtime, invoke_failed: bool) -> Self {
        // The first call of a transaction leaves the runtime's environment on it; later calls
        // read it there instead of cloning the runtime's `Arc`s, which every transaction of the
        // workflow shares.
        let kept = call.handler_data().get_or_init(|| rt.env.clone());
        let own_env = (!Arc::ptr_eq(kept, &rt.env)).then(|| rt.env.clone());
        StepContext {
            call,
            own_env,
            invoke_failed,
        }
    }

    fn env(&self) -> Option<&StepEnv> {
        self.own_env
            .as_ref()
            .or_else(|| self.call.handler_data().get())
            .and_then(|env| env.downcast_ref::<StepEnv>())
    }
    /// The workflow name.
    pub fn workflow(&self) -> &str {
        self.call.workflow()
    }
    /// The transaction id.
    pub fn transaction_id(&self) -> &str {
        self.call.transaction_id()
    }
    /// The id of this run of the transaction.
    pub fn run_id(&self) -> &str {
        self.call.run_id()
    }
    /// The step's name in the workflow (after any `.named(...)`).
    pub fn step_name(&self) -> &str {
        self.call.action()
    }
    /// The 1-based attempt of the running handler (reset when compensation begins).
    pub fn attempt(&self) -> u32 {
        self.call.attempt()
    }
    /// Whether the invoke or the compensation is running.
    pub fn handler_type(&self) -> HandlerType {
        self.call.handler_type()
    }
    /// The running handler's idempotency key, `<workflow>:<transaction>:<step>:<invoke|compensate>`:
    /// the key to give `App::set_step_success` for an async step, and to deduplicate side effects.
    pub fn idempotency_key(&self) -> IdempotencyKey {
        self.call.idempotency_key()
    }
    /// In a compensation: whether the step's invoke failed (the compensation input is then
    /// `None`, unless a permanent failure carried one).
    pub fn invoke_failed(&self) -> bool {
        self.invoke_failed
    }
    /// The run's shared context (event group id, request metadata). When the run was started
    /// without an event group id, it is the run id.
    pub fn workflow_context(&self) -> Arc<WorkflowContext> {
        let context = Payload::with(self.call.payload(), self.workflow(), |p| p.context.clone())
            .unwrap_or_default();
        if !context.event_group_id.is_empty() {
            return context;
        }
        let mut context = (*context).clone();
        context.event_group_id = self.run_id().to_string();
        Arc::new(context)
    }
    /// The service of type `T` from the application's registry.
    pub fn service<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, Error> {
        self.services()
            .get::<T>()
            .ok_or_else(|| Error::MissingService {
                type_name: std::any::type_name::<T>(),
                workflow: self.workflow().to_string(),
                step: self.step_name().to_string(),
            })
    }
    /// The whole service registry.
    pub fn services(&self) -> &Services {
        match self.env() {
            Some(env) => &env.services,
            None => no_services(),
        }
    }
    /// The orchestrator's call, for what the SDK does not wrap.
    pub fn call(&self) -> &StepCall {
        &self.call
    }

    fn bus(&self) -> Option<Arc<dyn EventBus>> {
        self.env()?.host.upgrade()?.event_bus()
    }

    /// The run's event group id: the context's, else the run id.
    pub fn event_group_id(&self) -> String {
        self.workflow_context().event_group_id.clone()
    }

    /// The run's [`EventGroup`] on the app's bus: what [`emit`](Self::emit) stages into.
    ///
    /// [`Error::NoEventBus`] when the app has none; [`Error::EventBus`] when the context's event
    /// group id is not a valid group id.
    pub fn event_group(&self) -> Result<EventGroup, Error> {
        let group_id = self.event_group_id();
        let Some(bus) = self.bus() else {
            return Err(Error::NoEventBus {
                operation: "emit",
                group_id,
            });
        };
        let id = EventGroupId::new(group_id.clone()).map_err(|source| Error::EventBus {
            operation: "emit",
            group_id,
            source,
        })?;
        Ok(EventGroup::new(bus, id))
    }

    /// The app's event bus itself, to publish at once, outside the run's group (an event that
    /// must go out even if the run rolls back, such as "payment declined").
    pub fn event_bus(&self) -> Result<Arc<dyn EventBus>, Error> {
        self.bus().ok_or_else(|| Error::NoEventBus {
            operation: "event_bus",
            group_id: self.event_group_id(),
        })
    }

    /// Emits an event from this step: `data` is serialized to JSON and the event is **staged** in
    /// the run's event group. It is published when the run finishes done, and dropped when the
    /// run is rolled back (reverted or failed); a nested run's events wait for the outermost run.
    ///
    /// [`Error::NoEventBus`] when the app has no bus; [`Error::EventBus`] for an invalid event
    /// name, a payload that does not serialize, or a failing bus. With `?` in a step, either is
    /// a step failure.
    pub async fn emit(
        &self,
        name: impl Into<String>,
        data: impl Serialize,
    ) -> Result<EventId, Error> {
        let name = name.into();
        let data = serde_json::to_value(data).map_err(|source| Error::EventBus {
            operation: "emit",
            group_id: self.event_group_id(),
            source: gorgon_event_bus::Error::Serialization {
                operation: "emit",
                event_name: name.clone(),
                source,
            },
        })?;
        let ids = self.emit_many(vec![Message::new(name, data)]).await?;
        ids.into_iter().next().ok_or_else(|| Error::EventBus {
            operation: "emit",
            group_id: self.event_group_id(),
            source: gorgon_event_bus::Error::Backend {
                operation: "emit",
                source: "the bus returned no event id".into(),
            },
        })
    }

    /// Emits several events, staged in the run's event group in this order (all or none: one
    /// invalid message stages none); see [`emit`](Self::emit). A group id the messages carry is
    /// replaced by the run's.
    pub async fn emit_many(&self, messages: Vec<Message>) -> Result<Vec<EventId>, Error> {
        let group = self.event_group()?;
        group
            .emit(messages)
            .await
            .map_err(|source| Error::EventBus {
                operation: "emit",
                group_id: group.id().to_string(),
                source,
            })
    }

    /// Drops the events with these names staged so far in the run's group (all steps' events of
    /// those names), e.g. from a compensation that undoes what announced them. Returns how many
    /// were dropped. Events already published (the run finished done, then was cancelled) are
    /// not recalled.
    pub async fn discard_events(&self, names: &[&str]) -> Result<usize, Error> {
        let group = self.event_group().map_err(|error| match error {
            Error::NoEventBus { group_id, .. } => Error::NoEventBus {
                operation: "discard_events",
                group_id,
            },
            other => other,
        })?;
        group
            .discard_events(names)
            .await
            .map_err(|source| Error::EventBus {
                operation: "discard_events",
                group_id: group.id().to_string(),
                source,
            })
    }
}
