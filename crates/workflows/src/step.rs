//! Steps: [`Step`], [`StepResponse`] and the step options.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use gorgon_orchestration::flow::SkipOnPermanentFailure;
use gorgon_orchestration::{Data, StepError, StepOptions, StepOutcome};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::StepContext;
use crate::error::StepFailure;
use crate::services::Requirement;

/// A value that crosses a checkpoint: a workflow input, a step output or compensation input.
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Value for T {}

/// What a step function returns: `Ok(StepResponse)` or `Err(StepFailure)`.
pub type StepResult<O, C = O> = Result<StepResponse<O, C>, StepFailure>;

/// A step's answer: its output and, separately, its compensation input (Medusa's `StepResponse`).
#[derive(Clone, Debug)]
pub struct StepResponse<O, C = O> {
    pub(crate) kind: Kind<O, C>,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind<O, C> {
    Done {
        output: O,
        compensation: Comp<C>,
    },
    Skip,
    Wait,
    Permanent {
        message: String,
        compensation: Option<C>,
    },
}

#[derive(Clone, Debug)]
pub(crate) enum Comp<C> {
    Output,
    Value(C),
}

impl<O> StepResponse<O, O> {
    /// A success whose compensation input is the output itself.
    pub fn new(output: O) -> Self {
        StepResponse {
            kind: Kind::Done {
                output,
                compensation: Comp::Output,
            },
        }
    }
}

impl<O, C> StepResponse<O, C> {
    /// The same response with another compensation input (for a success or a permanent failure).
    pub fn with_compensation<C2>(self, compensation: C2) -> StepResponse<O, C2> {
        let kind = match self.kind {
            Kind::Done { output, .. } => Kind::Done {
                output,
                compensation: Comp::Value(compensation),
            },
            Kind::Permanent { message, .. } => Kind::Permanent {
                message,
                compensation: Some(compensation),
            },
            Kind::Skip => Kind::Skip,
            Kind::Wait => Kind::Wait,
        };
        StepResponse { kind }
    }
    /// A permanent failure: never retried, the run is compensated (this step's compensation
    /// included, with `None` unless [`with_compensation`](Self::with_compensation) gives data).
    pub fn permanent_failure(message: impl Into<String>) -> Self {
        StepResponse {
            kind: Kind::Permanent {
                message: message.into(),
                compensation: None,
            },
        }
    }
    /// A permanent failure whose compensation input is `compensation` (Medusa's
    /// `StepResponse.permanentFailure(message, compensateInput)`).
    pub fn permanent_failure_with(message: impl Into<String>, compensation: C) -> Self {
        StepResponse {
            kind: Kind::Permanent {
                message: message.into(),
                compensation: Some(compensation),
            },
        }
    }
    /// Skips the step: it ends `skipped`, and the steps consuming its output are skipped too
    /// (read it through [`Builder::optional`](crate::Builder::optional) to get `None` instead).
    pub fn skip() -> Self {
        StepResponse { kind: Kind::Skip }
    }
    /// For an [`asynchronous`](Step::asynchronous) step: the work was started, the step waits for
    /// [`App::set_step_success`](crate::App::set_step_success) or `set_step_failure`.
    pub fn wait() -> Self {
        StepResponse { kind: Kind::Wait }
    }
}

/// What is saved as a step's response: its output and its compensation input.
///
/// A field is absent when there is no value, and present (even as `null`) when there is one, so
/// an output of type `Option<T>` that is `None` survives a store.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "O: Deserialize<'de>, C: Deserialize<'de>"))]
pub(crate) struct Saved<O, C> {
    #[serde(
        default = "none",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub(crate) output: Option<O>,
    #[serde(
        default = "none",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub(crate) compensation: Option<C>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) compensation_is_output: bool,
}

fn none<T>() -> Option<T> {
    None
}

fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Moves `a` into a `B` when they are the same type.
pub(crate) fn cast<A: 'static, B: 'static>(a: A) -> Option<B> {
    let mut slot = Some(a);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B>>()
        .and_then(Option::take)
}

