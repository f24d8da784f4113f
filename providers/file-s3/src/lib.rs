//! S3 provider of Gorgon file storage, through `object_store`.
//!
//! Works with AWS S3 and S3-compatible servers (MinIO, Ceph, moto, R2…) via an endpoint
//! override. It passes `gorgon_file::testing` against a real moto server.
//!
//! # Use it
//! 1. Deserialize [`S3Options`] from configuration (`bucket` is required; credentials fall back
//!    to the usual `AWS_*` environment variables and instance credentials).
//! 2. `let store: Arc<dyn FileStore> = Arc::new(S3FileStore::new(options)?);`
//! 3. Let anyone read the public half: apply [`S3FileStore::public_read_policy`] as the bucket
//!    policy (the store sets no object ACLs; AWS disables ACLs on new buckets).
//!
//! # Contract
//! The `gorgon_file` contract, with these specifics:
//! - Objects live at `<bucket>/<prefix>/<public|private>/<path>`.
//! - Small uploads are one `PutObject`; a stream longer than `multipart_part_size` becomes a
//!   multipart upload (parts sent while the stream is read, at most 4 in flight) that is
//!   aborted if the stream fails, so a failed upload leaves nothing behind. Readers never see a
//!   partial object (S3 writes are atomic).
//! - Presigned URLs are SigV4 query-signed `GET` URLs (at most 7 days, S3's limit); presigning
//!   checks that the object exists first (one `HeadObject`).
//! - Public URLs are `<public_base_url>/<prefix>/public/<path>`; the default base is the bucket's
//!   own URL, set `public_base_url` to put a CDN in front.

use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use gorgon_file::{
    Access, ByteStream, Download, Error, FileKey, FileStore, Operation, PresignedUrl, StoredFile,
    check_expiry, encode_path,
};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, WriteMultipart,
};
use serde::Deserialize;

const PROVIDER: &str = "s3";
/// S3's limit on presigned URL lifetimes.
const S3_MAX_PRESIGN: u64 = 7 * 24 * 3600;
/// S3's minimum size of every multipart part but the last.
const S3_MIN_PART: usize = 5 * 1024 * 1024;

/// Configuration of [`S3FileStore`].
///
/// ```json
/// { "bucket": "shop-files", "region": "eu-west-1", "prefix": "prod",
///   "public_base_url": "https://cdn.shop.example" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Options {
    /// Bucket name (required).
    pub bucket: String,
    /// Region. Default `us-east-1`.
    pub region: String,
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`. Default: AWS.
    pub endpoint: Option<String>,
    /// Allow `http://` endpoints (local servers). Default false.
    pub allow_http: bool,
    /// Use `https://<bucket>.<endpoint>` URLs instead of `<endpoint>/<bucket>`. Default false.
    pub virtual_hosted_style_request: bool,
    /// Access key id; default from the environment / instance credentials.
    pub access_key_id: Option<String>,
    /// Secret access key; default from the environment / instance credentials.
    pub secret_access_key: Option<SecretString>,
    /// Session token for temporary credentials.
    pub session_token: Option<SecretString>,
    /// Folder inside the bucket holding all files, e.g. `prod`. Default none.
    pub prefix: Option<String>,
    /// Base of public URLs (a CDN or website endpoint). Default: the bucket's URL.
    pub public_base_url: Option<String>,
    /// `Cache-Control` stored with every object. Default none.
    pub cache_control: Option<String>,
    /// Longest presigned URL lifetime in seconds, at most 7 days. Default 7 days.
    pub max_presign_expiry_secs: u64,
    /// Part size of streamed multipart uploads, at least 5 MiB. Default 8 MiB.
    pub multipart_part_size: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            allow_http: false,
            virtual_hosted_style_request: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            prefix: None,
            public_base_url: None,
            cache_control: None,
            max_presign_expiry_secs: S3_MAX_PRESIGN,
            multipart_part_size: 8 * 1024 * 1024,
        }
    }
}

/// Files in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3FileStore {
    s3: Arc<AmazonS3>,
    bucket: String,
    prefix: Option<String>,
    public_base_url: String,
    cache_control: Option<String>,
    max_expiry: Duration,
    part_size: usize,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidOptions {
        provider: PROVIDER,
        reason: reason.into(),
    }
}

