//! The conformance suite every [`FileStore`] provider runs against itself.
//!
//! A provider's test builds its store, serves its URLs for real (the local provider behind an
//! HTTP server in the test, S3 behind a moto server), and calls [`run_all`]. Every check uses
//! keys under a fresh random folder and deletes what it uploads, so suites can share a backend.
//! Checks panic with a message naming the broken rule.

use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;

use crate::{Error, FileKey, FileStore};

/// What the suite needs besides the store: a way to fetch URLs.
#[derive(Debug, Clone)]
pub struct Harness {
    /// Client used to fetch public and presigned URLs.
    pub client: reqwest::Client,
    /// Whether the server behind presigned URLs refuses them once expired. True for the local
    /// provider's verifier and for AWS; false for moto, which does not check expiry. When false
    /// the suite checks only the advertised expiry.
    pub enforces_expiry: bool,
}

impl Default for Harness {
    fn default() -> Self {
        Self {
            client: reqwest::Client::new(),
            enforces_expiry: true,
        }
    }
}

/// Runs every check of the suite.
pub async fn run_all(store: &dyn FileStore, harness: &Harness) {
    round_trip_bytes(store).await;
    round_trip_stream(store).await;
    large_streamed_upload(store).await;
    upload_replaces(store).await;
    failed_stream_upload_stores_nothing(store).await;
    delete_then_missing(store).await;
    presigned_url_downloads(store, harness).await;
    presigned_url_expires(store, harness).await;
    presign_refuses_bad_expiry_and_missing_files(store).await;
    public_and_private(store, harness).await;
    bad_keys_are_refused(store).await;
    unusual_valid_keys_round_trip(store, harness).await;
}

fn folder() -> String {
    format!("suite-{}", uuid::Uuid::new_v4().simple())
}

fn key(access: crate::Access, path: &str) -> FileKey {
    FileKey::new(access, path).expect("suite keys are valid")
}

async fn read_all(store: &dyn FileStore, key: &FileKey) -> (Bytes, Option<String>) {
    let download = store
        .get_download_stream(key)
        .await
        .unwrap_or_else(|e| panic!("download of {key} failed: {e}"));
    let content_type = download.content_type.clone();
    let size = download.size;
    let mut out = Vec::new();
    let mut stream = download.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("download of {key}: {e}")));
    }
    if let Some(size) = size {
        assert_eq!(size, out.len() as u64, "advertised size of {key}");
    }
    (out.into(), content_type)
}

async fn fetch(harness: &Harness, url: &str) -> reqwest::Response {
    harness
        .client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
}

/// Bytes uploaded come back identical, with their content type and size.
pub async fn round_trip_bytes(store: &dyn FileStore) {
    let key = key(crate::Access::Private, &format!("{}/hello.txt", folder()));
    let stored = store
        .upload(
            &key,
            Bytes::from_static(b"hello, gorgon"),
            Some("text/plain"),
        )
        .await
        .expect("upload bytes");
    assert_eq!(stored.key, key);
    assert_eq!(stored.size, 13);
    assert_eq!(stored.public_url, None, "private files have no public URL");
    let (data, content_type) = read_all(store, &key).await;
    assert_eq!(&data[..], b"hello, gorgon");
    assert_eq!(content_type.as_deref(), Some("text/plain"));
    store.delete(&key).await.expect("delete");
}

