//! A trivial upstream for the gateway load tests (`bench/run-gateway`): an HTTP/1.1 server on
//! `127.0.0.1:PORT` (hyper 1 + hyper-util, multi-threaded tokio) that reads the request body
//! and answers every request with `200` and a small JSON body. It stands in for the node so that
//! the load test measures the gateway, not the node.
//!
//!     cargo run --release -p xai-keys-server --example trivial_upstream -- PORT [WORK_US]
//!
//! `WORK_US` (default 0): microseconds of CPU to burn per request (a busy loop on the worker
//! thread), to stand in for a node that does real work per request; 0 is the trivial upstream.
//! `XAI_BENCH_UPSTREAM_THREADS` sets the worker-thread count (default: one per core).
//!
//! It prints `listening on 127.0.0.1:PORT` on stdout once it accepts connections, and runs
//! until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const BODY: &[u8] = br#"{"success":true,"status":"ok","height":123456,"balance":"42.000000"}"#;

async fn answer(
    req: Request<Incoming>,
    work: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body so keep-alive connections stay usable after a POST.
    let _ = req.into_body().collect().await;
    if !work.is_zero() {
        let t = Instant::now();
        while t.elapsed() < work {
            std::hint::spin_loop();
        }
    }
    let mut r = Response::new(Full::new(Bytes::from_static(BODY)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next() {
        Some(p) => p.parse()?,
        None => return Err("usage: trivial_upstream PORT [WORK_US]".into()),
    };
    let work = Duration::from_micros(match args.next() {
        Some(w) => w.parse()?,
        None => 0,
    });
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Ok(n) = std::env::var("XAI_BENCH_UPSTREAM_THREADS") {
        rt.worker_threads(n.parse()?);
    }
    rt.build()?.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(move |r| answer(r, work)))
                    .await;
            });
        }
    })
}