impl S3FileStore {
    /// Builds the store. It makes no request: a wrong bucket or credentials show on first use.
    pub fn new(options: S3Options) -> Result<Self, Error> {
        if options.bucket.is_empty() {
            return Err(invalid("`bucket` is required"));
        }
        if options.max_presign_expiry_secs == 0 || options.max_presign_expiry_secs > S3_MAX_PRESIGN
        {
            return Err(invalid(format!(
                "max_presign_expiry_secs must be within 1..={S3_MAX_PRESIGN}"
            )));
        }
        if options.multipart_part_size < S3_MIN_PART {
            return Err(invalid(format!(
                "multipart_part_size must be at least {S3_MIN_PART}"
            )));
        }
        let prefix = match options.prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => None,
            Some(p) => {
                // Reuse the key rules: the prefix is a path like any other.
                FileKey::private(p).map_err(|e| invalid(format!("prefix: {e}")))?;
                Some(p.to_owned())
            }
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_allow_http(options.allow_http)
            .with_virtual_hosted_style_request(options.virtual_hosted_style_request);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(id) = &options.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        if let Some(token) = &options.session_token {
            builder = builder.with_token(token.expose_secret());
        }
        let s3 = builder.build().map_err(|e| invalid(e.to_string()))?;
        let public_base_url = match (&options.public_base_url, &options.endpoint) {
            (Some(base), _) => base.trim_end_matches('/').to_owned(),
            (None, Some(endpoint)) if options.virtual_hosted_style_request => {
                let endpoint = endpoint.trim_end_matches('/');
                match endpoint.split_once("://") {
                    Some((scheme, host)) => format!("{scheme}://{}.{host}", options.bucket),
                    None => return Err(invalid(format!("endpoint {endpoint:?} has no scheme"))),
                }
            }
            (None, Some(endpoint)) => {
                format!("{}/{}", endpoint.trim_end_matches('/'), options.bucket)
            }
            (None, None) => format!(
                "https://{}.s3.{}.amazonaws.com",
                options.bucket, options.region
            ),
        };
        Ok(Self {
            s3: Arc::new(s3),
            bucket: options.bucket,
            prefix,
            public_base_url,
            cache_control: options.cache_control,
            max_expiry: Duration::from_secs(options.max_presign_expiry_secs),
            part_size: options.multipart_part_size,
        })
    }

