//! The local-disk provider and its presigned-URL signer.

use secrecy::{ExposeSecret, SecretString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;

use crate::key::decode_path;
use crate::{
    ByteStream, Download, Error, FileKey, FileStore, Operation, PresignedUrl, StoredFile,
    check_expiry,
};

const PROVIDER: &str = "local";

/// Configuration of [`LocalFileStore`].
///
/// ```json
/// { "root": "./uploads", "public_base_url": "https://shop.example/static",
///   "presign_base_url": "https://shop.example/files", "signing_secret": "…" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalOptions {
    /// Folder holding the files (created if missing). Default `./uploads`.
    ///
    /// Public files are in `<root>/public`, the only folder the HTTP layer should serve as is;
    /// private files are in `<root>/private`.
    pub root: PathBuf,
    /// URL at which the HTTP layer serves `<root>/public`. Default `http://localhost:9000/static`.
    pub public_base_url: String,
    /// URL at which the HTTP layer serves presigned downloads, checking them with
    /// [`UrlSigner::verify`]. Default `http://localhost:9000/files`.
    pub presign_base_url: String,
    /// Secret that signs presigned URLs. When absent a random one is made at start, so URLs stop
    /// working when the process restarts and differ between instances: set it in production.
    pub signing_secret: Option<SecretString>,
    /// Longest lifetime of a presigned URL, in seconds. Default 7 days.
    pub max_presign_expiry_secs: u64,
    /// Accept public files of active content types (HTML, SVG, scripts; see
    /// [`ACTIVE_CONTENT_TYPES`](crate::ACTIVE_CONTENT_TYPES)). Default `false`: the public
    /// folder is served as is from the application's origin, where such a file would run.
    pub allow_active_content: bool,
    /// The largest file accepted, in bytes; a larger upload is refused with
    /// [`Error::TooLarge`](crate::Error::TooLarge) and nothing is stored. Default 100 MiB.
    pub max_upload_bytes: u64,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            root: PathBuf::from("./uploads"),
            public_base_url: "http://localhost:9000/static".into(),
            presign_base_url: "http://localhost:9000/files".into(),
            signing_secret: None,
            max_presign_expiry_secs: 7 * 24 * 3600,
            allow_active_content: false,
            max_upload_bytes: 100 * 1024 * 1024,
        }
    }
}

/// Files on local disk: for development and single-machine deployments.
///
/// Layout: `<root>/public/<path>`, `<root>/private/<path>`, content types in `<root>/.meta`,
/// uploads written to `<root>/.tmp` and renamed into place (atomic on one filesystem). A key
/// cannot be both a file and a folder (`a` and `a/b`) here, unlike S3.
#[derive(Debug, Clone)]
pub struct LocalFileStore {
    root: PathBuf,
    public_base_url: String,
    signer: UrlSigner,
    max_expiry: Duration,
    allow_active_content: bool,
    max_upload_bytes: u64,
    /// Uploads to one key take its stripe's lock, so that a file and its content type are
    /// placed together (two concurrent uploads cannot leave one's type on the other's bytes).
    placing: Arc<[tokio::sync::Mutex<()>]>,
}

/// How many locks the uploads of a store are spread over, by key.
const PLACING_STRIPES: usize = 64;

/// How old a leftover in `.tmp` (a crashed or cancelled upload) must be to be removed at start:
/// younger ones may belong to another process's upload in progress.
const TMP_LEFTOVER_AGE: Duration = Duration::from_secs(3600);

#[derive(Serialize, Deserialize)]
struct Meta {
    content_type: Option<String>,
}