impl<O: Value, C: Value> Saved<O, C> {
    pub(crate) fn read(data: &Data) -> Result<Self, serde_json::Error> {
        data.decode::<Self>()
    }
    /// The compensation input.
    pub(crate) fn compensation_input(self) -> Option<C> {
        if self.compensation_is_output {
            self.output.and_then(cast::<O, C>)
        } else {
            self.compensation
        }
    }
    /// The compensation input of a borrowed response (only the part it is made of is cloned).
    pub(crate) fn compensation_input_cloned(&self) -> Option<C> {
        if self.compensation_is_output {
            self.output.clone().and_then(cast::<O, C>)
        } else {
            self.compensation.clone()
        }
    }
    pub(crate) fn success(output: O) -> Data {
        Data::new(Saved::<O, C> {
            output: Some(output),
            compensation: None,
            compensation_is_output: true,
        })
    }
}

pub(crate) type InvokeFn<I> =
    dyn Fn(I, StepContext) -> BoxFuture<'static, StepOutcome> + Send + Sync;
pub(crate) type CompensateFn<C> =
    dyn Fn(Option<C>, StepContext) -> BoxFuture<'static, StepOutcome> + Send + Sync;

/// A step: a stable name, an async invoke from `I` to `O`, an optional async compensation that
/// receives the compensation input `C` (by default `O`), and Medusa's step options.
///
/// Define it once (a `static`-like value built at start-up) and use it in any number of
/// workflows; within one workflow each use needs its own name ([`named`](Self::named)).
///
/// ```
/// use gorgon_workflows::{Step, StepContext, StepResponse, StepResult};
///
/// async fn reserve(quantity: u32, _ctx: StepContext) -> StepResult<String> {
///     Ok(StepResponse::new(format!("reservation-for-{quantity}")))
/// }
/// async fn release(reservation: Option<String>, _ctx: StepContext) -> Result<(), gorgon_workflows::StepFailure> {
///     let _ = reservation; // None when the invoke failed without compensation data
///     Ok(())
/// }
/// let step = Step::new("reserve", reserve).compensate(release).max_retries(2);
/// assert_eq!(step.name(), "reserve");
/// ```
pub struct Step<I, O, C = O> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) options: StepOptions,
    pub(crate) invoke: Arc<InvokeFn<I>>,
    pub(crate) compensate: Option<Arc<CompensateFn<C>>>,
    pub(crate) requires: Vec<Requirement>,
    _types: PhantomData<fn() -> (O, C)>,
}

impl<I, O, C> Clone for Step<I, O, C> {
    fn clone(&self) -> Self {
        Step {
            name: self.name.clone(),
            options: self.options.clone(),
            invoke: self.invoke.clone(),
            compensate: self.compensate.clone(),
            requires: self.requires.clone(),
            _types: PhantomData,
        }
    }
}

impl<I, O, C> std::fmt::Debug for Step<I, O, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("compensates", &self.compensate.is_some())
            .finish()
    }
}

pub(crate) fn outcome<O: Value, C: Value>(result: StepResult<O, C>) -> StepOutcome {
    match result {
        Ok(StepResponse { kind }) => match kind {
            Kind::Done {
                output,
                compensation,
            } => {
                let saved = match compensation {
                    Comp::Output => Saved::<O, C> {
                        output: Some(output),
                        compensation: None,
                        compensation_is_output: true,
                    },
                    Comp::Value(c) => Saved {
                        output: Some(output),
                        compensation: Some(c),
                        compensation_is_output: false,
                    },
                };
                StepOutcome::Success(Some(Data::new(saved)))
            }
            Kind::Skip => StepOutcome::Skip,
            Kind::Wait => StepOutcome::Success(None),
            Kind::Permanent {
                message,
                compensation,
            } => StepOutcome::Failure {
                error: StepError::new(message),
                permanent: true,
                response: compensation.map(|c| {
                    Data::new(Saved::<O, C> {
                        output: None,
                        compensation: Some(c),
                        compensation_is_output: false,
                    })
                }),
            },
        },
        Err(failure) => failure_outcome(failure),
    }
}

fn compensation_outcome(result: Result<(), StepFailure>) -> StepOutcome {
    match result {
        Ok(()) => StepOutcome::Success(None),
        Err(failure) => failure_outcome(failure),
    }
}

