//! Locking: the Locker trait, its in-memory provider and the suite every provider passes.