    /// The bucket policy that makes the public half readable by anyone and nothing else.
    pub fn public_read_policy(&self) -> String {
        let folder = match &self.prefix {
            Some(prefix) => format!("{prefix}/public"),
            None => "public".into(),
        };
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "GorgonPublicFiles",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{}/{folder}/*", self.bucket),
            }]
        })
        .to_string()
    }

    fn object_key(&self, key: &FileKey) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.to_string(),
        }
    }

    /// The object path of `key`. `FileKey` admits nothing `object_store` refuses, so this fails
    /// only if the two sets of rules ever drift apart; it is a typed error then, not a panic.
    fn location(&self, key: &FileKey) -> Result<Path, Error> {
        Path::parse(self.object_key(key)).map_err(|e| Error::InvalidKey {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    fn attributes(&self, content_type: Option<&str>) -> Attributes {
        let mut attributes = Attributes::new();
        if let Some(content_type) = content_type {
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        }
        if let Some(cache_control) = &self.cache_control {
            attributes.insert(Attribute::CacheControl, cache_control.clone().into());
        }
        attributes
    }

    fn stored(&self, key: &FileKey, size: u64) -> StoredFile {
        StoredFile {
            key: key.clone(),
            size,
            public_url: self.public_url(key).ok(),
        }
    }
}

fn backend(operation: Operation, key: &FileKey, source: object_store::Error) -> Error {
    match source {
        object_store::Error::NotFound { .. } => Error::NotFound {
            key: key.to_string(),
            operation,
        },
        source => Error::Backend {
            provider: PROVIDER,
            operation,
            key: key.to_string(),
            source: source.into(),
        },
    }
}

#[async_trait]
impl FileStore for S3FileStore {
    async fn upload(
        &self,
        key: &FileKey,
        data: Bytes,
        content_type: Option<&str>,
    ) -> Result<StoredFile, Error> {
        let size = data.len() as u64;
        let options = PutOptions {
            attributes: self.attributes(content_type),
            ..PutOptions::default()
        };
        self.s3
            .put_opts(&self.location(key)?, PutPayload::from_bytes(data), options)
            .await
            .map_err(|e| backend(Operation::Upload, key, e))?;
        Ok(self.stored(key, size))
    }

    async fn upload_stream(
        &self,
        key: &FileKey,
        mut stream: ByteStream,
        content_type: Option<&str>,
    ) -> Result<StoredFile, Error> {
        let stream_failed = |source| Error::UploadStream {
            key: key.to_string(),
            source,
        };
        // Buffer up to one part: a short stream is a single PutObject.
        let mut head: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        while buffered <= self.part_size {
            match stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(stream_failed)?;
                    buffered += chunk.len();
                    head.push(chunk);
                }
                None => {
                    let payload: PutPayload = head.into_iter().collect();
                    let options = PutOptions {
                        attributes: self.attributes(content_type),
                        ..PutOptions::default()
                    };
                    self.s3
                        .put_opts(&self.location(key)?, payload, options)
                        .await
                        .map_err(|e| backend(Operation::Upload, key, e))?;
                    return Ok(self.stored(key, buffered as u64));
                }
            }
        }
        let options = PutMultipartOptions {
            attributes: self.attributes(content_type),
            ..PutMultipartOptions::default()
        };
        let upload = self
            .s3
            .put_multipart_opts(&self.location(key)?, options)
            .await
            .map_err(|e| backend(Operation::Upload, key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut size = 0u64;
        let mut pending = futures::stream::iter(head.into_iter().map(Ok)).chain(stream);
        let failure = loop {
            match pending.next().await {
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    writer.put(chunk);
                    if let Err(e) = writer.wait_for_capacity(4).await {
                        break backend(Operation::Upload, key, e);
                    }
                }
                Some(Err(e)) => break stream_failed(e),
                None => {
                    return match writer.finish().await {
                        Ok(_) => Ok(self.stored(key, size)),
                        Err(e) => Err(backend(Operation::Upload, key, e)),
                    };
                }
            }
        };
        if let Err(abort) = writer.abort().await {
            tracing::warn!(key = %key, error = %abort, "s3: aborting a failed multipart upload failed");
        }
        Err(failure)
    }

    async fn delete(&self, key: &FileKey) -> Result<(), Error> {
        match self.s3.delete(&self.location(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(Operation::Delete, key, e)),
        }
    }

    async fn get_presigned_download_url(
        &self,
        key: &FileKey,
        expires_in: Duration,
    ) -> Result<PresignedUrl, Error> {
        check_expiry(key, expires_in, self.max_expiry)?;
        let location = self.location(key)?;
        self.s3
            .head(&location)
            .await
            .map_err(|e| backend(Operation::Presign, key, e))?;
        let now = SystemTime::now();
        let url = self
            .s3
            .signed_url(Method::GET, &location, expires_in)
            .await
            .map_err(|e| backend(Operation::Presign, key, e))?;
        Ok(PresignedUrl {
            url: url.to_string(),
            expires_at: now + expires_in,
        })
    }

    async fn get_download_stream(&self, key: &FileKey) -> Result<Download, Error> {
        let result = self
            .s3
            .get(&self.location(key)?)
            .await
            .map_err(|e| backend(Operation::Download, key, e))?;
        let size = result.meta.size;
        let content_type = result
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let stream = result
            .into_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed();
        Ok(Download {
            size: Some(size),
            content_type,
            stream,
        })
    }

    fn public_url(&self, key: &FileKey) -> Result<String, Error> {
        match key.access() {
            Access::Public => Ok(format!(
                "{}/{}",
                self.public_base_url,
                encode_path(&self.object_key(key))
            )),
            Access::Private => Err(Error::NotPublic {
                key: key.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_need_a_bucket_and_sane_limits() {
        let options: S3Options = serde_json::from_str(r#"{"bucket": "b"}"#).unwrap();
        assert_eq!(options.region, "us-east-1");
        assert_eq!(options.multipart_part_size, 8 * 1024 * 1024);
        assert!(serde_json::from_str::<S3Options>(r#"{"bucket": "b", "bukket": 1}"#).is_err());
        assert!(matches!(
            S3FileStore::new(S3Options::default()),
            Err(Error::InvalidOptions { .. })
        ));
        for bad in [
            S3Options {
                bucket: "b".into(),
                max_presign_expiry_secs: 8 * 24 * 3600,
                ..S3Options::default()
            },
            S3Options {
                bucket: "b".into(),
                multipart_part_size: 1024,
                ..S3Options::default()
            },
            S3Options {
                bucket: "b".into(),
                prefix: Some("../up".into()),
                ..S3Options::default()
            },
        ] {
            assert!(S3FileStore::new(bad).is_err());
        }
    }

    #[test]
    fn public_urls_follow_prefix_and_endpoint_style() {
        let key = FileKey::public("a b/c.png").unwrap();
        let aws = S3FileStore::new(S3Options {
            bucket: "shop".into(),
            region: "eu-west-1".into(),
            prefix: Some("/prod/".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..S3Options::default()
        })
        .unwrap();
        assert_eq!(
            aws.public_url(&key).unwrap(),
            "https://shop.s3.eu-west-1.amazonaws.com/prod/public/a%20b/c.png"
        );
        assert!(
            aws.public_read_policy()
                .contains("arn:aws:s3:::shop/prod/public/*")
        );
        let local = S3FileStore::new(S3Options {
            bucket: "shop".into(),
            endpoint: Some("http://127.0.0.1:9000/".into()),
            allow_http: true,
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..S3Options::default()
        })
        .unwrap();
        assert_eq!(
            local.public_url(&key).unwrap(),
            "http://127.0.0.1:9000/shop/public/a%20b/c.png"
        );
        assert!(matches!(
            local.public_url(&FileKey::private("x").unwrap()),
            Err(Error::NotPublic { .. })
        ));
    }
}
