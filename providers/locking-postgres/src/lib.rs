//! PostgreSQL provider of Gorgon locking.
