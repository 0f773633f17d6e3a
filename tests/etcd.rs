//! The etcd state backend (issue 16): real `etcd` servers on free loopback ports (each test starts
//! its own, with a temp data dir, and kills it at the end) and real `flipgate run` processes, three
//! replicas sharing one route file (each with its own state dir). A flip through one replica is
//! served by all; concurrent flips end in one state; with etcd down every replica keeps serving its
//! last state, mutations answer 503 and `/readyz` stays ready; a replica restarted meanwhile serves
//! the state it kept locally; with etcd back the fleet converges. Skipped loudly without `etcd`.
#![cfg(feature = "etcd")]

mod support;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::proc::Proc;
use support::*;

/// A single-member etcd on loopback; killed when dropped.
struct Etcd {
    child: Option<Child>,
    client: u16,
    peer: u16,
    data: PathBuf,
    /// Serves TLS with these files (CA, server cert, server key) and wants client certificates.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have_etcd() -> bool {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!(
            "SKIPPED: no `etcd` binary (apt-get install etcd-server); the etcd backend is untested"
        );
    }
    found
}

impl Etcd {
    async fn start(dir: &Path) -> Etcd {
        let mut e = Etcd {
            child: None,
            client: free_port(),
            peer: free_port(),
            data: dir.join("etcd-data"),
            tls: None,
        };
        e.run().await;
        e
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }

