//! The `auth` module: who is calling, apart from what they are. An **auth identity** is a
//! login; an actor (a `user`, a `customer`) is joined to it through its `app_metadata`
//! (`{"user_id": "user_…"}`), as Medusa's auth module does. A **provider identity** is how the
//! identity proves itself; this crate ships the `emailpass` provider: an email and a password
//! hashed with argon2id, a password update, and one-time reset tokens.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chrono::{DateTime, Duration, Utc};
use gorgon_data::{Crud, Filter, FindConfig, Migration, Model, ModelMeta, migration};
use gorgon_framework::{BoxError, Module, ModuleContext, NoOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The provider this crate implements.
pub const EMAILPASS: &str = "emailpass";

/// How long a password-reset token stays valid (Medusa's default: 15 minutes).
pub const RESET_TOKEN_VALIDITY: Duration = Duration::minutes(15);

/// A login, joined to its actors by `app_metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "authid")]
pub struct AuthIdentity {
    /// `authid_…`.
    pub id: String,
    /// The actors it is: `{"user_id": "user_…"}`, `{"customer_id": "cus_…"}`.
    pub app_metadata: Option<Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

impl AuthIdentity {
    /// The id of its actor of this type (`user` reads `app_metadata.user_id`).
    pub fn actor_id(&self, actor_type: &str) -> Option<&str> {
        self.app_metadata
            .as_ref()?
            .get(format!("{actor_type}_id"))?
            .as_str()
    }
}

/// How an auth identity proves itself to one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "provid")]
pub struct ProviderIdentity {
    /// `provid_…`.
    pub id: String,
    /// The provider's name for the identity (the email, for `emailpass`).
    #[model(searchable)]
    pub entity_id: String,
    /// The provider (`emailpass`).
    pub provider: String,
    /// The auth identity it belongs to.
    pub auth_identity_id: String,
    /// What the provider knows of the person (shown to the application).
    pub user_metadata: Option<Value>,
    /// The provider's secrets (the password hash, a reset token's hash); never sent.
    #[serde(skip_serializing)]
    pub provider_metadata: Option<Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// What authentication refuses, in Medusa's words.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Login with an unknown email or a wrong password (one message for both, as Medusa).
    #[error("Invalid email or password")]
    InvalidCredentials,
    /// Registering an email that already has an identity.
    #[error("Identity with email already exists")]
    Exists,
    /// A reset token that is unknown, used or expired.
    #[error("Invalid or expired token")]
    InvalidToken,
    /// A password that cannot be used (empty).
    #[error("Password should be a string")]
    InvalidPassword,
    /// The data layer's error.
    #[error(transparent)]
    Data(#[from] gorgon_data::Error),
    /// Hashing failed (a bug, or the machine is out of resources).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The auth module's service.
#[derive(Debug, Clone)]
pub struct AuthService {
    /// The generated service of [`AuthIdentity`].
    pub identities: Crud<AuthIdentity>,
    /// The generated service of [`ProviderIdentity`].
    pub providers: Crud<ProviderIdentity>,
}

async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| AuthError::Hash(error.to_string()))
    })
    .await
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
}

