//! The `user` module: the admin users (Medusa's `user` actor) and the invites that bring new
//! ones in. A user is an actor; how it logs in (a password, a provider) is the auth module's
//! concern, joined by the auth identity's `app_metadata.user_id`.

use chrono::{DateTime, Duration, Utc};
use gorgon_data::{Crud, Filter, FindConfig, Migration, Model, ModelMeta, migration};
use gorgon_framework::{BoxError, Module, ModuleContext, NoOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// An admin user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "user")]
pub struct User {
    /// `user_…`.
    pub id: String,
    /// First name.
    #[model(searchable)]
    pub first_name: Option<String>,
    /// Last name.
    #[model(searchable)]
    pub last_name: Option<String>,
    /// Email, unique among live users.
    #[model(searchable)]
    pub email: String,
    /// Picture.
    pub avatar_url: Option<String>,
    /// Free-form data.
    pub metadata: Option<serde_json::Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// An invitation for `email` to become a user, redeemed with its token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "invite")]
pub struct Invite {
    /// `invite_…`.
    pub id: String,
    /// Who is invited.
    #[model(searchable)]
    pub email: String,
    /// Whether it was redeemed.
    #[model(default)]
    pub accepted: bool,
    /// The secret that redeems it (shown to the inviter once, then sent by email).
    pub token: String,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// Free-form data.
    pub metadata: Option<serde_json::Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A new user.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewUser {
    /// Email.
    pub email: String,
    /// First name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Picture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Free-form data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// What the user service refuses.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The invite token matches no invite, or it expired or was used.
    #[error("The invite is not valid (unknown, expired or already accepted)")]
    InvalidInvite,
    /// The data layer's error (a duplicate email, a missing user…).
    #[error(transparent)]
    Data(#[from] gorgon_data::Error),
}

/// How long an invite stays valid (Medusa's default: one day).
pub const INVITE_VALIDITY: Duration = Duration::days(1);

/// The user module's service.
#[derive(Debug, Clone)]
pub struct UserService {
    /// The generated service of [`User`].
    pub users: Crud<User>,
    /// The generated service of [`Invite`].
    pub invites: Crud<Invite>,
}

impl UserService {
    /// The service over `db`.
    pub fn new(db: gorgon_data::Db) -> Self {
        Self {
            users: Crud::new(db.clone()),
            invites: Crud::new(db),
        }
    }

    /// Creates a user.
    pub async fn create_user(&self, user: NewUser) -> Result<User, UserError> {
        Ok(self.users.create(user).await?)
    }

    /// The live user with this email.
    pub async fn find_by_email(&self, email: &str) -> Result<Option<User>, UserError> {
        let found = self
            .users
            .list(
                Filter::from(json!({ "email": email })),
                FindConfig::new().take(1),
            )
            .await?;
        Ok(found.into_iter().next())
    }

    /// Invites `email`, replacing an earlier invite to the same address; the invite carries a
    /// fresh random token.
    pub async fn invite(&self, email: &str) -> Result<Invite, UserError> {
        let earlier = self
            .invites
            .list(Filter::from(json!({ "email": email })), FindConfig::new())
            .await?;
        self.invites
            .delete(earlier.iter().map(|invite| invite.id.as_str()))
            .await?;
        let token = format!("inv_{}", hex::encode(rand::random::<[u8; 24]>()));
        Ok(self
            .invites
            .create(json!({
                "email": email,
                "token": token,
                "expires_at": Utc::now() + INVITE_VALIDITY,
            }))
            .await?)
    }

    /// Redeems an invite: marks it accepted and creates the user it names.
    pub async fn accept_invite(&self, token: &str, user: NewUser) -> Result<User, UserError> {
        let db = self.users.db().clone();
        db.transaction(|| async {
            let found = self
                .invites
                .list(
                    Filter::from(json!({ "token": token, "accepted": false })),
                    FindConfig::new().take(1),
                )
                .await?;
            let invite = match found.into_iter().next() {
                Some(invite) if invite.expires_at > Utc::now() => invite,
                _ => return Err(UserError::InvalidInvite),
            };
            self.invites
                .update(&invite.id, json!({ "accepted": true }))
                .await?;
            self.create_user(NewUser {
                email: invite.email,
                ..user
            })
            .await
        })
        .await
    }
}

/// The module's migrations.
pub const MIGRATIONS: &[Migration] = &[migration!("0001_user")];

/// The `user` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserModule;

impl Module for UserModule {
    type Service = UserService;
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "user"
    }

    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![User::meta(), Invite::meta()]
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<UserService, BoxError> {
        Ok(UserService::new(cx.db))
    }
}