    /// Starts (or restarts) the server on its ports and data dir; waits until it answers.
    async fn run(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut cmd = Command::new("etcd");
        if let Some((ca, cert, key)) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        let child = cmd
            .args(["--name", "t", "--data-dir"])
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        if self.tls.is_some() {
            let addr = format!("127.0.0.1:{}", self.client);
            wait_until("etcd listening", Duration::from_secs(30), || async {
                tokio::net::TcpStream::connect(&addr).await.is_ok()
            })
            .await;
            return;
        }
        let c = client_http();
        let url = format!("{}/health", self.endpoint());
        wait_until("etcd healthy", Duration::from_secs(30), || async {
            match tokio::time::timeout(Duration::from_secs(1), try_get(&c, &url)).await {
                Ok(Some(body)) => body.contains("true"),
                _ => false,
            }
        })
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client_http() -> TestClient {
    client()
}

async fn try_get(c: &TestClient, url: &str) -> Option<String> {
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .ok()?;
    let resp = c.request(req).await.ok()?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// A fleet: one route file in `shared/`, each replica in its own directory through a symlink to
/// it (the state dir `state` is relative to the path the replica was given).
struct Fleet {
    dir: tempfile::TempDir,
    file: PathBuf,
    procs: Vec<Proc>,
}

fn route_file(etcd: &Etcd, blue: &Upstream, green: &Upstream, extra: &str) -> String {
    config("blue", &[("blue", blue.addr), ("green", green.addr)], extra).replace(
        "[state]\ndir = \"state\"\n",
        &format!(
            "[state]\ndir = \"state\"\nbackend = \"etcd\"\n\n[state.etcd]\nendpoints = [\"{}\"]\nprefix = \"/test/\"\ntimeout = \"1s\"\n",
            etcd.endpoint()
        ),
    )
}

impl Fleet {
    fn new(text: &str, n: usize) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        let file = dir.path().join("shared/flipgate.toml");
        write_atomic(&file, text);
        let mut f = Fleet {
            dir,
            file,
            procs: Vec::new(),
        };
        for i in 0..n {
            let p = f.start(i);
            f.procs.push(p);
        }
        f
    }

    fn replica_file(&self, i: usize) -> PathBuf {
        let d = self.dir.path().join(format!("r{i}"));
        let link = d.join("flipgate.toml");
        if !link.exists() {
            std::fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::symlink(&self.file, &link).unwrap();
        }
        link
    }

    fn start(&self, i: usize) -> Proc {
        Proc::start(&self.replica_file(i))
    }
}

async fn post(c: &TestClient, p: &Proc, verb: &str, body: &str) -> Resp {
    admin_post(c, &p.admin_url(&format!("/api/v1/routes/bot/{verb}")), body).await
}

async fn served(c: &TestClient, p: &Proc) -> String {
    get(c, &p.url("/"), &[]).await.text()
}

async fn live(c: &TestClient, p: &Proc) -> String {
    let v = get(c, &p.admin_url("/api/v1/routes/bot"), &[]).await.json();
    v["live"].as_str().unwrap_or_default().to_string()
}

async fn store(c: &TestClient, p: &Proc) -> serde_json::Value {
    let v = get(c, &p.admin_url("/api/v1/routes"), &[]).await.json();
    v["state"]["store"].clone()
}

/// Waits until every replica's traffic goes to `target`.
async fn all_serve(c: &TestClient, procs: &[&Proc], target: &str, within: Duration) {
    for (i, p) in procs.iter().enumerate() {
        wait_until(&format!("replica {i} serves {target}"), within, || async {
            served(c, p).await == target
        })
        .await;
    }
}

async fn wait_store_up(c: &TestClient, p: &Proc, up: bool) {
    wait_until(
        &format!("store up = {up}"),
        Duration::from_secs(30),
        || async { store(c, p).await["up"] == up },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_through_one_replica_is_served_by_all_and_the_propagation_is_measured() {
    if !have_etcd() {
        return;
    }
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path()).await;
    let fleet = Fleet::new(&route_file(&etcd, &blue, &green, ""), 3);
    let c = client();
    let [a, b, cc] = [&fleet.procs[0], &fleet.procs[1], &fleet.procs[2]];
    for p in [a, b, cc] {
        wait_store_up(&c, p, true).await;
    }
    let r = post(&c, a, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    all_serve(&c, &[a, b, cc], "green", Duration::from_secs(5)).await;
    assert_eq!(store(&c, b).await["routes_behind"], serde_json::json!([]));

    // Propagation: from the API's answer to the last replica serving the change, polled on each
    // replica's traffic port. Reported, not asserted (a shared CI machine has no timing).
    let mut samples = Vec::new();
    for i in 0..40 {
        let (to, via) = if i % 2 == 0 {
            ("blue", [a, b, cc][i % 3])
        } else {
            ("green", [a, b, cc][(i + 1) % 3])
        };
        let r = post(&c, via, "flip", &format!(r#"{{"target":"{to}"}}"#)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let answered = Instant::now();
        for p in [a, b, cc] {
            let deadline = answered + Duration::from_secs(5);
            while served(&c, p).await != to {
                assert!(Instant::now() < deadline, "replica never served {to}");
            }
        }
        samples.push(answered.elapsed());
    }
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "etcd flip propagation over {} flips, 3 replicas: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        pick(0.5),
        pick(0.99),
        samples.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flips_through_two_replicas_end_in_one_state() {
    if !have_etcd() {
        return;
    }
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path()).await;
    let fleet = Fleet::new(&route_file(&etcd, &blue, &green, ""), 3);
    let c = client();
    let [a, b, cc] = [&fleet.procs[0], &fleet.procs[1], &fleet.procs[2]];
    for p in [a, b, cc] {
        wait_store_up(&c, p, true).await;
    }
    let mut accepted = 0;
    for round in 0..10 {
        let (ra, rb) = tokio::join!(
            post(&c, a, "flip", r#"{"target":"green"}"#),
            post(&c, b, "flip", r#"{"target":"blue"}"#)
        );
        for r in [&ra, &rb] {
            assert!(
                r.status == 200 || r.status == 409,
                "round {round}: {} {}",
                r.status,
                r.text()
            );
            accepted += usize::from(r.status == 200);
        }
        // Whatever won, all three end on one live target, and it is the one etcd holds.
        wait_until(
            "one state on all replicas",
            Duration::from_secs(5),
            || async {
                let l = [live(&c, a).await, live(&c, b).await, live(&c, cc).await];
                l[0] == l[1] && l[1] == l[2]
            },
        )
        .await;
        let target = live(&c, a).await;
        all_serve(&c, &[a, b, cc], &target, Duration::from_secs(5)).await;
    }
    // A flip that lost a race and was applied again is counted once, when it is in force: the
    // fleet never counts more flips than it accepted.
    let mut counted = 0.0;
    for p in [a, b] {
        let text = get(&c, &p.admin_url("/metrics"), &[]).await.text();
        counted += text
            .lines()
            .find(|l| l.starts_with("flipgate_flips_total{route=\"bot\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert!(
        counted <= accepted as f64,
        "{counted} flips counted for {accepted} accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_every_replica_keeps_serving_refuses_changes_and_converges_when_it_is_back()
{
    if !have_etcd() {
        return;
    }
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(tmp.path()).await;
    let mut fleet = Fleet::new(&route_file(&etcd, &blue, &green, ""), 3);
    let c = client();
    for p in &fleet.procs {
        wait_store_up(&c, p, true).await;
    }
    let r = post(&c, &fleet.procs[0], "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    {
        let all: Vec<&Proc> = fleet.procs.iter().collect();
        all_serve(&c, &all, "green", Duration::from_secs(5)).await;
    }

    etcd.kill();
    for p in &fleet.procs {
        wait_store_up(&c, p, false).await;
        // Still serving the last known state (not the file's `blue`), still ready.
        assert_eq!(served(&c, p).await, "green");
        let ready = get(&c, &p.admin_url("/readyz"), &[]).await;
        assert_eq!(ready.status, 200);
        assert!(ready.text().contains("unreachable"), "{}", ready.text());
        let cli = Command::new(env!("CARGO_BIN_EXE_flipgate"))
            .args(["status", "--admin", &format!("http://{}", p.admin)])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&cli.stdout);
        assert!(
            out.contains("shared state store (etcd) unreachable"),
            "{out}"
        );
        let m = get(&c, &p.admin_url("/metrics"), &[]).await.text();
        assert!(m.contains("flipgate_state_backend_up 0"), "{m}");
        // A change answers 503 with the reason and applies nothing.
        let r = post(&c, p, "flip", r#"{"target":"blue"}"#).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("unreachable"), "{}", r.text());
        assert_eq!(served(&c, p).await, "green");
    }

    // A replica restarted while etcd is down serves the state it kept locally.
    let old = fleet.procs.remove(2);
    old.kill9();
    let restarted = fleet.start(2);
    assert_eq!(served(&c, &restarted).await, "green");
    fleet.procs.push(restarted);

    etcd.run().await;
    for p in &fleet.procs {
        wait_store_up(&c, p, true).await;
    }
    let r = post(&c, &fleet.procs[2], "flip", r#"{"target":"blue"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let all: Vec<&Proc> = fleet.procs.iter().collect();
    all_serve(&c, &all, "blue", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_prefix_is_seeded_once_from_a_replica_s_file_state() {
    if !have_etcd() {
        return;
    }
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path()).await;
    let text = route_file(&etcd, &blue, &green, "");
    // Replica 0 ran with the file backend and flipped to green.
    let mut fleet = Fleet::new(&text, 0);
    let file_backend = text.replace("backend = \"etcd\"\n", "");
    let file_backend = file_backend
        .split("[state.etcd]")
        .next()
        .unwrap()
        .to_string()
        + &text[text.find("[[routes]]").unwrap()..];
    let own = fleet.dir.path().join("r0");
    std::fs::create_dir_all(&own).unwrap();
    write_atomic(&own.join("flipgate.toml"), &file_backend);
    let solo = Proc::start(&own.join("flipgate.toml"));
    let r = post(&c_(), &solo, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(solo);
    // Now on etcd: it seeds the empty prefix; a fresh replica follows.
    std::fs::remove_file(own.join("flipgate.toml")).unwrap();
    fleet.procs.push(fleet.start(0));
    let c = client();
    wait_store_up(&c, &fleet.procs[0], true).await;
    fleet.procs.push(fleet.start(1));
    all_serve(&c, &[&fleet.procs[1]], "green", Duration::from_secs(5)).await;
}

fn c_() -> TestClient {
    client()
}

const CANARY: &str = "[routes.canary]\ntarget = \"green\"\npercent = 100\n\n[routes.circuit]\nwindow = \"60s\"\nmin_requests = MIN\nmax_error_rate = 0.5\n";

async fn tripped(c: &TestClient, p: &Proc) -> serde_json::Value {
    let v = get(c, &p.admin_url("/api/v1/routes/bot"), &[]).await.json();
    v["circuit"]["tripped"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_on_traffic_spread_thinly_trips_the_fleet_once() {
    if !have_etcd() {
        return;
    }
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    green.fail_every(1);
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path()).await;
    let fleet = Fleet::new(
        &route_file(&etcd, &blue, &green, &CANARY.replace("MIN", "30")),
        3,
    );
    let c = client();
    for p in &fleet.procs {
        wait_store_up(&c, p, true).await;
    }
    // 12 failing requests per replica: none reaches min_requests = 30 alone, the fleet does.
    for p in &fleet.procs {
        for _ in 0..12 {
            assert_eq!(get(&c, &p.url("/"), &[]).await.status, 500);
        }
    }
    let all: Vec<&Proc> = fleet.procs.iter().collect();
    all_serve(&c, &all, "blue", Duration::from_secs(10)).await;
    // One trip decision fleet-wide: every replica shows the same one, judged on the sum.
    let first = tripped(&c, &fleet.procs[0]).await;
    assert!(first["requests"].as_u64().unwrap() >= 30, "{first}");
    for p in &fleet.procs[1..] {
        wait_until(
            "the same trip on every replica",
            Duration::from_secs(5),
            || async { tripped(&c, p).await == first },
        )
        .await;
    }
    // Exactly one replica rolled back; the others took its decision in.
    let mut rollbacks = 0.0;
    for p in &fleet.procs {
        let m = get(&c, &p.admin_url("/metrics"), &[]).await.text();
        rollbacks += m
            .lines()
            .filter(|l| {
                l.starts_with("flipgate_rollbacks_total") && l.contains("reason=\"circuit\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert_eq!(rollbacks, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_taken_while_etcd_is_down_is_written_when_it_is_back() {
    if !have_etcd() {
        return;
    }
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(tmp.path()).await;
    let mut fleet = Fleet::new(
        &route_file(&etcd, &blue, &green, &CANARY.replace("MIN", "5")),
        3,
    );
    let c = client();
    for p in &fleet.procs {
        wait_store_up(&c, p, true).await;
    }
    {
        let all: Vec<&Proc> = fleet.procs.iter().collect();
        all_serve(&c, &all, "green", Duration::from_secs(5)).await;
    }
    etcd.kill();
    for p in &fleet.procs {
        wait_store_up(&c, p, false).await;
    }
    // Replica 0 alone sees the canary fail and trips locally: traffic moves to the safe side.
    green.fail_every(1);
    let a = &fleet.procs[0];
    wait_until(
        "replica 0 trips locally",
        Duration::from_secs(10),
        || async { get(&c, &a.url("/"), &[]).await.text() == "blue" },
    )
    .await;
    assert_eq!(
        store(&c, a).await["trips_pending"],
        serde_json::json!(["bot"])
    );
    green.fail_every(0);
    assert_eq!(served(&c, &fleet.procs[1]).await, "green");
    // Restarted before etcd is back, it still serves its trip and still has it to write.
    fleet.procs.remove(0).kill9();
    let restarted = fleet.start(0);
    assert_eq!(served(&c, &restarted).await, "blue");
    assert_eq!(
        store(&c, &restarted).await["trips_pending"],
        serde_json::json!(["bot"])
    );
    fleet.procs.insert(0, restarted);
    etcd.run().await;
    // Written once etcd is back: the whole fleet follows the trip.
    let all: Vec<&Proc> = fleet.procs.iter().collect();
    all_serve(&c, &all, "blue", Duration::from_secs(15)).await;
    wait_until("the trip is written", Duration::from_secs(5), || async {
        store(&c, &fleet.procs[0]).await["trips_pending"] == serde_json::json!([])
    })
    .await;
    assert!(tripped(&c, &fleet.procs[1]).await.is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_file_has_another_split_serves_its_file_until_it_catches_up() {
    if !have_etcd() {
        return;
    }
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path()).await;
    let text = route_file(&etcd, &blue, &green, "");
    let mut fleet = Fleet::new(&text, 2);
    // Replica 2's file (a ConfigMap still propagating) has another split: a 10 % canary.
    let own = fleet.dir.path().join("r2/flipgate.toml");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    let other = format!("{text}\n[routes.canary]\ntarget = \"green\"\npercent = 10\n");
    write_atomic(&own, &other);
    fleet.procs.push(Proc::start(&own));
    let c = client();
    for p in &fleet.procs {
        wait_store_up(&c, p, true).await;
    }
    let r = post(&c, &fleet.procs[0], "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    all_serve(&c, &[&fleet.procs[1]], "green", Duration::from_secs(5)).await;
    let lagging = &fleet.procs[2];
    wait_until(
        "replica 2 says it is behind",
        Duration::from_secs(5),
        || async { store(&c, lagging).await["routes_behind"] == serde_json::json!(["bot"]) },
    )
    .await;
    assert_eq!(live(&c, lagging).await, "blue");
    // Its file catches up: it follows the fleet.
    write_atomic(&own, &text);
    all_serve(&c, &[lagging], "green", Duration::from_secs(10)).await;
    wait_until("replica 2 caught up", Duration::from_secs(5), || async {
        store(&c, lagging).await["routes_behind"] == serde_json::json!([])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_user_gets_the_same_target_from_every_replica() {
    if !have_etcd() {
        return;
    }
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path()).await;
    let sticky =
        "[routes.canary]\ntarget = \"green\"\npercent = 0\nsticky = \"header:x-user-id\"\n";
    let fleet = Fleet::new(&route_file(&etcd, &blue, &green, sticky), 3);
    let c = client();
    for p in &fleet.procs {
        wait_store_up(&c, p, true).await;
    }
    let r = post(&c, &fleet.procs[1], "canary", r#"{"percent":50}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for p in &fleet.procs {
        wait_until("canary at 50 %", Duration::from_secs(5), || async {
            let v = get(&c, &p.admin_url("/api/v1/routes/bot"), &[])
                .await
                .json();
            v["canary"]["percent"] == 50.0
        })
        .await;
    }
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..40 {
        let id = format!("user-{user}");
        let mut targets = Vec::new();
        for p in &fleet.procs {
            targets.push(get(&c, &p.url("/"), &[("x-user-id", &id)]).await.text());
        }
        assert!(
            targets.iter().all(|t| *t == targets[0]),
            "{id}: {targets:?}"
        );
        seen.insert(targets[0].clone());
    }
    assert_eq!(seen.len(), 2, "both targets get users: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    if !have_etcd() {
        return;
    }
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let write = |name: &str, text: String| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let leaf = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let ca_pem = write("ca.pem", ca.pem());
    let (sc, sk) = leaf(&["127.0.0.1", "localhost"]);
    let (cc, ck) = leaf(&["flipgate"]);
    let server = (
        ca_pem.clone(),
        write("server.pem", sc),
        write("server-key.pem", sk),
    );
    let (client_cert, client_key) = (write("client.pem", cc), write("client-key.pem", ck));
    let mut etcd = Etcd {
        child: None,
        client: free_port(),
        peer: free_port(),
        data: tmp.path().join("etcd-data"),
        tls: Some(server),
    };
    etcd.run().await;
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let text = route_file(&etcd, &blue, &green, "").replace(
        "timeout = \"1s\"\n",
        &format!(
            "timeout = \"1s\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca_pem.display(),
            client_cert.display(),
            client_key.display()
        ),
    );
    let fleet = Fleet::new(&text, 2);
    let c = client();
    for p in &fleet.procs {
        wait_store_up(&c, p, true).await;
    }
    let r = post(&c, &fleet.procs[0], "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    all_serve(&c, &[&fleet.procs[1]], "green", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_from_a_file_and_the_password_is_never_shown() {
    if !have_etcd() {
        return;
    }
    const PASSWORD: &str = "s3cret-etcd-pw";
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path()).await;
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    admin.role_add("root").await.unwrap();
    admin.user_add("root", PASSWORD, None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let pw = tmp.path().join("etcd-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let with_auth = |file: &Path| {
        route_file(&etcd, &blue, &green, "").replace(
            "timeout = \"1s\"\n",
            &format!(
                "timeout = \"1s\"\nusername = \"root\"\npassword_file = \"{}\"\n",
                file.display()
            ),
        )
    };
    let fleet = Fleet::new(&with_auth(&pw), 1);
    let c = client();
    let p = &fleet.procs[0];
    wait_store_up(&c, p, true).await;
    let r = post(&c, p, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A wrong password: the store is down with etcd's reason, and the password is nowhere.
    let wrong = tmp.path().join("wrong-password");
    std::fs::write(&wrong, "not-it").unwrap();
    let bad = Fleet::new(&with_auth(&wrong), 1);
    let q = &bad.procs[0];
    let status = store(&c, q).await;
    assert_eq!(status["up"], false, "{status}");
    let view = get(&c, &q.admin_url("/api/v1/routes"), &[]).await.text();
    let r = post(&c, q, "flip", r#"{"target":"green"}"#).await;
    assert_eq!(r.status, 503, "{}", r.text());
    for text in [
        view,
        r.text(),
        p.log.lock().unwrap().join("\n"),
        q.log.lock().unwrap().join("\n"),
    ] {
        assert!(
            !text.contains(PASSWORD) && !text.contains("not-it"),
            "{text}"
        );
    }
}

#[test]
fn check_fails_on_an_unreadable_password_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    let text = "[state]\nbackend = \"etcd\"\n[state.etcd]\nendpoints = [\"http://127.0.0.1:1\"]\nusername = \"u\"\npassword_file = \"missing-password\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n";
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("password_file") && err.contains("missing-password"),
        "{err}"
    );
}