/// A stream of many chunks is stored as their concatenation; an empty file works too.
pub async fn round_trip_stream(store: &dyn FileStore) {
    let key = key(crate::Access::Public, &format!("{}/chunks.bin", folder()));
    let chunks: Vec<io::Result<Bytes>> = (0..50u8)
        .map(|i| Ok(Bytes::from(vec![i; 100 + usize::from(i)])))
        .collect();
    let expected: Vec<u8> = (0..50u8)
        .flat_map(|i| vec![i; 100 + usize::from(i)])
        .collect();
    let stored = store
        .upload_stream(&key, futures::stream::iter(chunks).boxed(), None)
        .await
        .expect("upload stream");
    assert_eq!(stored.size, expected.len() as u64);
    assert_eq!(read_all(store, &key).await.0, expected);

    let empty = key_in(&key, "empty");
    store
        .upload_stream(&empty, futures::stream::empty().boxed(), None)
        .await
        .expect("upload empty stream");
    assert!(read_all(store, &empty).await.0.is_empty());
    store.delete(&key).await.expect("delete");
    store.delete(&empty).await.expect("delete");
}

fn key_in(sibling: &FileKey, name: &str) -> FileKey {
    let parent = sibling.path().rsplit_once('/').map_or("", |(p, _)| p);
    key(sibling.access(), &format!("{parent}/{name}"))
}

fn pattern(offset: usize, len: usize) -> Bytes {
    (offset..offset + len)
        .map(|i| ((i * 31 + i / 7) % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// A 12 MiB upload streamed in 64 KiB chunks (multipart on S3) comes back byte for byte,
/// downloaded as a stream too.
pub async fn large_streamed_upload(store: &dyn FileStore) {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 12 * 1024 * 1024;
    let key = key(crate::Access::Private, &format!("{}/large.bin", folder()));
    let stream = futures::stream::iter((0..TOTAL / CHUNK).map(|i| Ok(pattern(i * CHUNK, CHUNK))));
    let stored = store
        .upload_stream(&key, stream.boxed(), Some("application/octet-stream"))
        .await
        .expect("large upload");
    assert_eq!(stored.size, TOTAL as u64);
    let download = store.get_download_stream(&key).await.expect("download");
    assert_eq!(download.size, Some(TOTAL as u64));
    let mut offset = 0;
    let mut stream = download.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        assert!(
            chunk == pattern(offset, chunk.len()),
            "large file differs near byte {offset}"
        );
        offset += chunk.len();
    }
    assert_eq!(offset, TOTAL, "large file length");
    store.delete(&key).await.expect("delete");
}

/// A second upload to a key replaces the first.
pub async fn upload_replaces(store: &dyn FileStore) {
    let key = key(crate::Access::Private, &format!("{}/v.txt", folder()));
    store
        .upload(&key, Bytes::from_static(b"first"), Some("text/plain"))
        .await
        .expect("first upload");
    store
        .upload(&key, Bytes::from_static(b"second!"), Some("text/markdown"))
        .await
        .expect("second upload");
    let (data, content_type) = read_all(store, &key).await;
    assert_eq!(&data[..], b"second!");
    assert_eq!(content_type.as_deref(), Some("text/markdown"));
    store.delete(&key).await.expect("delete");
}

/// A stream that fails midway stores nothing: a new key stays missing, an existing key keeps its
/// old content.
pub async fn failed_stream_upload_stores_nothing(store: &dyn FileStore) {
    let dir = folder();
    let failing = || {
        futures::stream::iter([
            Ok(Bytes::from(vec![1u8; 1024])),
            Ok(Bytes::from(vec![2u8; 1024])),
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client went away",
            )),
        ])
        .boxed()
    };
    let fresh = key(crate::Access::Private, &format!("{dir}/fresh.bin"));
    let result = store.upload_stream(&fresh, failing(), None).await;
    assert!(
        matches!(result, Err(Error::UploadStream { .. })),
        "a failing stream must give UploadStream, got {result:?}"
    );
    assert!(matches!(
        store.get_download_stream(&fresh).await,
        Err(Error::NotFound { .. })
    ));

    let existing = key(crate::Access::Private, &format!("{dir}/existing.bin"));
    store
        .upload(&existing, Bytes::from_static(b"old"), None)
        .await
        .expect("upload");
    let result = store.upload_stream(&existing, failing(), None).await;
    assert!(matches!(result, Err(Error::UploadStream { .. })));
    assert_eq!(&read_all(store, &existing).await.0[..], b"old");
    store.delete(&existing).await.expect("delete");
}