/// Runs CPU-heavy hashing off the async threads.
async fn tokio_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl AuthService {
    /// The service over `db`.
    pub fn new(db: gorgon_data::Db) -> Self {
        Self {
            identities: Crud::new(db.clone()),
            providers: Crud::new(db),
        }
    }

    async fn emailpass(&self, email: &str) -> Result<Option<ProviderIdentity>, AuthError> {
        let found = self
            .providers
            .list(
                Filter::from(json!({ "entity_id": email, "provider": EMAILPASS })),
                FindConfig::new().take(1),
            )
            .await?;
        Ok(found.into_iter().next())
    }

    /// Registers `email` with `password`: a new auth identity without an actor yet.
    pub async fn register(&self, email: &str, password: &str) -> Result<AuthIdentity, AuthError> {
        if password.is_empty() {
            return Err(AuthError::InvalidPassword);
        }
        let hash = hash_password(password.to_owned()).await?;
        let db = self.identities.db().clone();
        db.transaction(|| async {
            if self.emailpass(email).await?.is_some() {
                return Err(AuthError::Exists);
            }
            let identity = self.identities.create(json!({})).await?;
            self.providers
                .create(json!({
                    "entity_id": email,
                    "provider": EMAILPASS,
                    "auth_identity_id": identity.id,
                    "provider_metadata": { "password": hash },
                }))
                .await
                .map_err(|error| match error.kind() {
                    gorgon_data::ErrorKind::Duplicate => AuthError::Exists,
                    _ => AuthError::Data(error),
                })?;
            Ok(identity)
        })
        .await
    }

    /// The auth identity whose email and password these are.
    pub async fn authenticate(
        &self,
        email: &str,
        password: &str,
    ) -> Result<AuthIdentity, AuthError> {
        let Some(provider) = self.emailpass(email).await? else {
            // Hash anyway, so that an unknown email takes as long as a wrong password.
            let _ = hash_password(password.to_owned()).await;
            return Err(AuthError::InvalidCredentials);
        };
        let hash = provider
            .provider_metadata
            .as_ref()
            .and_then(|meta| meta.get("password"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !verify_password(password.to_owned(), hash).await {
            return Err(AuthError::InvalidCredentials);
        }
        Ok(self
            .identities
            .retrieve(&provider.auth_identity_id, FindConfig::new())
            .await?)
    }

    /// Sets a new password for `email`.
    pub async fn update_password(&self, email: &str, password: &str) -> Result<(), AuthError> {
        if password.is_empty() {
            return Err(AuthError::InvalidPassword);
        }
        let provider = self
            .emailpass(email)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let hash = hash_password(password.to_owned()).await?;
        self.providers
            .update(
                &provider.id,
                json!({ "provider_metadata": { "password": hash } }),
            )
            .await?;
        Ok(())
    }

    /// A one-time token that resets the password of `email` within
    /// [`RESET_TOKEN_VALIDITY`]; `None` when no identity has this email (the caller answers
    /// the same either way, so that emails cannot be probed).
    pub async fn reset_token(&self, email: &str) -> Result<Option<String>, AuthError> {
        let Some(provider) = self.emailpass(email).await? else {
            return Ok(None);
        };
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut metadata = provider.provider_metadata.unwrap_or_else(|| json!({}));
        metadata["reset_token"] = json!(digest(&token));
        metadata["reset_expires_at"] = json!(Utc::now() + RESET_TOKEN_VALIDITY);
        self.providers
            .update(&provider.id, json!({ "provider_metadata": metadata }))
            .await?;
        Ok(Some(token))
    }

    /// Sets `password` for `email` with a token from [`reset_token`](Self::reset_token); the
    /// token is used up.
    pub async fn reset_password(
        &self,
        email: &str,
        token: &str,
        password: &str,
    ) -> Result<(), AuthError> {
        let provider = self
            .emailpass(email)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let metadata = provider.provider_metadata.clone().unwrap_or_default();
        let stored = metadata.get("reset_token").and_then(Value::as_str);
        let expires = metadata
            .get("reset_expires_at")
            .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok());
        match (stored, expires) {
            (Some(stored), Some(expires)) if stored == digest(token) && expires > Utc::now() => {}
            _ => return Err(AuthError::InvalidToken),
        }
        if password.is_empty() {
            return Err(AuthError::InvalidPassword);
        }
        let hash = hash_password(password.to_owned()).await?;
        self.providers
            .update(
                &provider.id,
                json!({ "provider_metadata": { "password": hash } }),
            )
            .await?;
        Ok(())
    }

    /// Joins the identity to an actor: `app_metadata["{actor_type}_id"] = actor_id`.
    pub async fn link_actor(
        &self,
        auth_identity_id: &str,
        actor_type: &str,
        actor_id: &str,
    ) -> Result<AuthIdentity, AuthError> {
        let identity = self
            .identities
            .retrieve(auth_identity_id, FindConfig::new())
            .await?;
        let mut metadata = identity.app_metadata.unwrap_or_else(|| json!({}));
        metadata[format!("{actor_type}_id")] = json!(actor_id);
        Ok(self
            .identities
            .update(auth_identity_id, json!({ "app_metadata": metadata }))
            .await?)
    }

    /// The identity with this id.
    pub async fn retrieve(&self, id: &str) -> Result<AuthIdentity, AuthError> {
        Ok(self.identities.retrieve(id, FindConfig::new()).await?)
    }
}

/// The module's migrations.
pub const MIGRATIONS: &[Migration] = &[migration!("0001_auth")];

/// The `auth` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthModule;

impl Module for AuthModule {
    type Service = AuthService;
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "auth"
    }

    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![AuthIdentity::meta(), ProviderIdentity::meta()]
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<AuthService, BoxError> {
        Ok(AuthService::new(cx.db))
    }
}
