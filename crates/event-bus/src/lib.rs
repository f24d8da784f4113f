//! The event bus: the EventBus trait, its in-process provider and the suite every provider passes.
