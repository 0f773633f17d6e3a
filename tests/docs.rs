//! The documentation's shell recipes, run as written: every ```sh block of `README.md` and
//! `docs/operations.md` against a gateway with real upstreams, once with a healthy canary (the
//! recipe must exit 0 and leave what it promises) and once with a failing one (it must exit
//! non-zero and leave the old target serving). And `flipgate demo`, whose printed commands must
//! work when pasted. A recipe edited in the docs is the recipe tested; a new block must be given a
//! verdict here, so none can rot unnoticed.
//!
//! What a recipe cannot do in a test is replaced, never its logic: `flipgate` on `PATH` is the
//! binary under test; `sleep` is the bake (the users arrive, then, when the canary is failing, the
//! circuit gives its verdict, waited for with a deadline); `./smoke-test.sh` and `./generate-routes`
//! are the deploy's own scripts; the admin address and `/etc/flipgate` point at the test's.
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

const TOKEN: &str = "docs-test-token";
const DEADLINE: Duration = Duration::from_secs(60);

/// The ```sh blocks of a markdown file, in order.
fn sh_blocks(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => cur = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(cur.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// A route file with the routes the docs use (`chatbot` in the README, `bot` in operations.md),
/// each watched by a circuit that trips on a few failures.
fn routes(blue: &Upstream, green: &Upstream) -> String {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout = \"5s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n",
    );
    for name in ["chatbot", "bot"] {
        text.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nlive = \"blue\"\n\
             [routes.targets]\nblue = [\"{}\"]\ngreen = [\"{}\"]\n\
             [routes.canary]\ntarget = \"green\"\npercent = 0.0\nsticky = \"header:x-user-id\"\n\
             [routes.circuit]\nwindow = \"60s\"\nmin_requests = 3\nmax_error_rate = 0.05\n",
            blue.addr, green.addr
        ));
    }
    text
}

const SLEEP: &str = r#"#!/bin/sh
# The bake. The first time: 200 users arrive on each route. Then, when the canary fails, the
# circuit's verdict (it trips within a second; bounded at 30 s).
if [ ! -e "$FG_WORK/.users-came" ]; then
  : > "$FG_WORK/.users-came"
  i=0
  while [ $i -lt 200 ]; do
    curl -s -o /dev/null -H "x-user-id: u$i" "$FG_PROXY/chatbot/" "$FG_PROXY/bot/"
    i=$((i+1))
  done
fi
if [ -n "$FG_FAILING" ]; then
  n=0
  until "$FG_BIN" status --json | jq -e '[.routes[] | select(.circuit.tripped != null)] | length > 0' >/dev/null; do
    n=$((n+1)); [ $n -lt 600 ] || exit 0
    /bin/sleep 0.05
  done
fi
"#;

const SMOKE: &str = "#!/bin/sh\n# The deploy's smoke test: the live bot answers.\n\
    for i in 1 2 3 4 5; do curl -sf -o /dev/null \"$FG_PROXY/bot/\" || exit 1; done\n";

const RESTART: &str = "#!/bin/sh\n# The deploy's instance restart: records the instance's state in flipgate at that moment.\n\
    flipgate status bot --json | jq -r --arg a \"$1\" \
    '.targets[].instance_status[] | select(.addr == $a) | \"\\(.addr) \\(.state)\"' >> \"$FG_WORK/restarted\"\n";

/// Where a recipe runs: shims first on `PATH`, the deploy's scripts in the working directory.
struct Bench {
    gw: Gw,
    blue: Upstream,
    green: Upstream,
    work: tempfile::TempDir,
    shims: PathBuf,
}

