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
