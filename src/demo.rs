//! `flipgate demo`: two built-in bots (blue and green) on loopback behind a real gateway, with a
//! route file in a temporary directory that the operator can edit to see hot reload.
//!
//! Invariants: binds only loopback addresses; without `--port`/`--admin-port` tries the usual
//! ports (8080, 9901) and falls back to free ones, with them binds exactly those or fails; removes
//! nothing outside its own temporary directory; stops on Ctrl-C. The commands it prints name the
//! binary the way the user started it, so they work when pasted.
//!
//! `--bots-only` starts just the two bots, on the ports `config/flipgate.toml` points at (3000,
//! 3001), so the README's `flipgate run -c config/flipgate.toml` has something real to proxy to.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// `flipgate demo`'s options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DemoArgs {
    /// Proxy port (default: 8080, or a free one if it is taken).
    #[arg(long)]
    pub port: Option<u16>,
    /// Admin port (default: 9901, or a free one if it is taken).
    #[arg(long)]
    pub admin_port: Option<u16>,
    /// Start only the blue and green bots, on 127.0.0.1:3000 and :3001 (the instances in
    /// config/flipgate.toml), for `flipgate run -c config/flipgate.toml`.
    #[arg(long, conflicts_with_all = ["port", "admin_port"])]
    pub bots_only: bool,
}

/// Ports of the bots `--bots-only` starts: the instances `config/flipgate.toml` lists.
pub const BOT_PORTS: [u16; 2] = [3000, 3001];

/// Starts a demo bot that answers every request with a JSON line naming itself.
pub async fn spawn_bot(name: &'static str) -> std::io::Result<SocketAddr> {
    spawn_bot_on(name, 0).await
}

/// [`spawn_bot`] on a given loopback port (0: any free one).
pub async fn spawn_bot_on(name: &'static str, port: u16) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let user = req
                            .headers()
                            .get("x-user-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        let body = serde_json::json!({
                            "bot": name,
                            "path": req.uri().path(),
                            "user": user,
                            "reply": format!("hello from the {name} bot"),
                        });
                        let mut resp =
                            http::Response::new(Full::new(Bytes::from(format!("{body}\n"))));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            "application/json".parse().expect("valid"),
                        );
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn free_or_zero(port: u16) -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => port,
        Err(_) => 0,
    }
}

/// How the user started this binary, for the commands the demo prints: `cargo run --release --`
/// under cargo, `flipgate` when that is what the shell finds, else the path as typed.
fn invocation() -> String {
    if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
        return "cargo run --release --".into();
    }
    let argv0 = std::env::args().next().unwrap_or_else(|| "flipgate".into());
    if argv0.contains('/') {
        argv0
    } else {
        "flipgate".into()
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.bots_only {
        let [b, g] = BOT_PORTS;
        let blue = spawn_bot_on("blue", b)
            .await
            .with_context(|| format!("starting the blue bot on 127.0.0.1:{b}"))?;
        let green = spawn_bot_on("green", g)
            .await
            .with_context(|| format!("starting the green bot on 127.0.0.1:{g}"))?;
        println!(
            "blue bot on http://{blue}, green bot on http://{green} (the instances in config/flipgate.toml)\n\
             now, in another terminal: {} run -c config/flipgate.toml\n\
             and: curl -s -H 'Host: bot.example.com' http://127.0.0.1:8080/hello\n\
             Ctrl-C stops the bots.",
            invocation()
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        return Ok(());
    }
    let blue = spawn_bot("blue").await.context("starting the blue bot")?;
    let green = spawn_bot("green").await.context("starting the green bot")?;
    let dir = std::env::temp_dir().join(format!("flipgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("flipgate.toml");
    let text = format!(
        r#"# flipgate demo route file: edit me while the demo runs (save, and watch the log).
[server]
listen = "127.0.0.1:{listen}"

[admin]
listen = "127.0.0.1:{admin}"

[state]
dir = "state"

[[routes]]
name = "chatbot"
live = "blue"

[routes.targets]
blue = ["{blue}"]
green = ["{green}"]

[routes.canary]
target = "green"
percent = 0.0
sticky = "header:x-user-id"

[routes.preview]
header = "x-flipgate-target"
allow_from = ["127.0.0.0/8"]

[routes.circuit]
window = "30s"
min_requests = 20
max_error_rate = 0.05
bake = "5m"
"#,
        listen = args.port.unwrap_or_else(|| free_or_zero(8080)),
        admin = args.admin_port.unwrap_or_else(|| free_or_zero(9901)),
    );
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let gw = crate::Gateway::start(&file).await?;
    let (p, a) = (gw.addr, gw.admin_addr);
    let fg = invocation();
    let admin_flag = if a.port() == 9901 {
        String::new()
    } else {
        format!(" --admin http://{a}")
    };
    println!(
        r#"
flipgate demo is running.
  proxy      http://{p}      (blue bot: {blue}, green bot: {green})
  admin      http://{a}/      status page, /metrics, /api/v1/routes
  route file {file}

Try:
  curl -s http://{p}/hello                                  # blue answers
  curl -s -H 'x-flipgate-target: green' http://{p}/hello    # preview green before it is live
  {fg} canary chatbot 50{admin_flag}          # 50 % sticky canary
  for u in alice bob carol dave; do curl -s -H "x-user-id: $u" http://{p}/; done
  {fg} flip chatbot green{admin_flag}         # flip everyone to green
  {fg} rollback chatbot{admin_flag}           # and back
  {fg} status{admin_flag}
  sed -i 's/^live = "blue"/live = "green"/' {file}   # flip by editing the file (hot reload)

Ctrl-C stops the demo.
"#,
        file = file.display()
    );
    crate::run_until_signal(gw).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