impl LocalFileStore {
    /// Builds the store, creating its folders.
    pub fn new(options: LocalOptions) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidOptions {
            provider: PROVIDER,
            reason,
        };
        for url in [&options.public_base_url, &options.presign_base_url] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(format!("{url:?} is not an http(s) URL")));
            }
        }
        if options.max_presign_expiry_secs == 0 {
            return Err(invalid("max_presign_expiry_secs must be positive".into()));
        }
        let secret = match options.signing_secret.as_ref().map(|s| s.expose_secret()) {
            Some(secret) if secret.len() < 16 => {
                return Err(invalid("signing_secret must be at least 16 bytes".into()));
            }
            Some(secret) => secret.as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "local file store: no signing_secret configured, presigned URLs will stop working on restart"
                );
                let mut secret = uuid::Uuid::new_v4().as_bytes().to_vec();
                secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                secret
            }
        };
        for dir in ["public", "private", ".meta", ".tmp"] {
            std::fs::create_dir_all(options.root.join(dir)).map_err(|e| {
                invalid(format!(
                    "cannot create {}: {e}",
                    options.root.join(dir).display()
                ))
            })?;
        }
        sweep_leftovers(&options.root.join(".tmp"), TMP_LEFTOVER_AGE);
        Ok(Self {
            allow_active_content: options.allow_active_content,
            max_upload_bytes: options.max_upload_bytes,
            placing: (0..PLACING_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            root: options.root,
            public_base_url: options.public_base_url.trim_end_matches('/').to_owned(),
            signer: UrlSigner {
                secret: secret.into(),
                base_url: options.presign_base_url.trim_end_matches('/').to_owned(),
            },
            max_expiry: Duration::from_secs(options.max_presign_expiry_secs),
        })
    }

    /// The signer an HTTP layer uses to check presigned URLs of this store.
    pub fn signer(&self) -> UrlSigner {
        self.signer.clone()
    }

    fn data_path(&self, key: &FileKey) -> PathBuf {
        self.root.join(key.access().as_str()).join(key.path())
    }

    fn meta_path(&self, key: &FileKey) -> PathBuf {
        self.root
            .join(".meta")
            .join(key.access().as_str())
            .join(key.path())
    }

    fn tmp_path(&self) -> PathBuf {
        self.root
            .join(".tmp")
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    fn backend(&self, operation: Operation, key: &FileKey, source: io::Error) -> Error {
        Error::Backend {
            provider: PROVIDER,
            operation,
            key: key.to_string(),
            source: source.into(),
        }
    }

    /// The lock of `key`'s stripe.
    fn placing(&self, key: &FileKey) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        &self.placing[(hash as usize) % self.placing.len()]
    }

    /// Writes `stream` to a temporary file (synced), then, under the key's lock, moves the file
    /// and then its metadata into place and syncs their folders: what an upload returned is
    /// durable, and a file's content type is its own.
    async fn store(
        &self,
        key: &FileKey,
        mut stream: ByteStream,
        content_type: Option<&str>,
    ) -> Result<StoredFile, Error> {
        crate::check_content_type(key, content_type, self.allow_active_content)?;
        let io_err = |e| self.backend(Operation::Upload, key, e);
        let tmp = self.tmp_path();
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
        let mut size = 0u64;
        let written: Result<(), Error> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|source| Error::UploadStream {
                    key: key.to_string(),
                    source,
                })?;
                size += chunk.len() as u64;
                if size > self.max_upload_bytes {
                    return Err(Error::TooLarge {
                        key: key.to_string(),
                        limit: self.max_upload_bytes,
                    });
                }
                file.write_all(&chunk).await.map_err(io_err)?;
            }
            file.flush().await.map_err(io_err)?;
            file.sync_all().await.map_err(io_err)?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(error) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(error);
        }
        let placed: Result<(), io::Error> = async {
            let meta = serde_json::to_vec(&Meta {
                content_type: content_type.map(str::to_owned),
            })
            .map_err(io::Error::other)?;
            let meta_tmp = self.tmp_path();
            tokio::fs::write(&meta_tmp, meta).await?;
            let _placing = self.placing(key).lock().await;
            let placed = async {
                rename_into(&tmp, &self.data_path(key)).await?;
                rename_into(&meta_tmp, &self.meta_path(key)).await
            }
            .await;
            if placed.is_err() {
                let _ = tokio::fs::remove_file(&meta_tmp).await;
            }
            placed?;
            sync_parent(&self.data_path(key)).await?;
            sync_parent(&self.meta_path(key)).await
        }
        .await;
        if let Err(error) = placed {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_err(error));
        }
        Ok(StoredFile {
            key: key.clone(),
            size,
            public_url: self.public_url(key).ok(),
        })
    }
}

/// Syncs the folder holding `path`, so that a rename into it survives a power loss.
async fn sync_parent(path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent().map(Path::to_path_buf) else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || std::fs::File::open(parent)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

/// Removes what crashed or cancelled uploads left in `tmp`, older than `age`.
fn sweep_leftovers(tmp: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|elapsed| elapsed >= age);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, folder = %tmp.display(), "removed leftovers of interrupted uploads");
    }
}

async fn rename_into(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::rename(from, to).await
}

fn not_found(key: &FileKey, operation: Operation) -> Error {
    Error::NotFound {
        key: key.to_string(),
        operation,
    }
}