pub(crate) fn failure_outcome(failure: StepFailure) -> StepOutcome {
    StepOutcome::Failure {
        error: failure.error,
        permanent: failure.permanent,
        response: None,
    }
}

impl<I, O, C> Step<I, O, C>
where
    I: Send + 'static,
    O: Value,
    C: Value,
{
    /// A step named `name` whose invoke is `invoke(input, ...)`: an async function of the
    /// step's input followed by what it needs from the run, each parameter taken by its type
    /// ([`FromStepContext`]): the [`StepContext`], and the [`Service`]s it uses. A service named
    /// in the signature is declared once: registering a workflow that uses the step on an app
    /// without that service fails, naming the step and the type. Without a
    /// [`compensate`](Self::compensate) the step has nothing to undo (`noCompensation`).
    ///
    /// ```
    /// use gorgon_workflows::{Service, Step, StepContext, StepResponse, StepResult};
    /// struct Inventory;
    /// impl Inventory { fn reserve(&self, sku: &str) -> String { format!("res-{sku}") } }
    ///
    /// async fn reserve(sku: String, inventory: Service<Inventory>) -> StepResult<String> {
    ///     Ok(StepResponse::new(inventory.reserve(&sku)))
    /// }
    /// async fn log(sku: String, ctx: StepContext) -> StepResult<()> {
    ///     println!("{} {sku}", ctx.transaction_id());
    ///     Ok(StepResponse::new(()))
    /// }
    /// let reserve = Step::new("reserve", reserve); // requires `Inventory`
    /// let log = Step::new("log", log);
    /// # let _ = (reserve, log);
    /// ```
    pub fn new<F, Args>(name: impl Into<Cow<'static, str>>, invoke: F) -> Self
    where
        F: StepFn<I, StepResult<O, C>, Args>,
    {
        let invoke: Arc<InvokeFn<I>> =
            Arc::new(move |input, ctx| Box::pin(invoke.call(input, ctx).map(outcome)));
        Step {
            name: name.into(),
            options: StepOptions::default(),
            invoke,
            compensate: None,
            requires: F::requirements(),
            _types: PhantomData,
        }
    }

    /// The compensation: called with the compensation input (`None` when the invoke failed
    /// without data) when the run rolls back; its other parameters are taken by type, as the
    /// invoke's are ([`Step::new`]).
    pub fn compensate<F, Args>(mut self, compensate: F) -> Self
    where
        F: StepFn<Option<C>, Result<(), StepFailure>, Args>,
    {
        for requirement in F::requirements() {
            if !self.requires.contains(&requirement) {
                self.requires.push(requirement);
            }
        }
        self.compensate = Some(Arc::new(move |input, ctx| {
            Box::pin(compensate.call(input, ctx).map(compensation_outcome))
        }));
        self
    }
}

/// What a step function takes after its input, by type: the [`StepContext`] itself, a
/// [`Service`] from the app's registry, or anything a user implements it for (a database
/// handle, say). Like axum's extractors.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a step function",
    note = "a step function takes its input, then `StepContext`, `Service<T>`, or a type implementing `FromStepContext`"
)]
pub trait FromStepContext: Sized + Send + 'static {
    /// Takes the value from the run's context. A failure fails the step.
    fn from_context(ctx: &StepContext) -> Result<Self, StepFailure>;
    /// [`from_context`](Self::from_context) for the last parameter, which may take the
    /// context itself.
    fn from_owned_context(ctx: StepContext) -> Result<Self, StepFailure> {
        Self::from_context(&ctx)
    }
    /// The service this parameter needs from the app's registry, checked at registration.
    fn requirement() -> Option<Requirement> {
        None
    }
}

impl FromStepContext for StepContext {
    fn from_context(ctx: &StepContext) -> Result<Self, StepFailure> {
        Ok(ctx.clone())
    }
    fn from_owned_context(ctx: StepContext) -> Result<Self, StepFailure> {
        Ok(ctx)
    }
}

