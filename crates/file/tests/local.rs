//! The local-disk provider against the conformance suite, served over real HTTP by a small axum
//! server that plays the HTTP layer: `/static/*` serves public files, `/files/*` checks presigned
//! URLs with `UrlSigner::verify` before streaming.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gorgon_file::testing::{Harness, run_all};
use gorgon_file::{Access, Error, FileKey, FileStore, LocalFileStore, LocalOptions, decode_path};

struct Served {
    store: Arc<LocalFileStore>,
    root: tempfile::TempDir,
    base: String,
}

async fn stream(store: &LocalFileStore, key: &FileKey) -> Response {
    match store.get_download_stream(key).await {
        Ok(download) => {
            let mut response = Body::from_stream(download.stream).into_response();
            if let Some(content_type) = download.content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            }
            response
        }
        Err(Error::NotFound { .. }) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn serve_public(State(store): State<Arc<LocalFileStore>>, uri: Uri) -> Response {
    let raw = uri.path().trim_start_matches("/static/");
    let Some(key) = decode_path(raw).and_then(|p| FileKey::new(Access::Public, &p).ok()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    stream(&store, &key).await
}

async fn serve_presigned(State(store): State<Arc<LocalFileStore>>, uri: Uri) -> Response {
    let raw = uri.path().trim_start_matches("/files/");
    match store.signer().verify(raw, uri.query().unwrap_or("")) {
        Ok(key) => stream(&store, &key).await,
        Err(_) => StatusCode::FORBIDDEN.into_response(),
    }
}

async fn served_store() -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let root = tempfile::tempdir().unwrap();
    let options: LocalOptions = serde_json::from_value(serde_json::json!({
        "root": root.path(),
        "public_base_url": format!("{base}/static"),
        "presign_base_url": format!("{base}/files/"),
        "signing_secret": "a test secret that is long enough",
    }))
    .unwrap();
    let store = Arc::new(LocalFileStore::new(options).unwrap());
    let app = axum::Router::new()
        .route("/static/{*path}", axum::routing::get(serve_public))
        .route("/files/{*path}", axum::routing::get(serve_presigned))
        .with_state(store.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Served { store, root, base }
}

#[tokio::test]
async fn local_store_passes_the_suite() {
    let served = served_store().await;
    run_all(served.store.as_ref(), &Harness::default()).await;
}

#[tokio::test]
async fn private_files_are_not_in_the_public_folder_or_url_space() {
    let served = served_store().await;
    let key = FileKey::private("secret/plan.txt").unwrap();
    served
        .store
        .upload(&key, Bytes::from_static(b"top secret"), None)
        .await
        .unwrap();
    assert!(!served.root.path().join("public/secret/plan.txt").exists());
    assert!(served.root.path().join("private/secret/plan.txt").exists());
    let client = reqwest::Client::new();
    for url in [
        format!("{}/static/secret/plan.txt", served.base),
        format!("{}/static/..%2Fprivate/secret/plan.txt", served.base),
        format!("{}/files/private/secret/plan.txt", served.base),
        format!(
            "{}/files/private/secret/plan.txt?expires=99999999999&signature=00",
            served.base
        ),
    ] {
        let status = client.get(&url).send().await.unwrap().status();
        assert!(status.is_client_error(), "{url} gave {status}");
    }
}

#[tokio::test]
async fn presigned_urls_survive_a_restart_with_the_same_secret() {
    let served = served_store().await;
    let key = FileKey::private("a.txt").unwrap();
    served
        .store
        .upload(&key, Bytes::from_static(b"a"), None)
        .await
        .unwrap();
    let url = served
        .store
        .get_presigned_download_url(&key, std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .url;
    let restarted = LocalFileStore::new(LocalOptions {
        root: served.root.path().into(),
        presign_base_url: format!("{}/files", served.base),
        signing_secret: Some("a test secret that is long enough".into()),
        ..LocalOptions::default()
    })
    .unwrap();
    let (path, query) = url
        .strip_prefix(&format!("{}/files/", served.base))
        .unwrap()
        .split_once('?')
        .unwrap();
    assert_eq!(restarted.signer().verify(path, query).unwrap(), key);
}

fn plain_store(root: &std::path::Path) -> LocalFileStore {
    LocalFileStore::new(LocalOptions {
        root: root.into(),
        signing_secret: Some("a test secret that is long enough".into()),
        ..LocalOptions::default()
    })
    .unwrap()
}

/// Hidden files (`.htaccess`, which a web server serving the public folder would act on) are
/// not keys; active content is refused in the public folder and kept in the private one; a
/// content type must be a `type/subtype`.
#[tokio::test]
async fn hidden_files_and_active_public_content_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = plain_store(root.path());
    for path in [".htaccess", "logos/.git/config", "."] {
        assert!(
            matches!(FileKey::public(path), Err(Error::InvalidKey { .. })),
            "{path}"
        );
    }
    let page = FileKey::public("pages/promo.html").unwrap();
    for active in ["text/html", "image/svg+xml", "Text/HTML; charset=utf-8"] {
        let refused = store
            .upload(&page, Bytes::from_static(b"<script>"), Some(active))
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidContentType { .. })),
            "{active}: {refused:?}"
        );
    }
    assert!(!root.path().join("public/pages/promo.html").exists());
    let private = FileKey::private("pages/promo.html").unwrap();
    store
        .upload(&private, Bytes::from_static(b"<p>"), Some("text/html"))
        .await
        .expect("a private file is served through presigned URLs, with its headers");
    for bad in ["html", "text/", "text/html\r\nX-Injected: 1"] {
        let refused = store
            .upload(&private, Bytes::from_static(b"x"), Some(bad))
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidContentType { .. })),
            "{bad:?}"
        );
    }
    let allowing = LocalFileStore::new(LocalOptions {
        root: root.path().into(),
        allow_active_content: true,
        ..LocalOptions::default()
    })
    .unwrap();
    allowing
        .upload(&page, Bytes::from_static(b"<p>"), Some("text/html"))
        .await
        .expect("allowed when configured");
}

