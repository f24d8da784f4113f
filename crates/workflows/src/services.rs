//! [`Services`]: the application's services, resolved by type.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A registry of services keyed by their Rust type, built once at start-up.
///
/// A service is any `Arc<T>`, `T` sized or a trait object: register `Arc<dyn Inventory>` with
/// `insert::<dyn Inventory>(...)` and ask for it with `ctx.service::<dyn Inventory>()`. There are
/// no string keys. Cloning the registry is cheap once it is inside an
/// [`App`](crate::App).
#[derive(Default)]
pub struct Services {
    map: HashMap<TypeId, Entry>,
}

struct Entry {
    value: Box<dyn Any + Send + Sync>,
    type_name: &'static str,
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.map.values().map(|e| e.type_name))
            .finish()
    }
}

impl Services {
    /// An empty registry.
    pub fn new() -> Self {
        Services::default()
    }

    /// Registers a service, replacing any previous one of the same type.
    pub fn insert<T: ?Sized + Send + Sync + 'static>(&mut self, service: Arc<T>) -> &mut Self {
        self.map.insert(
            TypeId::of::<T>(),
            Entry {
                value: Box::new(service),
                type_name: std::any::type_name::<T>(),
            },
        );
        self
    }

    /// [`insert`](Self::insert), builder style.
    pub fn with<T: ?Sized + Send + Sync + 'static>(mut self, service: Arc<T>) -> Self {
        self.insert(service);
        self
    }

    /// The service of type `T`, when registered.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|e| e.value.downcast_ref::<Arc<T>>())
            .cloned()
    }

    /// Whether a service with this type id is registered.
    pub fn contains_id(&self, id: TypeId) -> bool {
        self.map.contains_key(&id)
    }

    /// The number of services.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A service type a step declares it needs, checked when its workflow is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The service's type id.
    pub type_id: TypeId,
    /// The service's type name, for errors.
    pub type_name: &'static str,
}

impl Requirement {
    /// The requirement of a service of type `T`.
    pub fn of<T: ?Sized + 'static>() -> Self {
        Requirement {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        }
    }
}
