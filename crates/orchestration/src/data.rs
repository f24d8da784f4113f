//! [`Data`]: the values that cross a checkpoint (payloads, step responses).
//!
//! In memory a value keeps its Rust type behind an `Arc`, so handing a step's output to the next
//! step costs a reference count, not a serialization. A durable store asks for JSON
//! ([`Data::to_json`]); a value read back from a store is JSON until a typed reader decodes it
//! ([`Data::decode`]).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A value that can be shared between steps and written to a store.
pub trait ErasedData: Any + Send + Sync {
    /// The value as JSON.
    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error>;
    /// The value as `Any`, for typed access.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Any + Send + Sync> ErasedData for T {
    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A shared, serializable value: a workflow payload or a step response.
#[derive(Clone)]
pub struct Data(Arc<dyn ErasedData>);

impl Data {
    /// Wraps any serializable value.
    pub fn new<T: Serialize + Any + Send + Sync>(value: T) -> Self {
        Data(Arc::new(value))
    }
    /// Wraps a JSON value.
    pub fn json(value: serde_json::Value) -> Self {
        Data(Arc::new(value))
    }
    /// JSON `null`.
    pub fn null() -> Self {
        Data::json(serde_json::Value::Null)
    }
    /// The value as JSON.
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        self.0.to_json()
    }
    /// The value as `T`, when it is held as a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
    /// The value as `T`: cloned when held as a `T`, else decoded from its JSON form.
    pub fn decode<T: DeserializeOwned + Clone + Any>(&self) -> Result<T, serde_json::Error> {
        match self.downcast_ref::<T>() {
            Some(value) => Ok(value.clone()),
            None => serde_json::from_value(self.to_json()?),
        }
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_json() {
            Ok(json) => write!(f, "{json}"),
            Err(e) => write!(f, "<unserializable: {e}>"),
        }
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || matches!((self.to_json(), other.to_json()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Data::json)
    }
}

impl From<serde_json::Value> for Data {
    fn from(value: serde_json::Value) -> Self {
        Data::json(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u32,
    }

    #[test]
    fn typed_values_stay_typed_and_decode_from_json() {
        let data = Data::new(Order { id: 7 });
        assert_eq!(data.downcast_ref::<Order>(), Some(&Order { id: 7 }));
        assert_eq!(data.to_json().unwrap(), serde_json::json!({"id": 7}));
        let stored: Data = serde_json::from_str(&serde_json::to_string(&data).unwrap()).unwrap();
        assert!(stored.downcast_ref::<Order>().is_none());
        assert_eq!(stored.decode::<Order>().unwrap(), Order { id: 7 });
        assert_eq!(stored, data);
    }
}