async fn bench(failing: bool) -> Bench {
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    if failing {
        green.fail_every(1);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let gw = Gw::start_in(dir, &routes(&blue, &green)).await;
    let work = tempfile::tempdir().unwrap();
    let shims = work.path().join("bin");
    std::fs::create_dir(&shims).unwrap();
    let exe = |path: &Path, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_flipgate"), shims.join("flipgate")).unwrap();
    exe(&shims.join("sleep"), SLEEP);
    exe(&work.path().join("smoke-test.sh"), SMOKE);
    exe(&work.path().join("restart-instance.sh"), RESTART);
    // The deploy's route generator: the route file in force (a valid one).
    let current = std::fs::read_to_string(&gw.file).unwrap();
    std::fs::write(work.path().join("routes.toml"), current).unwrap();
    exe(
        &work.path().join("generate-routes"),
        "#!/bin/sh\ncat \"$FG_WORK/routes.toml\"\n",
    );
    // The README's tour checks the shipped route file.
    std::fs::create_dir(work.path().join("config")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/flipgate.toml"),
        work.path().join("config/flipgate.toml"),
    )
    .unwrap();
    Bench {
        gw,
        blue,
        green,
        work,
        shims,
    }
}

impl Bench {
    /// Runs `recipe` as written but for the test's addresses; its exit code and output.
    async fn run(&self, recipe: &str, failing: bool) -> (i32, String) {
        let admin = self.gw.admin.to_string();
        let etc = self.gw.file.parent().unwrap().display().to_string();
        let text = recipe
            .replace("127.0.0.1:9901", &admin)
            .replace(
                "localhost:9901",
                &format!("localhost:{}", self.gw.admin.port()),
            )
            .replace(
                "FLIPGATE_ADMIN_TOKEN=...",
                "FLIPGATE_ADMIN_TOKEN=$FLIPGATE_ADMIN_TOKEN",
            )
            .replace("/etc/flipgate", &etc);
        let path = format!(
            "{}:{}",
            self.shims.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&text)
            .current_dir(self.work.path())
            .env("PATH", path)
            .env("FLIPGATE_ADMIN", format!("http://{admin}"))
            .env("FLIPGATE_ADMIN_TOKEN", TOKEN)
            .env("FG_PROXY", format!("http://{}", self.gw.addr))
            .env("FG_WORK", self.work.path())
            .env("FG_BIN", env!("CARGO_BIN_EXE_flipgate"))
            .kill_on_drop(true);
        if failing {
            cmd.env("FG_FAILING", "1");
        }
        let out = tokio::time::timeout(DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("recipe did not finish:\n{text}"))
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), said)
    }

    async fn live(&self, route: &str) -> String {
        let v = get(
            &client(),
            &self.gw.admin_url(&format!("/api/v1/routes/{route}")),
            &[],
        )
        .await
        .json();
        v["live"].as_str().unwrap().to_string()
    }

    async fn answer(&self, route: &str) -> String {
        get(&client(), &self.gw.url(&format!("/{route}/")), &[])
            .await
            .text()
    }

    async fn stop(self) {
        let _ = (&self.blue, &self.green);
        self.gw.stop().await;
    }
}

/// Every block of README.md: the first is the two commands a fresh machine runs (exercised by
/// `cargo test` itself and `demo_prints_commands_that_work_when_pasted`); the tour must promote a
/// healthy canary and fail, leaving blue, on a failing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_recipes_work_as_written() {
    let blocks = sh_blocks("README.md");
    assert_eq!(blocks.len(), 2, "a new README recipe needs a verdict here");
    assert!(blocks[0].contains("cargo run --release -- demo") && blocks[0].contains("cargo test"));
    // `flipgate run` serves until stopped: the gateway the recipe talks to stands in for it.
    let tour = blocks[1].replace("flipgate run -c config/flipgate.toml", ":");
    assert_ne!(tour, blocks[1], "the tour starts flipgate with `run -c`");

    let b = bench(false).await;
    let (code, said) = b.run(&tour, false).await;
    assert_eq!(code, 0, "healthy canary: {said}");
    assert!(said.contains("config/flipgate.toml: OK"), "{said}");
    // canary, promote (green), flip green, rollback (to blue, the previous live).
    assert_eq!(b.live("chatbot").await, "blue", "{said}");
    b.stop().await;

    let b = bench(true).await;
    let (code, said) = b.run(&tour, true).await;
    assert_ne!(code, 0, "a failing canary must fail the deploy: {said}");
    assert!(
        said.contains("already rolled back by the circuit"),
        "{said}"
    );
    assert_eq!(b.live("chatbot").await, "blue");
    assert_eq!(b.answer("chatbot").await, "blue");
    b.stop().await;
}

