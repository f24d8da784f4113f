//! SMTP provider of Gorgon notifications, through lettre.
