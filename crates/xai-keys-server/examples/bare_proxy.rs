//! A bare reverse proxy, for a same-run baseline in `bench/run-gateway`: the same HTTP stack
//! as the gateway (hyper-util's auto server builder on a multi-threaded tokio runtime, the
//! hyper-util legacy pooled client with `HttpConnector`, bodies streamed) but no route policy,
//! no authentication, no header rewriting, no metrics. Its throughput is what forwarding alone
//! costs on this machine, so "gateway ÷ bare proxy" isolates what the gateway adds.
//!
//!     bare_proxy LISTEN_PORT UPSTREAM_PORT
//!
//! Prints `listening on 127.0.0.1:PORT` on stdout once it accepts connections.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

type Upstream = Client<HttpConnector, Incoming>;

async fn forward(
    client: Upstream,
    upstream: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{upstream}{pq}").parse::<Uri>() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    parts.uri = uri;
    match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => Ok(r.map(Body::new)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = s;
    r
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(up)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN_PORT UPSTREAM_PORT".into());
    };
    let listen: u16 = listen.parse()?;
    let upstream = format!("http://127.0.0.1:{}", up.parse::<u16>()?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
            let listener =
                tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], listen))).await?;
            println!("listening on {}", listener.local_addr()?);
            let builder = Builder::new(TokioExecutor::new());
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
                let (client, upstream, builder) =
                    (client.clone(), upstream.clone(), builder.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
