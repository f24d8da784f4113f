//! Redis Streams provider of the Gorgon event bus.