/// A service of the app's registry, as a step function's parameter: the step declares it by
/// naming it, so registering a workflow on an app that lacks it fails up front. Dereferences
/// to the service.
pub struct Service<T: ?Sized>(Arc<T>);

impl<T: ?Sized> Service<T> {
    /// The shared service.
    pub fn into_inner(self) -> Arc<T> {
        self.0
    }
}

impl<T: ?Sized> From<Arc<T>> for Service<T> {
    /// Wraps a shared service (code outside steps that takes services the same way).
    fn from(service: Arc<T>) -> Self {
        Service(service)
    }
}

impl<T: ?Sized> std::ops::Deref for Service<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> Clone for Service<T> {
    fn clone(&self) -> Self {
        Service(self.0.clone())
    }
}

impl<T: ?Sized> std::fmt::Debug for Service<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Service<{}>", std::any::type_name::<T>())
    }
}

impl<T: ?Sized + Send + Sync + 'static> FromStepContext for Service<T> {
    fn from_context(ctx: &StepContext) -> Result<Self, StepFailure> {
        Ok(Service(ctx.service::<T>()?))
    }
    fn requirement() -> Option<Requirement> {
        Some(Requirement::of::<T>())
    }
}

/// An async function a step runs: its first parameter is the input `I`, the others are taken
/// from the run by type ([`FromStepContext`]); it returns `R`. Implemented for functions and
/// closures of up to seven such parameters; `Args` tells the arities apart.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a step function taking `{I}` and returning `{R}`",
    note = "a step function is `async fn(input, ...) -> StepResult<O, C>` (a compensation: `async fn(Option<C>, ...) -> Result<(), StepFailure>`), whose other parameters are `StepContext`, `Service<T>` or another `FromStepContext`"
)]
pub trait StepFn<I, R, Args>: Send + Sync + 'static {
    /// The future of one call.
    type Future: Future<Output = R> + Send + 'static;
    /// Calls the function with the input and what it takes from `ctx`.
    fn call(&self, input: I, ctx: StepContext) -> Self::Future;
    /// The services its parameters need.
    fn requirements() -> Vec<Requirement>;
}

/// A failed extraction, as the step function's result type.
pub trait FromFailure {
    /// The result of a step that could not take its parameters.
    fn from_failure(failure: StepFailure) -> Self;
}

impl<O, C> FromFailure for StepResult<O, C> {
    fn from_failure(failure: StepFailure) -> Self {
        Err(failure)
    }
}

impl FromFailure for Result<(), StepFailure> {
    fn from_failure(failure: StepFailure) -> Self {
        Err(failure)
    }
}

impl<F, Fut, I, R> StepFn<I, R, ()> for F
where
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    I: Send + 'static,
    R: FromFailure + Send + 'static,
{
    type Future = Fut;
    fn call(&self, input: I, _ctx: StepContext) -> Fut {
        self(input)
    }
    fn requirements() -> Vec<Requirement> {
        Vec::new()
    }
}

macro_rules! step_fn {
    ($($first:ident)*; $last:ident) => {
        impl<F, Fut, I, R, $($first,)* $last> StepFn<I, R, ($($first,)* $last,)> for F
        where
            F: Fn(I, $($first,)* $last) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            I: Send + 'static,
            R: FromFailure + Send + 'static,
            $($first: FromStepContext,)*
            $last: FromStepContext,
        {
            type Future = futures::future::Either<std::future::Ready<R>, Fut>;
            #[allow(non_snake_case)]
            fn call(&self, input: I, ctx: StepContext) -> Self::Future {
                use futures::future::Either;
                $(
                    let $first = match $first::from_context(&ctx) {
                        Ok(value) => value,
                        Err(failure) => return Either::Left(std::future::ready(R::from_failure(failure))),
                    };
                )*
                let $last = match $last::from_owned_context(ctx) {
                    Ok(value) => value,
                    Err(failure) => return Either::Left(std::future::ready(R::from_failure(failure))),
                };
                Either::Right(self(input, $($first,)* $last))
            }
            fn requirements() -> Vec<Requirement> {
                [$($first::requirement(),)* $last::requirement()].into_iter().flatten().collect()
            }
        }
    };
}

