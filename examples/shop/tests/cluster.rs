//! The shop as a cluster, each instance its own process of the `shop` binary, in the `prod`
//! profile on the local PostgreSQL and Redis: two `server` instances, one `worker` and one
//! `shared`. Every event is handled by the milestone subscriber exactly once across the
//! cluster, every job tick runs once, the servers run neither, both servers answer HTTP, and
//! every process stops cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHOP: &str = env!("CARGO_BIN_EXE_shop");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(root: &Path) -> Command {
    let mut command = Command::new(SHOP);
    command
        .arg("--profile")
        .arg("prod")
        .arg("--root")
        .arg(root)
        .env(
            "GORGON__PROJECT__HTTP__JWT_SECRET",
            "a-test-jwt-secret-of-some-length",
        )
        .env(
            "GORGON__PROJECT__HTTP__COOKIE_SECRET",
            "a-test-cookie-secret-of-some-length",
        )
        .env("RUST_LOG", "info,gorgon_framework=debug,sqlx=warn")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    command
}

struct Instance {
    name: &'static str,
    child: Child,
    port: Option<u16>,
}

fn start(root: &Path, name: &'static str, mode: &str, log: &Path) -> Instance {
    let port = (mode != "worker").then(free_port);
    let mut command = command(root);
    command.arg("start").arg("--mode").arg(mode);
    if let Some(port) = port {
        command.arg("--port").arg(port.to_string());
    }
    let file = std::fs::File::create(log.join(format!("{name}.log"))).unwrap();
    let child = command.stdout(Stdio::null()).stderr(file).spawn().unwrap();
    Instance { name, child, port }
}

fn log_of(dir: &Path, name: &str) -> String {
    let mut text = String::new();
    std::fs::File::open(dir.join(format!("{name}.log")))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `field=value` out of a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()
}

