//! Notifications: the Notifier trait, its local provider and the suite every provider passes.
