//! Redis provider of Gorgon locking.