#[test]
fn two_servers_a_worker_and_a_shared_instance_share_the_work() {
    let root = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let unique = format!("t_{}", gorgon_data::generate_id("").to_lowercase());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    std::fs::write(
        root.path().join("gorgon.prod.toml"),
        format!(
            r#"
[project]
database_url = "{database}"
database_schema = "{unique}"
redis_url = "{redis}"

[modules.event_bus]
provider = "redis"
prefix = "{unique}:events"

[modules.cache]
provider = "redis"
namespace = "{unique}:cache"

[modules.locking]
provider = "redis"
namespace = "{unique}:locks"

[modules.workflows]
provider = "postgres"
schema = "{unique}_workflows"

[modules.notification]
channels = ["email"]

[modules.notification.templates.loyalty-milestone]
subject = "You reached {{{{ points }}}} points"
text = "{{{{ points }}}} points"

[settings]
expire_every_ms = 250
"#,
            database = gorgon_data::testing::postgres_url(),
        ),
    )
    .unwrap();

    let migrate = command(root.path())
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let mut instances = vec![
        start(root.path(), "server-a", "server", logs.path()),
        start(root.path(), "server-b", "server", logs.path()),
        start(root.path(), "worker", "worker", logs.path()),
        start(root.path(), "shared", "shared", logs.path()),
    ];
    for instance in &instances {
        let name = instance.name;
        wait_for(&format!("{name} to start"), Duration::from_secs(60), || {
            log_of(logs.path(), name).contains(" started")
        });
        if let Some(port) = instance.port {
            wait_for(
                &format!("{name} to listen"),
                Duration::from_secs(10),
                || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            );
            let health = reqwest::blocking_get(port);
            assert_eq!(health, "OK", "{name} answers /health");
        }
    }

    // Live events cross processes: a subscriber on server-a sees the job's runs, which only
    // the worker and the shared instance execute (through the store's relay).
    let created = command(root.path())
        .args([
            "user",
            "create",
            "-e",
            "admin@cluster.test",
            "-p",
            "supersecret",
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let seen = reqwest::first_event(
        instances[0].port.unwrap(),
        "/admin/workflows-executions/job-expire-restock-drafts/subscribe",
        "event: onFinish",
    );
    assert!(
        seen.contains("\"workflow_id\":\"job-expire-restock-drafts\""),
        "{seen}"
    );

    // Twelve events, emitted by yet another process.
    let added = command(root.path())
        .args([
            "exec",
            "add-points",
            "cus_cluster",
            "cluster@example.test",
            "300",
            "12",
        ])
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    // Let the jobs tick a few times and the events drain.
    let handled = |logs: &Path| -> usize {
        ["worker", "shared"]
            .iter()
            .map(|name| {
                log_of(logs, name)
                    .lines()
                    .filter(|l| l.contains("event handled") && l.contains("loyalty-milestone"))
                    .count()
            })
            .sum()
    };
    wait_for("twelve events handled", Duration::from_secs(30), || {
        handled(logs.path()) >= 12
    });
    std::thread::sleep(Duration::from_millis(1500));

    for instance in &instances {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(instance.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
    for instance in &mut instances {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = instance.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} did not stop",
                instance.name
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            instance.name,
            log_of(logs.path(), instance.name)
        );
        assert!(
            log_of(logs.path(), instance.name).contains("stopped"),
            "{} stopped gracefully",
            instance.name
        );
    }

    let mut events: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut ticks: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let texts: BTreeMap<&str, String> = instances
        .iter()
        .map(|i| (i.name, log_of(logs.path(), i.name)))
        .collect();
    for (name, text) in &texts {
        for line in text.lines() {
            if line.contains("event handled") && line.contains("loyalty-milestone") {
                events
                    .entry(field(line, "event_id").unwrap().to_owned())
                    .or_default()
                    .push(name);
            }
            if line.contains("job run") {
                ticks
                    .entry(field(line, "tick_ms").unwrap().to_owned())
                    .or_default()
                    .push(name);
            }
        }
    }
    let by = |map: &BTreeMap<String, Vec<&str>>, name: &str| {
        map.values().filter(|v| v.contains(&name)).count()
    };
    eprintln!(
        "events: worker {} shared {}; ticks: worker {} shared {}",
        by(&events, "worker"),
        by(&events, "shared"),
        by(&ticks, "worker"),
        by(&ticks, "shared")
    );
    assert_eq!(events.len(), 12, "twelve distinct events: {events:?}");
    for (event, handlers) in &events {
        assert_eq!(handlers.len(), 1, "event {event} handled by {handlers:?}");
        assert!(
            !handlers[0].starts_with("server"),
            "a server handled {event}"
        );
    }
    assert!(ticks.len() >= 3, "the job ticked: {ticks:?}");

    // The job's runs are stored executions, listed and shown by the command line.
    let list = command(root.path())
        .args([
            "workflows",
            "list",
            "--workflow",
            "job-expire-restock-drafts",
            "--limit",
            "100",
        ])
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed = String::from_utf8_lossy(&list.stdout);
    let ids: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    assert!(
        ids.len() >= ticks.len(),
        "every tick is an execution:\n{listed}"
    );
    let show = command(root.path())
        .args(["workflows", "show", ids[0]])
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let detail: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(detail["workflow"], "job-expire-restock-drafts");
    assert_eq!(detail["transaction_id"], ids[0]);
    for (tick, runners) in &ticks {
        assert_eq!(runners.len(), 1, "tick {tick} ran on {runners:?}");
        assert!(
            !runners[0].starts_with("server"),
            "a server ran tick {tick}"
        );
    }
}

mod reqwest {
    /// Logs in as the cluster's admin on `port`, opens the event stream at `path` and returns
    /// what it carried until `until` appeared (10 s at most).
    pub fn first_event(port: u16, path: &str, until: &str) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = ::reqwest::Client::new();
            let login: serde_json::Value = client
                .post(format!("http://127.0.0.1:{port}/auth/user/emailpass"))
                .json(
                    &serde_json::json!({"email": "admin@cluster.test", "password": "supersecret"}),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let token = login["token"].as_str().expect("a token").to_owned();
            let mut response = client
                .get(format!("http://127.0.0.1:{port}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut text = String::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while !text.contains(until) {
                let chunk = tokio::time::timeout_at(deadline, response.chunk())
                    .await
                    .unwrap_or_else(|_| panic!("no {until} within 10 s; got:\n{text}"))
                    .unwrap()
                    .expect("the stream stays open");
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text
        })
    }

    /// `GET /health` on a local port, answered as text.
    pub fn blocking_get(port: u16) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            ::reqwest::get(format!("http://127.0.0.1:{port}/health"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    }
}
