//! Redis provider of the Gorgon cache.