/// After delete the file is missing for download and presign; deleting again succeeds.
pub async fn delete_then_missing(store: &dyn FileStore) {
    let key = key(crate::Access::Public, &format!("{}/gone.txt", folder()));
    store
        .upload(&key, Bytes::from_static(b"bye"), None)
        .await
        .expect("upload");
    store.delete(&key).await.expect("delete");
    let download = store.get_download_stream(&key).await;
    assert!(
        matches!(download, Err(Error::NotFound { .. })),
        "download after delete: {download:?}"
    );
    let presign = store
        .get_presigned_download_url(&key, Duration::from_secs(60))
        .await;
    assert!(
        matches!(presign, Err(Error::NotFound { .. })),
        "presign after delete: {presign:?}"
    );
    store
        .delete(&key)
        .await
        .expect("deleting a missing file succeeds");
}

/// A presigned URL of a private file downloads it over HTTP and advertises its expiry.
pub async fn presigned_url_downloads(store: &dyn FileStore, harness: &Harness) {
    let key = key(crate::Access::Private, &format!("{}/invoice.pdf", folder()));
    store
        .upload(
            &key,
            Bytes::from_static(b"%PDF-1.7 invoice"),
            Some("application/pdf"),
        )
        .await
        .expect("upload");
    let before = SystemTime::now();
    let presigned = store
        .get_presigned_download_url(&key, Duration::from_secs(600))
        .await
        .expect("presign");
    let lower = before + Duration::from_secs(599);
    let upper = SystemTime::now() + Duration::from_secs(602);
    assert!(
        presigned.expires_at >= lower && presigned.expires_at <= upper,
        "expires_at must be about 600 s from now"
    );
    let response = fetch(harness, &presigned.url).await;
    assert!(
        response.status().is_success(),
        "GET presigned URL: {}",
        response.status()
    );
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/pdf")
    );
    assert_eq!(
        &response.bytes().await.expect("body")[..],
        b"%PDF-1.7 invoice"
    );
    store.delete(&key).await.expect("delete");
}

/// A presigned URL stops working after its expiry (where the server enforces it).
pub async fn presigned_url_expires(store: &dyn FileStore, harness: &Harness) {
    let key = key(crate::Access::Private, &format!("{}/short.txt", folder()));
    store
        .upload(&key, Bytes::from_static(b"soon gone"), None)
        .await
        .expect("upload");
    let presigned = store
        // Three seconds: expiry has whole-second precision, and a loaded machine may take a
        // while between signing and fetching.
        .get_presigned_download_url(&key, Duration::from_secs(3))
        .await
        .expect("presign");
    assert!(presigned.expires_at <= SystemTime::now() + Duration::from_secs(5));
    let response = fetch(harness, &presigned.url).await;
    assert!(response.status().is_success(), "fresh URL must work");
    if harness.enforces_expiry {
        let wait = presigned
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(1100);
        tokio::time::sleep(wait).await;
        let response = fetch(harness, &presigned.url).await;
        assert!(
            response.status().is_client_error(),
            "expired URL must be refused, got {}",
            response.status()
        );
    }
    store.delete(&key).await.expect("delete");
}

/// Presigning refuses lifetimes under a second or over the maximum, and missing files.
pub async fn presign_refuses_bad_expiry_and_missing_files(store: &dyn FileStore) {
    let key = key(crate::Access::Private, &format!("{}/x.txt", folder()));
    store
        .upload(&key, Bytes::from_static(b"x"), None)
        .await
        .expect("upload");
    for bad in [Duration::ZERO, Duration::from_secs(400 * 24 * 3600)] {
        let result = store.get_presigned_download_url(&key, bad).await;
        assert!(
            matches!(result, Err(Error::InvalidExpiry { .. })),
            "expiry {bad:?}: {result:?}"
        );
    }
    store.delete(&key).await.expect("delete");
    let missing = key_in(&key, "never-uploaded.txt");
    assert!(matches!(
        store
            .get_presigned_download_url(&missing, Duration::from_secs(60))
            .await,
        Err(Error::NotFound { .. })
    ));
}