#[async_trait]
impl FileStore for LocalFileStore {
    async fn upload(
        &self,
        key: &FileKey,
        data: Bytes,
        content_type: Option<&str>,
    ) -> Result<StoredFile, Error> {
        self.store(key, futures::stream::iter([Ok(data)]).boxed(), content_type)
            .await
    }

    async fn upload_stream(
        &self,
        key: &FileKey,
        stream: ByteStream,
        content_type: Option<&str>,
    ) -> Result<StoredFile, Error> {
        self.store(key, stream, content_type).await
    }

    async fn delete(&self, key: &FileKey) -> Result<(), Error> {
        for path in [self.data_path(key), self.meta_path(key)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.backend(Operation::Delete, key, e)),
            }
        }
        Ok(())
    }

    async fn get_presigned_download_url(
        &self,
        key: &FileKey,
        expires_in: Duration,
    ) -> Result<PresignedUrl, Error> {
        check_expiry(key, expires_in, self.max_expiry)?;
        match tokio::fs::metadata(self.data_path(key)).await {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(not_found(key, Operation::Presign)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_found(key, Operation::Presign));
            }
            Err(e) => return Err(self.backend(Operation::Presign, key, e)),
        }
        let now = unix_secs(SystemTime::now());
        let expires_at = now + expires_in.as_secs() + u64::from(expires_in.subsec_nanos() > 0);
        Ok(PresignedUrl {
            url: self.signer.sign(key, expires_at),
            expires_at: UNIX_EPOCH + Duration::from_secs(expires_at),
        })
    }

    async fn get_download_stream(&self, key: &FileKey) -> Result<Download, Error> {
        let file = match tokio::fs::File::open(self.data_path(key)).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_found(key, Operation::Download));
            }
            Err(e) => return Err(self.backend(Operation::Download, key, e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| self.backend(Operation::Download, key, e))?;
        if !size.is_file() {
            return Err(not_found(key, Operation::Download));
        }
        let content_type = match tokio::fs::read(self.meta_path(key)).await {
            Ok(raw) => serde_json::from_slice::<Meta>(&raw)
                .ok()
                .and_then(|m| m.content_type),
            Err(_) => None,
        };
        Ok(Download {
            size: Some(size.len()),
            content_type,
            stream: tokio_util::io::ReaderStream::new(file).boxed(),
        })
    }

    fn public_url(&self, key: &FileKey) -> Result<String, Error> {
        match key.access() {
            crate::Access::Public => Ok(format!("{}/{}", self.public_base_url, key.url_path())),
            crate::Access::Private => Err(Error::NotPublic {
                key: key.to_string(),
            }),
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Signs and checks the presigned URLs of a [`LocalFileStore`]; cheap to clone.
///
/// A URL is `<presign_base_url>/<access>/<encoded path>?expires=<unix secs>&signature=<hex>`,
/// where the signature is HMAC-SHA256 over the key and the expiry. The HTTP layer serving
/// `presign_base_url` passes the rest of the path and the query to [`UrlSigner::verify`] and, on
/// success, streams [`FileStore::get_download_stream`] of the returned key.
#[derive(Clone)]
pub struct UrlSigner {
    secret: Arc<[u8]>,
    base_url: String,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl UrlSigner {
    fn mac(&self, key: &str, expires_at: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(format!("gorgon-file-v1\n{key}\n{expires_at}").as_bytes());
        mac
    }

    /// The presigned URL of `key`, valid until `expires_at` (unix seconds).
    pub fn sign(&self, key: &FileKey, expires_at: u64) -> String {
        let signature = hex(&self
            .mac(&key.to_string(), expires_at)
            .finalize()
            .into_bytes());
        format!(
            "{}/{}/{}?expires={expires_at}&signature={signature}",
            self.base_url,
            key.access(),
            key.url_path()
        )
    }

    /// Checks a presigned URL now; see [`UrlSigner::verify_at`].
    pub fn verify(&self, url_path: &str, query: &str) -> Result<FileKey, Error> {
        self.verify_at(url_path, query, SystemTime::now())
    }

    /// Checks a presigned URL at time `now` and returns the key it grants.
    ///
    /// `url_path` is the percent-encoded part after `presign_base_url` (`private/a%20b.pdf`, a
    /// leading `/` is allowed) and `query` the query string without `?`. Refuses bad keys
    /// ([`Error::InvalidKey`]), missing or wrong signatures ([`Error::InvalidSignature`]) and
    /// expired URLs ([`Error::UrlExpired`]).
    pub fn verify_at(
        &self,
        url_path: &str,
        query: &str,
        now: SystemTime,
    ) -> Result<FileKey, Error> {
        let url_path = url_path.trim_start_matches('/');
        let refuse = |reason: &str| Error::InvalidSignature {
            key: url_path.to_owned(),
            reason: reason.to_owned(),
        };
        let decoded = decode_path(url_path).ok_or_else(|| refuse("malformed percent-encoding"))?;
        let key = FileKey::parse(&decoded)?;
        let (mut expires, mut signature) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("expires", v)) => expires = Some(v),
                Some(("signature", v)) => signature = Some(v),
                _ => {}
            }
        }
        let expires_at: u64 = expires
            .ok_or_else(|| refuse("missing `expires`"))?
            .parse()
            .map_err(|_| refuse("`expires` is not a number"))?;
        let signature = unhex(signature.ok_or_else(|| refuse("missing `signature`"))?)
            .ok_or_else(|| refuse("`signature` is not hex"))?;
        self.mac(&key.to_string(), expires_at)
            .verify_slice(&signature)
            .map_err(|_| refuse("signature does not match"))?;
        if unix_secs(now) >= expires_at {
            return Err(Error::UrlExpired {
                key: key.to_string(),
                expired_at: expires_at,
            });
        }
        Ok(key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner {
            secret: b"0123456789abcdef0123".as_slice().into(),
            base_url: "http://h/files".into(),
        }
    }

    fn split(url: &str) -> (&str, &str) {
        let rest = url.strip_prefix("http://h/files/").unwrap();
        rest.split_once('?').unwrap()
    }

    #[test]
    fn signed_url_verifies_until_expiry() {
        let key = FileKey::private("a b/c+d.pdf").unwrap();
        let url = signer().sign(&key, 1_000);
        let (path, query) = split(&url);
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(signer().verify_at(path, query, at(999)).unwrap(), key);
        assert!(matches!(
            signer().verify_at(path, query, at(1_000)),
            Err(Error::UrlExpired {
                expired_at: 1_000,
                ..
            })
        ));
    }

    #[test]
    fn tampering_is_refused() {
        let key = FileKey::private("x.pdf").unwrap();
        let url = signer().sign(&key, 1_000);
        let (path, query) = split(&url);
        let now = UNIX_EPOCH + Duration::from_secs(10);
        let other_key = signer().verify_at("private/y.pdf", query, now);
        assert!(matches!(other_key, Err(Error::InvalidSignature { .. })));
        let later = query.replace("expires=1000", "expires=9999");
        assert!(matches!(
            signer().verify_at(path, &later, now),
            Err(Error::InvalidSignature { .. })
        ));
        let public = signer().verify_at("public/x.pdf", query, now);
        assert!(matches!(public, Err(Error::InvalidSignature { .. })));
        for (p, q) in [
            (path, "expires=1000"),
            (path, "signature=00"),
            (path, "expires=x&signature=00"),
            (path, "expires=1000&signature=zz"),
        ] {
            assert!(matches!(
                signer().verify_at(p, q, now),
                Err(Error::InvalidSignature { .. })
            ));
        }
        let mut other_secret = signer();
        other_secret.secret = b"another secret of 16+".as_slice().into();
        assert!(other_secret.verify_at(path, query, now).is_err());
    }

    #[test]
    fn traversal_in_url_is_refused_before_signature_check() {
        let now = UNIX_EPOCH;
        for path in [
            "private/../x",
            "private/%2E%2E/x",
            "../private/x",
            "etc/passwd",
        ] {
            assert!(matches!(
                signer().verify_at(path, "expires=5&signature=00", now),
                Err(Error::InvalidKey { .. })
            ));
        }
    }

    #[test]
    fn options_deserialize_with_defaults_and_are_checked() {
        let o: LocalOptions = serde_json::from_str(r#"{"root": "/tmp/x"}"#).unwrap();
        assert_eq!(o.public_base_url, "http://localhost:9000/static");
        assert_eq!(o.max_presign_expiry_secs, 604_800);
        assert!(serde_json::from_str::<LocalOptions>(r#"{"rot": "/tmp/x"}"#).is_err());
        let dir = tempfile::tempdir().unwrap();
        let short = LocalOptions {
            root: dir.path().into(),
            signing_secret: Some("short".into()),
            ..LocalOptions::default()
        };
        assert!(matches!(
            LocalFileStore::new(short),
            Err(Error::InvalidOptions { .. })
        ));
        let bad_url = LocalOptions {
            root: dir.path().into(),
            public_base_url: "ftp://x".into(),
            ..LocalOptions::default()
        };
        assert!(LocalFileStore::new(bad_url).is_err());
    }
}
