//! A raw HTTP/1.1 connection, for what a client library hides: keep-alive on one connection,
//! pipelining, chunked bodies, and what the server does with a body it did not read.

use super::client::check_answer;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off a [`RawConn`].
pub struct RawResp {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    /// A header's value (the first, if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body, after the checks every answer must pass ([`check_answer`]), which must be JSON.
    pub fn json(&self) -> Value {
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("header name");
            map.append(name, v.parse().expect("header value"));
        }
        let v = check_answer("raw", "request", self.status, &map, &self.body);
        assert!(v.is_object(), "a JSON answer: {:?}", String::from_utf8_lossy(&self.body));
        v
    }
}

/// One TCP connection to the server, written to and read from by hand.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.expect("connect"), buf: Vec::new() }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more bytes; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the server answers within 10 s")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response (Content-Length framed). `Ok(None)`: the server closed the connection
    /// before sending anything.
    pub async fn read_response(&mut self) -> std::io::Result<Option<RawResp>> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.fill().await? == 0 {
                assert!(
                    self.buf.is_empty(),
                    "connection closed mid-response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return Ok(None);
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status: u16 = status_line[9..12].parse().expect("status");
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        assert!(
            !headers.iter().any(|(k, _)| k == "transfer-encoding"),
            "this little client only reads Content-Length framing: {head}"
        );
        let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
        let start = head_end + 4;
        while self.buf.len() < start + len {
            assert!(self.fill().await? > 0, "connection closed mid-body");
        }
        let body = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Ok(Some(RawResp { status, headers, body }))
    }

    /// Reads one response, which must be there.
    pub async fn must_read(&mut self) -> RawResp {
        self.read_response().await.expect("read").expect("a response, not a closed connection")
    }
}

/// `GET path`.
pub fn raw_get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: chatbus\r\n\r\n")
}

/// `POST path` with a JSON `body`, Content-Length framed.
pub fn raw_post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: chatbus\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `POST path` with `body` in 8 KiB chunks (`Transfer-Encoding: chunked`).
pub fn chunked_post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: chatbus\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for chunk in body.chunks(8192) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

/// `POST path` with `body`, Content-Length framed, no Content-Type.
pub fn sized_post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: chatbus\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    req
}

/// `{"uuid": "<uuid>"` + spaces + `}`: a valid user body of exactly `len` bytes.
pub fn padded_user_body(uuid: &str, len: usize) -> Vec<u8> {
    let head = format!("{{\"uuid\": \"{uuid}\"");
    let mut body = head.into_bytes();
    body.resize(len - 1, b' ');
    body.push(b'}');
    assert_eq!(body.len(), len);
    body
}

/// After an answer that did not need the request's body, HTTP/1.1 leaves the server two clean
/// ways on: keep the connection usable (read or discard the body), or announce
/// `Connection: close` and close it. Closing without saying so makes a keep-alive client send
/// its next request into a dead connection. Returns what went wrong, if anything.
pub async fn usable_or_announced_close(conn: &mut RawConn, answer: &RawResp, what: &str) -> Option<String> {
    let announced = answer.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    let next = match conn.write(raw_get("/healthz").as_bytes()).await {
        Ok(()) => conn.read_response().await,
        Err(e) => Err(e),
    };
    match next {
        Ok(Some(r)) if r.status == 200 => None,
        Ok(None) | Err(_) if announced => None,
        other => Some(format!(
            "{what}: answered {} without `Connection: close` (headers {:?}), then the next request on the \
             connection got {:?}: neither usable nor closed cleanly",
            answer.status,
            answer.headers,
            other.map(|r| r.map(|r| r.status))
        )),
    }
}
