//! Shared by the benchmark drivers (`propagation`, `admin_issue`): a minimal blocking
//! HTTP/1.1 client over one keep-alive `TcpStream` (no async runtime, no connection pool, so
//! what is timed is the request), argument parsing and percentiles.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// One keep-alive HTTP/1.1 connection; reconnects when the server closes it.
pub struct Conn {
    addr: String,
    r: Option<BufReader<TcpStream>>,
    buf: Vec<u8>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Conn {
    pub fn new(addr: &str) -> Conn {
        Conn {
            addr: addr.to_string(),
            r: None,
            buf: Vec::with_capacity(1024),
        }
    }

    fn stream(&mut self) -> io::Result<()> {
        if self.r.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.r = Some(BufReader::with_capacity(16 * 1024, s));
        }
        Ok(())
    }

    /// Sends one request and reads the whole response: `(status, body)`. One retry on a fresh
    /// connection if the kept-alive one turned out to be closed.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        match self.try_request(method, path, headers, body) {
            Ok(x) => Ok(x),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                self.r = None;
                self.try_request(method, path, headers, body)
            }
            Err(e) => {
                self.r = None;
                Err(e)
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        self.buf.clear();
        write!(
            self.buf,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: xai-keys-bench\r\n",
            self.addr
        )?;
        for (k, v) in headers {
            write!(self.buf, "{k}: {v}\r\n")?;
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            write!(self.buf, "Content-Length: {}\r\n", body.len())?;
        }
        self.buf.extend_from_slice(b"\r\n");
        self.buf.extend_from_slice(body);
        self.stream()?;
        let r = self.r.as_mut().ok_or_else(|| bad("no connection"))?;
        r.get_mut().write_all(&self.buf)?;
        let (status, body, close) = read_response(r)?;
        if close {
            self.r = None;
        }
        Ok((status, body))
    }
}

fn read_line(r: &mut impl BufRead, line: &mut String) -> io::Result<()> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(())
}

/// `(status, body, connection closes)`.
fn read_response(r: &mut impl BufRead) -> io::Result<(u16, Vec<u8>, bool)> {
    let mut line = String::new();
    read_line(r, &mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut len: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    loop {
        read_line(r, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => len = v.parse().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            read_line(r, &mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    read_line(r, &mut line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r, &mut line)?;
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut body)?;
        close = true;
    }
    Ok((status, body, close))
}

/// `--name value` from the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

pub fn required(name: &str) -> Result<String, Error> {
    arg(name).ok_or_else(|| format!("missing {name}").into())
}

/// Nearest-rank percentile of sorted `v` (q in 0..=1).
pub fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}
