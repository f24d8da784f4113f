//! File storage: the [`FileStore`] trait, its local-disk provider and the suite every provider
//! passes.
//!
//! Medusa's File module, rebuilt: upload from bytes or from a stream, delete, download as a
//! stream, presigned download URLs, public and private files. The S3 provider lives in
//! `gorgon-file-s3`.
//!
//! # Use it
//! 1. Choose a provider by configuration: deserialize [`LocalOptions`] (or `S3Options` from
//!    `gorgon-file-s3`) and build it: `LocalFileStore::new(options)?`.
//! 2. Hold it as `Arc<dyn FileStore>`.
//! 3. Name files with a [`FileKey`]: `FileKey::public("products/42.png")?` or
//!    `FileKey::private("invoices/7.pdf")?`. Its string form `public/products/42.png` is the file
//!    id to store in your tables; [`FileKey::parse`] reads it back.
//! 4. [`FileStore::upload`] / [`FileStore::upload_stream`], then hand out
//!    [`FileStore::public_url`] (public files) or [`FileStore::get_presigned_download_url`]
//!    (any file), or read it back with [`FileStore::get_download_stream`].
//! 5. With the local provider, let the HTTP layer serve `<root>/public` at `public_base_url` and
//!    check presigned URLs with [`UrlSigner::verify`].
//!
//! ```text
//!  caller ──upload(key, bytes|stream)──▶ FileStore ──▶ local disk: <root>/<access>/<path>
//!                                              └────▶ S3: <bucket>/<prefix>/<access>/<path>
//!  browser ◀── public_url (public files) / presigned URL (any file, expires) ── FileStore
//! ```
//!
//! # Contract
//! - **Access is part of the key.** `public/…` and `private/…` are separate namespaces; a private
//!   file has no public URL ([`Error::NotPublic`]) and is not under the publicly served folder
//!   (Medusa's local provider serves private files from the public `static/` folder by default).
//! - **Uploads are atomic and replace.** A reader sees the old content or the whole new content,
//!   never a partial file; a failed upload (including a stream that yields an error) leaves
//!   nothing at the key. Uploading to an existing key replaces it (last writer wins).
//! - **Durability** is the backend's: a successful upload survives a crash of this process.
//! - **Delete is idempotent:** deleting a missing file succeeds.
//! - **Missing files are typed:** download and presign of a missing key return
//!   [`Error::NotFound`].
//! - **Presigned URLs** are valid for the requested time (at most the provider's maximum, at
//!   least one second) and say when they expire ([`PresignedUrl::expires_at`]).
//! - **Bad keys** (`../x`, `a\b`, empty segments) are refused with [`Error::InvalidKey`] before
//!   any provider sees them.

mod key;
mod local;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

pub use key::{Access, FileKey, MAX_KEY_LEN, decode_path, encode_path};
pub use local::{LocalFileStore, LocalOptions, UrlSigner};

/// A stream of file content, as uploaded or downloaded.
pub type ByteStream = futures::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// Boxed error of a provider's backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Stores files by [`FileKey`]; every provider implements it and passes the `testing` suite.
///
/// Durability: a successful upload is as durable as the backend (disk, S3). Ordering: none
/// between keys; for one key the last completed upload wins. See the crate docs for the whole
/// contract.
#[async_trait]
pub trait FileStore: Send + Sync + fmt::Debug {
    /// Stores `data` at `key`, replacing any previous file, atomically.
    async fn upload(
        &self,
        key: &FileKey,
        data: Bytes,
        content_type: Option<&str>,
    ) -> Result<StoredFile, Error>;

    /// Stores the content of `stream` at `key` without holding it all in memory; atomically.
    ///
    /// If the stream yields an error the upload is abandoned, nothing is stored and
    /// [`Error::UploadStream`] is returned.
    async fn upload_stream(
        &self,
        key: &FileKey,
        stream: ByteStream,
        content_type: Option<&str>,
    ) -> Result<StoredFile, Error>;

    /// Deletes the file at `key`; succeeds if it does not exist.
    async fn delete(&self, key: &FileKey) -> Result<(), Error>;

    /// A URL anyone holding it can download the file from until `expires_in` has passed.
    ///
    /// Fails with [`Error::NotFound`] if the file does not exist and [`Error::InvalidExpiry`] if
    /// `expires_in` is under a second or above the provider's maximum.
    async fn get_presigned_download_url(
        &self,
        key: &FileKey,
        expires_in: Duration,
    ) -> Result<PresignedUrl, Error>;

    /// Streams the file's content.
    async fn get_download_stream(&self, key: &FileKey) -> Result<Download, Error>;

    /// The stable public URL of a public file; [`Error::NotPublic`] for a private one.
    ///
    /// It does not check that the file exists.
    fn public_url(&self, key: &FileKey) -> Result<String, Error>;
}

/// What an upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// The key the file was stored at.
    pub key: FileKey,
    /// Size in bytes.
    pub size: u64,
    /// The public URL, for public files.
    pub public_url: Option<String>,
}

/// A presigned download URL and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedUrl {
    /// The URL.
    pub url: String,
    /// The instant after which the URL is refused.
    pub expires_at: SystemTime,
}

