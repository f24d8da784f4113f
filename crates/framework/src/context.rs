//! What subscribers, jobs and scripts are given: their input, then any services they name by
//! type, checked at boot like a step's.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use gorgon_workflows::{Requirement, Service};

use crate::app::App;
use crate::error::BoxError;

/// The running application, as handlers see it.
#[derive(Clone)]
pub struct Context {
    pub(crate) app: App,
}

impl Context {
    /// The application.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// A service from the registry, by type.
    pub fn service<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, BoxError> {
        self.app.workflows().services().get::<T>().ok_or_else(|| {
            format!("no service {} is registered", std::any::type_name::<T>()).into()
        })
    }
}

/// A handler parameter taken from the application by type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler parameter",
    note = "after the input, a subscriber, job or script takes `Service<T>` (a module's service, `Query`, `Links`, `Notifier`…), `App` or the workflow engine's `gorgon_workflows::App`"
)]
pub trait FromContext: Sized + Send + 'static {
    /// Takes the value from the application.
    fn from_context(cx: &Context) -> Result<Self, BoxError>;
    /// The service it needs, checked at boot.
    fn requirement() -> Option<Requirement> {
        None
    }
}

impl<T: ?Sized + Send + Sync + 'static> FromContext for Service<T> {
    fn from_context(cx: &Context) -> Result<Self, BoxError> {
        cx.service::<T>().map(Service::from)
    }
    fn requirement() -> Option<Requirement> {
        Some(Requirement::of::<T>())
    }
}

impl FromContext for App {
    fn from_context(cx: &Context) -> Result<Self, BoxError> {
        Ok(cx.app.clone())
    }
}

impl FromContext for gorgon_workflows::App {
    fn from_context(cx: &Context) -> Result<Self, BoxError> {
        Ok(cx.app.workflows().clone())
    }
}

/// An async function handling an input `In` (an event, a tick, a script's arguments) with up to
/// four more parameters taken from the application ([`FromContext`]); it returns
/// `Result<(), E>` for any error `E`.
#[diagnostic::on_unimplemented(
    message = "this function cannot handle `{In}`",
    note = "a handler is `async fn(input, Service<A>, …) -> Result<(), E>` with the input first and at most four services"
)]
pub trait Handler<In, Args>: Clone + Send + Sync + 'static {
    /// Runs the handler.
    fn call(&self, input: In, cx: Context) -> BoxFuture<'static, Result<(), BoxError>>;
    /// The services its parameters need.
    fn requirements() -> Vec<Requirement>;
}

impl<F, Fut, E, In> Handler<In, ()> for F
where
    F: Fn(In) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
    In: Send + 'static,
{
    fn call(&self, input: In, _cx: Context) -> BoxFuture<'static, Result<(), BoxError>> {
        let run = self(input);
        Box::pin(async move { run.await.map_err(Into::into) })
    }
    fn requirements() -> Vec<Requirement> {
        Vec::new()
    }
}

macro_rules! handler_arity {
    ($($arg:ident),+) => {
        impl<F, Fut, E, In, $($arg),+> Handler<In, ($($arg,)+)> for F
        where
            F: Fn(In, $($arg),+) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<(), E>> + Send + 'static,
            E: Into<BoxError>,
            In: Send + 'static,
            $($arg: FromContext,)+
        {
            #[allow(non_snake_case)]
            fn call(&self, input: In, cx: Context) -> BoxFuture<'static, Result<(), BoxError>> {
                $(
                    let $arg = match $arg::from_context(&cx) {
                        Ok(value) => value,
                        Err(error) => return Box::pin(async move { Err(error) }),
                    };
                )+
                let run = self(input, $($arg),+);
                Box::pin(async move { run.await.map_err(Into::into) })
            }
            fn requirements() -> Vec<Requirement> {
                [$($arg::requirement()),+].into_iter().flatten().collect()
            }
        }
    };
}

handler_arity!(A);
handler_arity!(A, B);
handler_arity!(A, B, C);
handler_arity!(A, B, C, D);

/// A handler with its types erased.
pub(crate) type Erased<In> =
    Arc<dyn Fn(In, Context) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

pub(crate) fn erase<In: Send + 'static, Args, H: Handler<In, Args>>(handler: H) -> Erased<In> {
    Arc::new(move |input, cx| handler.call(input, cx))
}