step_fn!(; A1);
step_fn!(A1; A2);
step_fn!(A1 A2; A3);
step_fn!(A1 A2 A3; A4);
step_fn!(A1 A2 A3 A4; A5);
step_fn!(A1 A2 A3 A4 A5; A6);
step_fn!(A1 A2 A3 A4 A5 A6; A7);

impl<I, O, C> Step<I, O, C> {
    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The step's options, as the orchestrator reads them.
    pub fn options(&self) -> &StepOptions {
        &self.options
    }
    /// The same step under another name: how one step is used twice in a workflow.
    pub fn named(&self, name: impl Into<Cow<'static, str>>) -> Self {
        let mut step = self.clone();
        step.name = name.into();
        step
    }
    /// Declares that the step needs the service `T`: registering a workflow using the step on an
    /// app whose registry lacks it fails with [`Error::MissingService`](crate::Error::MissingService).
    pub fn requires<T: ?Sized + 'static>(mut self) -> Self {
        self.requires.push(Requirement::of::<T>());
        self
    }
    /// Replaces all options at once.
    pub fn with_options(mut self, options: StepOptions) -> Self {
        self.options = options;
        self
    }
    /// Re-tries after a temporary failure (default 0): the invoke runs at most `n + 1` times.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.options.max_retries = Some(n);
        self
    }
    /// `false`: a temporarily failed step waits for the next resume instead of retrying at once.
    pub fn auto_retry(mut self, auto: bool) -> Self {
        self.options.auto_retry = Some(auto);
        self
    }
    /// The time between retries (retries are then driven by a timer; the run returns waiting).
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.options.retry_interval = Some(interval.as_secs_f64());
        self
    }
    /// Re-invokes a step still waiting for its async response after this time.
    pub fn retry_interval_awaiting(mut self, interval: Duration) -> Self {
        self.options.retry_interval_awaiting = Some(interval.as_secs_f64());
        self
    }
    /// The cap on awaiting re-invocations.
    pub fn max_awaiting_retries(mut self, n: u32) -> Self {
        self.options.max_awaiting_retries = Some(n);
        self
    }
    /// Marks the step `timeout` (a permanent failure) when it has not finished this long after its
    /// first start. Like Medusa, the handler is not interrupted.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout.as_secs_f64());
        self
    }
    /// The invoke runs in the background and the step waits for
    /// [`App::set_step_success`](crate::App::set_step_success) / `set_step_failure` (return
    /// [`StepResponse::wait`]), unless [`background_execution`](Self::background_execution).
    pub fn asynchronous(mut self) -> Self {
        self.options.is_async = Some(true);
        self
    }
    /// The compensation runs in the background and waits for an external answer.
    pub fn compensate_asynchronous(mut self) -> Self {
        self.options.compensate_async = Some(true);
        self
    }
    /// An asynchronous step completes by itself with what its invoke returns.
    pub fn background_execution(mut self) -> Self {
        self.options.is_async = Some(true);
        self.options.background_execution = Some(true);
        self
    }
    /// The steps after this one start without waiting for it (or its parallel siblings).
    pub fn no_wait(mut self) -> Self {
        self.options.no_wait = Some(true);
        self
    }
    /// On permanent failure the step stays failed and the run goes on.
    pub fn continue_on_permanent_failure(mut self) -> Self {
        self.options.continue_on_permanent_failure = Some(true);
        self
    }
    /// On permanent failure every later step is skipped and the run ends `done`.
    pub fn skip_on_permanent_failure(mut self) -> Self {
        self.options.skip_on_permanent_failure = Some(SkipOnPermanentFailure::All(true));
        self
    }
    /// On permanent failure the later steps are skipped up to the named one, which runs.
    pub fn skip_on_permanent_failure_until(mut self, step: impl Into<String>) -> Self {
        self.options.skip_on_permanent_failure = Some(SkipOnPermanentFailure::Until(step.into()));
        self
    }
    /// Forces a durable checkpoint around this step.
    pub fn store(mut self) -> Self {
        self.options.store = Some(true);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_store<O: Value, C: Value>(data: &Data) -> Saved<O, C> {
        let json = serde_json::to_string(data).unwrap();
        let stored: Data = serde_json::from_str(&json).unwrap();
        assert!(stored.downcast_ref::<Saved<O, C>>().is_none());
        Saved::read(&stored).unwrap()
    }

    #[test]
    fn a_none_output_survives_a_store() {
        let saved = through_store::<Option<u32>, Option<u32>>(
            &Saved::<Option<u32>, Option<u32>>::success(None),
        );
        assert_eq!(saved.output, Some(None));
        assert_eq!(saved.compensation_input(), Some(None));
    }

    #[test]
    fn outcomes_keep_output_and_compensation_apart() {
        let StepOutcome::Success(Some(data)) =
            outcome::<u32, String>(Ok(StepResponse::new(7).with_compensation("undo".into())))
        else {
            panic!("expected a success");
        };
        let saved = through_store::<u32, String>(&data);
        assert_eq!(saved.output, Some(7));
        assert_eq!(saved.compensation_input(), Some("undo".to_string()));

        let StepOutcome::Failure {
            permanent,
            response: Some(data),
            error,
        } = outcome::<u32, Vec<u8>>(Ok(StepResponse::permanent_failure_with("no", vec![1])))
        else {
            panic!("expected a failure with data");
        };
        assert!(permanent);
        assert_eq!(error.message, "no");
        let saved = through_store::<u32, Vec<u8>>(&data);
        assert_eq!(saved.output, None);
        assert_eq!(saved.compensation_input(), Some(vec![1]));

        assert!(matches!(
            outcome::<u32, u32>(Ok(StepResponse::skip())),
            StepOutcome::Skip
        ));
        assert!(matches!(
            outcome::<u32, u32>(Err(StepFailure::new("later"))),
            StepOutcome::Failure {
                permanent: false,
                response: None,
                ..
            }
        ));
    }

    #[test]
    fn option_builders_set_medusas_options() {
        async fn id(n: u32, _ctx: StepContext) -> StepResult<u32> {
            Ok(StepResponse::new(n))
        }
        let step = Step::new("s", id)
            .max_retries(3)
            .auto_retry(false)
            .retry_interval(Duration::from_millis(1500))
            .retry_interval_awaiting(Duration::from_secs(2))
            .max_awaiting_retries(4)
            .timeout(Duration::from_secs(30))
            .asynchronous()
            .compensate_asynchronous()
            .no_wait()
            .continue_on_permanent_failure()
            .skip_on_permanent_failure_until("later")
            .store();
        let o = step.options();
        assert_eq!(o.max_retries, Some(3));
        assert_eq!(o.auto_retry, Some(false));
        assert_eq!(o.retry_interval, Some(1.5));
        assert_eq!(o.retry_interval_awaiting, Some(2.0));
        assert_eq!(o.max_awaiting_retries, Some(4));
        assert_eq!(o.timeout, Some(30.0));
        assert_eq!((o.is_async, o.compensate_async), (Some(true), Some(true)));
        assert_eq!(o.no_wait, Some(true));
        assert_eq!(o.continue_on_permanent_failure, Some(true));
        assert_eq!(o.skip_until(), Some("later"));
        assert_eq!(o.store, Some(true));
        let background = step.named("b").background_execution();
        assert_eq!(background.name(), "b");
        assert_eq!(background.options().background_execution, Some(true));
        assert_eq!(step.name(), "s");
    }

    #[test]
    fn cast_moves_only_between_equal_types() {
        assert_eq!(cast::<u32, u32>(3), Some(3));
        assert_eq!(cast::<u32, u64>(3), None);
    }

    #[test]
    fn a_borrowed_response_gives_the_same_compensation_input() {
        let responses = [
            Saved::<u32, u32> {
                output: Some(7),
                compensation: None,
                compensation_is_output: true,
            },
            Saved {
                output: Some(7),
                compensation: Some(3),
                compensation_is_output: false,
            },
            Saved {
                output: None,
                compensation: None,
                compensation_is_output: false,
            },
        ];
        for saved in responses {
            assert_eq!(
                saved.compensation_input_cloned(),
                saved.compensation_input()
            );
        }
    }
}
