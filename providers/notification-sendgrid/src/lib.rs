//! SendGrid provider of Gorgon notifications, over its HTTP API.