/// Every block of docs/operations.md, with what it must do for a healthy and a failing canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_recipes_work_as_written() {
    let blocks = sh_blocks("docs/operations.md");
    let find = |needle: &str| -> String {
        let found: Vec<_> = blocks.iter().filter(|b| b.contains(needle)).collect();
        assert_eq!(found.len(), 1, "one recipe with `{needle}`");
        found[0].clone()
    };
    let bake = find("&& sleep 300");
    let verdict = find("for i in $(seq 60)");
    let flip = find("./smoke-test.sh");
    let status = find("flipgate status            # table of all routes");
    let curl = find("curl -s -XPOST");
    let rewrite = find("./generate-routes");
    let rolling = find("flipgate wait-drained");
    let ladder = find("flipgate rollout bot --to green");
    assert_eq!(
        blocks.len(),
        8,
        "a new operations recipe needs a verdict here"
    );

    for failing in [false, true] {
        let b = bench(failing).await;
        let (code, said) = b.run(&bake, failing).await;
        let (live, exit) = if failing { ("blue", 1) } else { ("green", 0) };
        assert_eq!(code, exit, "bake, failing={failing}: {said}");
        assert_eq!(b.live("bot").await, live, "{said}");
        assert_eq!(b.answer("bot").await, live);
        b.stop().await;

        let b = bench(failing).await;
        let (code, said) = b.run(&verdict, failing).await;
        assert_eq!(code, exit, "verdict, failing={failing}: {said}");
        assert_eq!(said.contains("canary tripped"), failing, "{said}");
        assert_eq!(b.live("bot").await, live, "{said}");
        b.stop().await;

        let b = bench(failing).await;
        let (code, said) = b.run(&flip, failing).await;
        assert_eq!(code, exit, "flip and smoke test, failing={failing}: {said}");
        assert_eq!(b.answer("bot").await, live, "{said}");
        b.stop().await;
    }

    // The canary ladder, with users arriving all along (a step needs its requests) and a short
    // hold standing in for two minutes: promoted and smoke-tested, or rolled back by the circuit
    // in its first step and the deploy failed.
    let short = ladder.replace("--hold 2m", "--hold 100ms");
    assert_ne!(short, ladder, "the ladder recipe names its hold");
    for failing in [false, true] {
        let b = bench(failing).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let users = {
            let (stop, url) = (stop.clone(), b.gw.url("/bot/"));
            tokio::spawn(async move {
                let c = client();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    get(&c, &url, &[]).await;
                }
            })
        };
        let (code, said) = b.run(&short, failing).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        users.await.unwrap();
        let (live, exit) = if failing { ("blue", 1) } else { ("green", 0) };
        assert_eq!(code, exit, "rollout, failing={failing}: {said}");
        assert_eq!(b.live("bot").await, live, "{said}");
        assert_eq!(b.answer("bot").await, live);
        if failing {
            assert!(said.contains("circuit tripped"), "{said}");
        }
        b.stop().await;
    }

    let b = bench(false).await;
    let (code, said) = b.run(&status, false).await;
    assert_eq!(code, 0, "{said}");
    assert!(
        said.starts_with("ROUTE") && said.contains("\"live\""),
        "{said}"
    );

    // The curl recipe passes the admin API's guard (Host, token, Content-Type) at every step.
    // Its only error is the promote after a flip (there is no canary left to promote).
    let (code, said) = b.run(&curl, false).await;
    assert_eq!(code, 0, "{said}");
    let answers: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&said)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {said}"));
    assert_eq!(answers.len(), 6, "{said}");
    for a in &answers {
        if let Some(e) = a.get("error") {
            assert!(
                e.as_str().unwrap().contains("no running canary to promote"),
                "{said}"
            );
        }
    }
    assert_eq!(
        b.live("bot").await,
        "blue",
        "reset ends on the file's live: {said}"
    );

    // Rolling replacement by drain: each instance of blue is drained (nothing in flight) when it
    // is restarted, and takes requests again afterwards.
    let (code, said) = b.run(&rolling, false).await;
    assert_eq!(code, 0, "{said}");
    let restarted = std::fs::read_to_string(b.work.path().join("restarted")).unwrap();
    assert_eq!(restarted, format!("{} drained\n", b.blue.addr), "{said}");
    let v = get(&client(), &b.gw.admin_url("/api/v1/routes/bot"), &[])
        .await
        .json();
    assert_eq!(v["targets"][0]["instance_status"][0]["state"], "up", "{v}");

    // The route file replaced by rename: a good file lands, a broken one is refused and leaves
    // no temporary file behind.
    let (code, said) = b.run(&rewrite, false).await;
    assert_eq!(code, 0, "{said}");
    let dir = b.gw.file.parent().unwrap().to_path_buf();
    std::fs::write(b.work.path().join("routes.toml"), "[[routes]]\nname = \n").unwrap();
    let before = std::fs::read_to_string(&b.gw.file).unwrap();
    let (code, said) = b.run(&rewrite, false).await;
    assert_eq!(code, 1, "{said}");
    assert_eq!(std::fs::read_to_string(&b.gw.file).unwrap(), before);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".flipgate.toml.")
        })
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    b.stop().await;
}