/// Public files have a stable public URL that serves them; private files have none.
pub async fn public_and_private(store: &dyn FileStore, harness: &Harness) {
    let dir = folder();
    let public = key(crate::Access::Public, &format!("{dir}/logo.png"));
    let private = key(crate::Access::Private, &format!("{dir}/logo.png"));
    let stored = store
        .upload(
            &public,
            Bytes::from_static(b"PNG public"),
            Some("image/png"),
        )
        .await
        .expect("upload public");
    store
        .upload(
            &private,
            Bytes::from_static(b"PNG private"),
            Some("image/png"),
        )
        .await
        .expect("upload private");
    let url = store.public_url(&public).expect("public URL");
    assert_eq!(stored.public_url.as_deref(), Some(url.as_str()));
    assert_eq!(
        store.public_url(&public).expect("public URL"),
        url,
        "stable"
    );
    let response = fetch(harness, &url).await;
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    assert_eq!(&response.bytes().await.expect("body")[..], b"PNG public");
    assert!(matches!(
        store.public_url(&private),
        Err(Error::NotPublic { .. })
    ));
    assert_eq!(&read_all(store, &private).await.0[..], b"PNG private");
    store.delete(&public).await.expect("delete");
    assert_eq!(
        &read_all(store, &private).await.0[..],
        b"PNG private",
        "public and private are separate namespaces"
    );
    store.delete(&private).await.expect("delete");
}

/// Keys that could escape the store or need escaping are refused with a typed error.
pub async fn bad_keys_are_refused(store: &dyn FileStore) {
    for bad in [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a//b",
        "a\\..\\b",
        "a?b=c",
    ] {
        let result = FileKey::private(bad);
        assert!(
            matches!(result, Err(Error::InvalidKey { .. })),
            "{bad:?}: {result:?}"
        );
    }
    for bad in ["../x", "x", "shared/x", "public"] {
        assert!(matches!(FileKey::parse(bad), Err(Error::InvalidKey { .. })));
    }
    // Nothing escaped into the namespace either.
    let probe = key(crate::Access::Private, &format!("{}/x", folder()));
    assert!(matches!(
        store.get_download_stream(&probe).await,
        Err(Error::NotFound { .. })
    ));
}

/// Keys with spaces, `+`, parentheses and non-ASCII letters work in storage and in URLs.
pub async fn unusual_valid_keys_round_trip(store: &dyn FileStore, harness: &Harness) {
    let path = format!("{}/My Files/Ünïcode (1)+plus=eq@at,comma!'.txt", folder());
    for access in [crate::Access::Public, crate::Access::Private] {
        let key = key(access, &path);
        store
            .upload(&key, Bytes::from(key.to_string()), Some("text/plain"))
            .await
            .unwrap_or_else(|e| panic!("upload {key}: {e}"));
        assert_eq!(read_all(store, &key).await.0, key.to_string());
        let presigned = store
            .get_presigned_download_url(&key, Duration::from_secs(60))
            .await
            .expect("presign");
        let response = fetch(harness, &presigned.url).await;
        assert!(
            response.status().is_success(),
            "GET {}: {}",
            presigned.url,
            response.status()
        );
        assert_eq!(response.bytes().await.expect("body"), key.to_string());
        if let Ok(url) = store.public_url(&key) {
            let response = fetch(harness, &url).await;
            assert!(response.status().is_success(), "GET {url}");
            assert_eq!(response.bytes().await.expect("body"), key.to_string());
        }
        store.delete(&key).await.expect("delete");
    }
}
