//! Connection-level limits on a real socket: silent clients are closed, the connection cap holds.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// Reads until EOF or `limit`; returns what was read and whether the peer closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_closed_after_the_header_timeout() {
    let h = NetHarness::start(|c| c.header_read_timeout = Duration::from_millis(300)).await;
    let mut silent = TcpStream::connect(h.gw.addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection must not be held open");
    // A client that stops halfway through its headers is closed too.
    let mut slow = TcpStream::connect(h.gw.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a half-sent request must not be held open");
    // Normal clients are unaffected.
    h.send(get("/health")).await.ok(200);
}

#[tokio::test]
async fn the_connection_cap_makes_new_clients_wait_instead_of_exhausting_the_gateway() {
    let h = NetHarness::start(|c| {
        c.max_connections = 1;
        c.header_read_timeout = Duration::from_secs(2);
    })
    .await;
    let mut first = TcpStream::connect(h.gw.addr).await.unwrap();
    let mut second = TcpStream::connect(h.gw.addr).await.unwrap();
    second
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The second client waits in the backlog while the first holds the only slot…
    let (early, _) = read_until_closed(&mut second, Duration::from_millis(500)).await;
    assert!(early.is_empty(), "served beyond the cap");
    // …and is served once the first goes away (here: closed by the header timeout).
    let (_, closed) = read_until_closed(&mut first, Duration::from_secs(5)).await;
    assert!(closed);
    let (resp, _) = read_until_closed(&mut second, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_that_never_sent_a_byte() {
    let h = NetHarness::start(|c| c.header_read_timeout = Duration::from_secs(30)).await;
    let _silent = TcpStream::connect(h.gw.addr).await.unwrap();
    // Let the gateway accept it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    h.gw.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
}
