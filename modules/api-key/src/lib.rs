//! The `api_key` module: **publishable** keys (`pk_…`), which a storefront sends in
//! `x-publishable-api-key` and which are not secret, and **secret** keys (`sk_…`), which
//! authenticate an integration on `/admin` with `Authorization: Basic`. A secret key is shown
//! once, at creation: the table keeps its SHA-256 digest and a redacted form. Both kinds can be
//! revoked; a revoked key authenticates nothing.

use chrono::{DateTime, Utc};
use gorgon_data::{Crud, Filter, FindConfig, Migration, Model, ModelMeta, migration};
use gorgon_framework::{BoxError, Module, ModuleContext, NoOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

/// A key's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// `pk_…`: names a storefront; not a secret.
    Publishable,
    /// `sk_…`: authenticates on `/admin`; stored hashed.
    Secret,
}

impl KeyType {
    /// `publishable` or `secret`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Publishable => "publishable",
            KeyType::Secret => "secret",
        }
    }
}

/// An API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Model)]
#[model(prefix = "apk")]
pub struct ApiKey {
    /// `apk_…`.
    pub id: String,
    /// The key itself for a publishable key; the SHA-256 digest of it for a secret key.
    pub token: String,
    /// Kept for Medusa's field list; digests need no salt since keys are random.
    #[serde(skip_serializing)]
    #[model(default)]
    pub salt: String,
    /// The key with its middle hidden (`sk_1a2***f9e`).
    pub redacted: String,
    /// A name for people.
    #[model(searchable)]
    pub title: String,
    /// `publishable` or `secret`.
    #[model(kind = "text")]
    pub r#type: KeyType,
    /// When it last authenticated a request (secret keys).
    pub last_used_at: Option<DateTime<Utc>>,
    /// The actor that created it.
    pub created_by: String,
    /// The actor that revoked it.
    pub revoked_by: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether it was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some_and(|at| at <= Utc::now())
    }
}

/// A key just created: the record, and for a secret key the only copy of the key itself.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    /// The record (`token` is the digest for a secret key).
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret key in clear, shown this once (`None` for a publishable key, whose token is
    /// in the record).
    #[serde(skip)]
    pub secret: Option<String>,
}

/// What the API key service refuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// Revoking a key twice.
    #[error("API key {0} is already revoked")]
    AlreadyRevoked(String),
    /// The data layer's error.
    #[error(transparent)]
    Data(#[from] gorgon_data::Error),
}

/// The SHA-256 digest a secret key is stored as.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn redact(token: &str) -> String {
    let head: String = token.chars().take(6).collect();
    let tail: String = token
        .chars()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}***{tail}")
}

/// The API key module's service.
#[derive(Debug, Clone)]
pub struct ApiKeyService {
    /// The generated service of [`ApiKey`].
    pub keys: Crud<ApiKey>,
}

impl ApiKeyService {
    /// The service over `db`.
    pub fn new(db: gorgon_data::Db) -> Self {
        Self {
            keys: Crud::new(db),
        }
    }

    /// Creates a key of `key_type` named `title`, by the actor `created_by`.
    pub async fn create(
        &self,
        title: &str,
        key_type: KeyType,
        created_by: &str,
    ) -> Result<CreatedKey, ApiKeyError> {
        let random = hex::encode(rand::random::<[u8; 32]>());
        let (token, stored, secret) = match key_type {
            KeyType::Publishable => {
                let token = format!("pk_{random}");
                (token.clone(), token, None)
            }
            KeyType::Secret => {
                let token = format!("sk_{random}");
                (token.clone(), digest(&token), Some(token))
            }
        };
        let key = self
            .keys
            .create(json!({
                "token": stored,
                "redacted": redact(&token),
                "title": title,
                "type": key_type.as_str(),
                "created_by": created_by,
            }))
            .await?;
        Ok(CreatedKey { key, secret })
    }

    /// Revokes a key now, by the actor `revoked_by`.
    pub async fn revoke(&self, id: &str, revoked_by: &str) -> Result<ApiKey, ApiKeyError> {
        let key = self.keys.retrieve(id, FindConfig::new()).await?;
        if key.is_revoked() {
            return Err(ApiKeyError::AlreadyRevoked(id.to_owned()));
        }
        Ok(self
            .keys
            .update(
                id,
                json!({ "revoked_at": Utc::now(), "revoked_by": revoked_by }),
            )
            .await?)
    }

    /// The live, unrevoked secret key whose clear text is `token`; marks it used.
    pub async fn authenticate_secret(&self, token: &str) -> Result<Option<ApiKey>, ApiKeyError> {
        if !token.starts_with("sk_") {
            return Ok(None);
        }
        let Some(key) = self.find(&digest(token), KeyType::Secret).await? else {
            return Ok(None);
        };
        let key = self
            .keys
            .update(&key.id, json!({ "last_used_at": Utc::now() }))
            .await?;
        Ok(Some(key))
    }

    /// The live, unrevoked publishable key `token`.
    pub async fn publishable(&self, token: &str) -> Result<Option<ApiKey>, ApiKeyError> {
        if !token.starts_with("pk_") {
            return Ok(None);
        }
        self.find(token, KeyType::Publishable).await
    }

    async fn find(&self, stored: &str, key_type: KeyType) -> Result<Option<ApiKey>, ApiKeyError> {
        let found = self
            .keys
            .list(
                Filter::from(json!({ "token": stored, "type": key_type.as_str() })),
                FindConfig::new().take(1),
            )
            .await?;
        Ok(found.into_iter().find(|key| !key.is_revoked()))
    }
}

/// The module's migrations.
pub const MIGRATIONS: &[Migration] = &[migration!("0001_api_key")];

/// The `api_key` module.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiKeyModule;

impl Module for ApiKeyModule {
    type Service = ApiKeyService;
    type Options = NoOptions;

    fn name(&self) -> &'static str {
        "api_key"
    }

    fn models(&self) -> Vec<&'static ModelMeta> {
        vec![ApiKey::meta()]
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn build(&self, cx: ModuleContext<NoOptions>) -> Result<ApiKeyService, BoxError> {
        Ok(ApiKeyService::new(cx.db))
    }
}