/// Many uploads to one key at once: whichever bytes end up there carry their own content type.
#[tokio::test]
async fn concurrent_uploads_to_one_key_keep_each_file_with_its_content_type() {
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(plain_store(root.path()));
    let key = FileKey::private("race/file").unwrap();
    let uploads = (0..40).map(|i| {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            let kind = format!("application/x-upload-{i}");
            store
                .upload(&key, Bytes::from(kind.clone()), Some(&kind))
                .await
        })
    });
    for upload in futures::future::join_all(uploads).await {
        upload.unwrap().unwrap();
    }
    let download = store.get_download_stream(&key).await.unwrap();
    let kind = download.content_type.clone().expect("a content type");
    let bytes: Vec<u8> = futures::StreamExt::collect::<Vec<_>>(download.stream)
        .await
        .into_iter()
        .flat_map(|chunk| chunk.unwrap().to_vec())
        .collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), kind);
}

/// What interrupted uploads left in `.tmp` is removed at start once old enough.
#[tokio::test]
async fn leftovers_of_interrupted_uploads_are_removed_at_start() {
    let root = tempfile::tempdir().unwrap();
    drop(plain_store(root.path()));
    let old = root.path().join(".tmp/crashed-upload");
    let young = root.path().join(".tmp/upload-in-progress");
    std::fs::write(&old, b"partial").unwrap();
    std::fs::write(&young, b"partial").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    drop(plain_store(root.path()));
    assert!(!old.exists(), "an old leftover is removed");
    assert!(
        young.exists(),
        "a young one may be another process's upload"
    );
}

/// An upload over the store's limit is refused and leaves nothing behind.
#[tokio::test]
async fn an_upload_over_the_limit_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalFileStore::new(LocalOptions {
        root: root.path().into(),
        max_upload_bytes: 10,
        ..LocalOptions::default()
    })
    .unwrap();
    let key = FileKey::private("big").unwrap();
    let refused = store
        .upload(&key, Bytes::from_static(b"eleven byte"), None)
        .await;
    assert!(
        matches!(refused, Err(Error::TooLarge { limit: 10, .. })),
        "{refused:?}"
    );
    assert!(!root.path().join("private/big").exists());
    assert_eq!(
        std::fs::read_dir(root.path().join(".tmp")).unwrap().count(),
        0
    );
    store
        .upload(&key, Bytes::from_static(b"ten bytes!"), None)
        .await
        .expect("at the limit");
}
