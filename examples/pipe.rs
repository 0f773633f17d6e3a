//! The "limit" row of `benches/compare.sh`: an L4 byte pipe (accept, connect upstream,
//! `copy_bidirectional`), no HTTP at all, on a single-threaded tokio runtime. Whatever any HTTP
//! proxy does on one core costs at least this much kernel socket work, so its throughput is the
//! ceiling the proxies are compared with.
//!
//! usage: pipe LISTEN_ADDR UPSTREAM_ADDR

use tokio::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pipe LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        loop {
            let Ok((mut down, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
}
