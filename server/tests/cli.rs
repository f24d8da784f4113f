//! The `gorgon` command on a fresh folder with no configuration: `start` refuses until
//! `db migrate` ran, `db migrate` creates the SQLite files, `db status` and `doctor` report,
//! `start` serves `/health` and stops on SIGTERM; bad input exits non-zero with a message.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GORGON: &str = env!("CARGO_BIN_EXE_gorgon");

fn gorgon(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(GORGON)
        .args(args)
        .current_dir(root)
        .env_remove("DATABASE_URL")
        .env_remove("GORGON_PROFILE")
        .output()
        .unwrap()
}

#[test]
fn a_fresh_folder_migrates_then_starts_and_stops() {
    let root = tempfile::tempdir().unwrap();
    let refused = gorgon(root.path(), &["doctor"]);
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("has migrations not applied") && text.contains("gorgon db migrate"),
        "{text}"
    );

    let migrated = gorgon(root.path(), &["db", "migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(root.path().join("gorgon.db").exists());
    let status = gorgon(root.path(), &["db", "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("0001_framework"));
    let again = gorgon(root.path(), &["db", "migrate"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("up to date"));
    let doctor = gorgon(root.path(), &["doctor"]);
    assert!(
        doctor.status.success(),
        "{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    // Admin users from the command line: created, then refused twice; an invite's token.
    let created = gorgon(
        root.path(),
        &[
            "user",
            "create",
            "-e",
            "ops@example.com",
            "-p",
            "a password",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(String::from_utf8_lossy(&created.stdout).contains("created user user_"));
    let twice = gorgon(
        root.path(),
        &["user", "create", "-e", "ops@example.com", "-p", "another"],
    );
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("Identity with email already exists"));
    let invited = gorgon(root.path(), &["user", "invite", "-e", "new@example.com"]);
    assert!(
        invited.status.success(),
        "{}",
        String::from_utf8_lossy(&invited.stderr)
    );
    assert!(String::from_utf8_lossy(&invited.stdout).contains("token inv_"));
    // A worker-only instance on in-process providers would never see the servers' events.
    let split = gorgon(root.path(), &["start", "--mode", "worker"]);
    assert!(!split.status.success());
    let text = String::from_utf8_lossy(&split.stderr);
    assert!(
        text.contains("in-process event_bus provider `local`"),
        "{text}"
    );
    assert!(
        text.contains("in-process locking provider `memory`"),
        "{text}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(GORGON)
        .args(["start", "--port", &port.to_string()])
        .current_dir(root.path())
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let body = loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            break response;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with("OK"),
        "{body}"
    );
    Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    let status = server.wait().unwrap();
    let mut log = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn bad_input_exits_with_a_message() {
    let root = tempfile::tempdir().unwrap();
    let unknown = gorgon(root.path(), &["--profile", "staging", "doctor"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("the profiles are dev and prod"));
    let prod = gorgon(root.path(), &["--profile", "prod", "doctor"]);
    let text = String::from_utf8_lossy(&prod.stderr);
    assert!(
        text.contains("project.database_url") && text.contains("jwt_secret"),
        "{text}"
    );
    std::fs::write(
        root.path().join("gorgon.toml"),
        "[modules.event_bus]\nprovider = \"kafka\"\n",
    )
    .unwrap();
    gorgon(root.path(), &["db", "migrate"]);
    let kafka = gorgon(root.path(), &["doctor"]);
    let text = String::from_utf8_lossy(&kafka.stderr);
    assert!(
        text.contains("no provider named `kafka`") && text.contains("local, redis"),
        "{text}"
    );
    let script = gorgon(root.path(), &["exec", "nothing"]);
    assert!(!script.status.success());
}