/// `flipgate demo --port 0 --admin-port 0`: the commands it prints, pasted one by one, do what
/// their comments say, using the binary that printed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_commands_that_work_when_pasted() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .args(["demo", "--port", "0", "--admin-port", "0"])
        // As a user's shell runs it, not as cargo runs tests.
        .env_remove("CARGO_MANIFEST_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            let done = l.contains("Ctrl-C stops the demo");
            printed.push(l);
            if done {
                break;
            }
        }
    })
    .await
    .expect("the demo prints what to try");
    let text = printed.join("\n");
    let commands: Vec<&str> = text
        .split("Try:")
        .nth(1)
        .expect("a Try: section")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Ctrl-C"))
        .collect();
    assert!(commands.len() >= 8, "{text}");
    let bin = env!("CARGO_BIN_EXE_flipgate");
    assert!(
        commands.iter().any(|c| c.starts_with(bin)) && !text.contains("cargo run"),
        "commands name the binary that printed them: {text}"
    );
    let proxy = text
        .split("proxy      ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the proxy address")
        .to_string();
    let sh = |c: &str| {
        let c = c.to_string();
        async move {
            let out = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&c)
                .env_remove("FLIPGATE_ADMIN")
                .env_remove("FLIPGATE_ADMIN_TOKEN")
                .output()
                .await
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "`{c}` failed: {said}");
            said
        }
    };
    let mut it = commands.iter();
    let mut next = |expect: &str| {
        let c = it.next().expect("another command");
        assert!(c.contains(expect), "`{c}` is not the `{expect}` step");
        c.to_string()
    };
    assert!(sh(&next("curl -s http")).await.contains("\"bot\":\"blue\""));
    assert!(sh(&next("x-flipgate-target: green"))
        .await
        .contains("\"bot\":\"green\""));
    sh(&next("canary chatbot 50")).await;
    let users = sh(&next("for u in alice")).await;
    assert!(
        users.contains("\"bot\":\"green\"") && users.contains("\"bot\":\"blue\""),
        "{users}"
    );
    sh(&next("flip chatbot green")).await;
    assert!(sh(&format!("curl -s {proxy}/"))
        .await
        .contains("\"bot\":\"green\""));
    sh(&next("rollback chatbot")).await;
    assert!(sh(&format!("curl -s {proxy}/"))
        .await
        .contains("\"bot\":\"blue\""));
    assert!(sh(&next("status")).await.contains("chatbot"));
    sh(&next("sed -i")).await;
    let c = client();
    wait_until("the edited file flips to green", DEADLINE, || async {
        get(&c, &format!("{proxy}/"), &[])
            .await
            .text()
            .contains("\"bot\":\"green\"")
    })
    .await;
    child.kill().await.unwrap();
}