/// A file being downloaded.
pub struct Download {
    /// Size in bytes, when the backend knows it.
    pub size: Option<u64>,
    /// The content type given at upload, if any.
    pub content_type: Option<String>,
    /// The content.
    pub stream: ByteStream,
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download")
            .field("size", &self.size)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// The file operation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// [`FileStore::upload`] or [`FileStore::upload_stream`].
    Upload,
    /// [`FileStore::delete`].
    Delete,
    /// [`FileStore::get_presigned_download_url`].
    Presign,
    /// [`FileStore::get_download_stream`].
    Download,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Upload => "upload",
            Operation::Delete => "delete",
            Operation::Presign => "presign",
            Operation::Download => "download",
        })
    }
}

/// Everything that can go wrong with files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is not a valid [`FileKey`].
    #[error("invalid file key {key:?}: {reason}")]
    InvalidKey {
        /// The refused key.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// No file at the key.
    #[error("{operation} of file {key}: not found")]
    NotFound {
        /// The missing key.
        key: String,
        /// The operation that looked for it.
        operation: Operation,
    },
    /// A content type that is not a `type/subtype`, or an active one (HTML, SVG, script)
    /// for a public file that would be served as is from the application's origin.
    #[error("file {key}: content type {content_type:?} refused: {reason}")]
    InvalidContentType {
        /// The file's key.
        key: String,
        /// The refused content type.
        content_type: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An upload larger than the store accepts; nothing was stored.
    #[error("file {key}: larger than the {limit} bytes this store accepts")]
    TooLarge {
        /// The file's key.
        key: String,
        /// The store's limit, in bytes.
        limit: u64,
    },
    /// A private file was asked for its public URL.
    #[error("file {key} is private and has no public URL")]
    NotPublic {
        /// The private key.
        key: String,
    },
    /// The requested presigned URL lifetime is out of range.
    #[error("presigned URL for {key}: expiry of {requested:?} is outside 1s..={max:?}")]
    InvalidExpiry {
        /// The file.
        key: String,
        /// The requested lifetime.
        requested: Duration,
        /// The provider's maximum.
        max: Duration,
    },
    /// A presigned URL was presented after its expiry.
    #[error("presigned URL for {key} expired at unix time {expired_at}")]
    UrlExpired {
        /// The file the URL was for.
        key: String,
        /// Unix seconds of the expiry.
        expired_at: u64,
    },
    /// A presigned URL is malformed or its signature does not match.
    #[error("presigned URL for {key:?} refused: {reason}")]
    InvalidSignature {
        /// The file the URL names, as presented.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The stream given to [`FileStore::upload_stream`] yielded an error; nothing was stored.
    #[error("upload of {key}: the source stream failed")]
    UploadStream {
        /// The file.
        key: String,
        /// The stream's error.
        #[source]
        source: std::io::Error,
    },
    /// The backend failed.
    #[error("{operation} of file {key} failed in the {provider} provider")]
    Backend {
        /// The provider, e.g. `local` or `s3`.
        provider: &'static str,
        /// The operation.
        operation: Operation,
        /// The file.
        key: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The provider's options are unusable.
    #[error("invalid {provider} file store options: {reason}")]
    InvalidOptions {
        /// The provider.
        provider: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Checks a presigned URL lifetime against `max` (and the one-second minimum).
pub fn check_expiry(key: &FileKey, requested: Duration, max: Duration) -> Result<(), Error> {
    if requested < Duration::from_secs(1) || requested > max {
        return Err(Error::InvalidExpiry {
            key: key.to_string(),
            requested,
            max,
        });
    }
    Ok(())
}

/// Content types a browser runs (markup, SVG, scripts): a public file of one of these served
/// as is from the application's own origin is stored cross-site scripting.
pub const ACTIVE_CONTENT_TYPES: &[&str] = &[
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
    "application/x-javascript",
    "text/ecmascript",
    "application/ecmascript",
    "text/xsl",
    "application/xslt+xml",
];

/// Checks an upload's content type: a `type/subtype` of token characters (parameters after
/// `;` allowed), and, unless `allow_active`, not one of [`ACTIVE_CONTENT_TYPES`] for a public
/// file.
pub fn check_content_type(
    key: &FileKey,
    content_type: Option<&str>,
    allow_active: bool,
) -> Result<(), Error> {
    let Some(content_type) = content_type else {
        return Ok(());
    };
    let refuse = |reason| Error::InvalidContentType {
        key: key.to_string(),
        content_type: content_type.to_string(),
        reason,
    };
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match essence.split_once('/') {
        Some((kind, subtype)) if token(kind) && token(subtype) => {}
        _ => return Err(refuse("expected `type/subtype`")),
    }
    if content_type.len() > 255 || content_type.chars().any(char::is_control) {
        return Err(refuse("too long, or holds control characters"));
    }
    let essence = essence.to_ascii_lowercase();
    if !allow_active
        && key.access() == Access::Public
        && ACTIVE_CONTENT_TYPES.contains(&essence.as_str())
    {
        return Err(refuse(
            "a public file of an active type would run in the application's origin",
        ));
    }
    Ok(())
}
