//! PostHog provider of Gorgon analytics, over its HTTP API.
