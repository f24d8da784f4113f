//! The S3 provider against a real moto server (`python3 -m moto.server`) started by each test.

use std::io;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use gorgon_file::testing::{Harness, run_all};
use gorgon_file::{Error, FileKey, FileStore};
use gorgon_file_s3::S3FileStore;

/// A moto server on a free port, killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
    log: std::path::PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn start_moto() -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(format!("gorgon-moto-{port}.log"));
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("python3 is needed to run the moto S3 stand-in (.ci/install-standins.sh)");
    let mut moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        log: log.clone(),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = moto.child.try_wait().unwrap() {
            panic!(
                "moto server exited ({status}); install it with `python3 -m pip install 'moto[server]'` \
                 (.ci/install-standins.sh). Its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if client.get(&moto.endpoint).send().await.is_ok() {
            return moto;
        }
        assert!(
            Instant::now() < deadline,
            "moto server did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bucket(moto: &Moto, prefix: Option<&str>) -> S3FileStore {
    let bucket = format!("gorgon-{}", uuid::Uuid::new_v4().simple());
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}/{bucket}", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    let store = S3FileStore::new(
        serde_json::from_value(serde_json::json!({
            "bucket": bucket,
            "endpoint": moto.endpoint,
            "allow_http": true,
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "prefix": prefix,
            "multipart_part_size": 5 * 1024 * 1024,
        }))
        .unwrap(),
    )
    .unwrap();
    let policy = client
        .put(format!("{}/{bucket}?policy", moto.endpoint))
        .body(store.public_read_policy())
        .send()
        .await
        .unwrap();
    assert!(
        policy.status().is_success(),
        "put policy: {}",
        policy.status()
    );
    store
}

#[tokio::test]
async fn s3_store_passes_the_suite() {
    let moto = start_moto().await;
    let store = bucket(&moto, Some("shop")).await;
    let harness = Harness {
        client: reqwest::Client::new(),
        // moto accepts presigned URLs without checking their expiry; see the test below.
        enforces_expiry: false,
    };
    run_all(&store, &harness).await;
}

#[tokio::test]
async fn anonymous_reads_reach_public_files_only() {
    let moto = start_moto().await;
    let store = bucket(&moto, None).await;
    let client = reqwest::Client::new();
    let public = FileKey::public("p.txt").unwrap();
    let private = FileKey::private("p.txt").unwrap();
    store
        .upload(&public, Bytes::from_static(b"pub"), None)
        .await
        .unwrap();
    store
        .upload(&private, Bytes::from_static(b"priv"), None)
        .await
        .unwrap();
    let public_url = store.public_url(&public).unwrap();
    let response = client.get(&public_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), "pub");
    // The same URL shape for the private object is refused without a signature.
    let private_plain = public_url.replace("/public/", "/private/");
    let status = client.get(&private_plain).send().await.unwrap().status();
    assert_eq!(
        status, 403,
        "an unsigned read of a private file must be refused"
    );
}

#[tokio::test]
async fn presigned_url_is_sigv4_with_the_requested_expiry() {
    let moto = start_moto().await;
    let store = bucket(&moto, None).await;
    let key = FileKey::private("report.csv").unwrap();
    store
        .upload(&key, Bytes::from_static(b"a,b\n1,2\n"), Some("text/csv"))
        .await
        .unwrap();
    let presigned = store
        .get_presigned_download_url(&key, Duration::from_secs(900))
        .await
        .unwrap();
    for part in [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Expires=900",
        "X-Amz-Signature=",
        "/private/report.csv?",
    ] {
        assert!(
            presigned.url.contains(part),
            "{} lacks {part}",
            presigned.url
        );
    }
    let response = reqwest::get(&presigned.url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv");
    assert_eq!(response.bytes().await.unwrap(), "a,b\n1,2\n");
}

fn chunks(count: usize, fail_at_end: bool) -> gorgon_file::ByteStream {
    let data = (0..count).map(|i| Ok(Bytes::from(vec![i as u8; 1024 * 1024])));
    let tail = fail_at_end.then(|| Err(io::Error::other("source died")));
    futures::stream::iter(data.chain(tail)).boxed()
}

#[tokio::test]
async fn long_streams_become_multipart_uploads_and_failures_abort_them() {
    let moto = start_moto().await;
    let store = bucket(&moto, None).await;
    let client = reqwest::Client::new();
    let key = FileKey::public("video.bin").unwrap();
    let stored = store
        .upload_stream(&key, chunks(11, false), None)
        .await
        .unwrap();
    assert_eq!(stored.size, 11 * 1024 * 1024);
    let head = client
        .head(store.public_url(&key).unwrap())
        .send()
        .await
        .unwrap();
    let etag = head.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.ends_with("-3\""),
        "a 3-part multipart ETag, got {etag}"
    );

    let failed = FileKey::public("broken.bin").unwrap();
    let result = store.upload_stream(&failed, chunks(11, true), None).await;
    assert!(
        matches!(result, Err(Error::UploadStream { .. })),
        "{result:?}"
    );
    let bucket_url = store
        .public_url(&key)
        .unwrap()
        .replace("/public/video.bin", "");
    let uploads = client
        .get(format!("{bucket_url}?uploads"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !uploads.contains("broken.bin"),
        "the failed multipart upload must be aborted: {uploads}"
    );
    assert!(matches!(
        store.get_download_stream(&failed).await,
        Err(Error::NotFound { .. })
    ));
}
