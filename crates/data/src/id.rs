//! Medusa-style ids: a prefix, an underscore and a ULID (`prod_01JEXAMPLE…`). Ids made by one
//! process increase strictly, so ordering by id is ordering by creation.

use std::sync::Mutex;

static GENERATOR: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());

/// A new id with this prefix (`brand` → `brand_01J…`); a bare ULID when the prefix is empty.
pub fn generate(prefix: &str) -> String {
    let ulid = GENERATOR
        .lock()
        .ok()
        .and_then(|mut generator| generator.generate().ok())
        .unwrap_or_else(ulid::Ulid::generate);
    if prefix.is_empty() {
        ulid.to_string()
    } else {
        format!("{prefix}_{ulid}")
    }
}
