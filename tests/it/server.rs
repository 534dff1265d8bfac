//! An HTTP server on 127.0.0.1 serving one file with injected faults, for the fetch tests.
//!
//! Routes (the file name after the route is ignored):
//! `/file/` normal (Range, ETag) · `/norange/` ignores Range · `/cut/` first answer stops
//! half-way · `/cutnorange/` both · `/alwayscut/` every answer stops at the file's middle ·
//! `/alwayscutnorange/` the same, ignoring Range · `/429/` one 429 with `Retry-After: 1` first · `/503/` two 503
//! first · `/404/` · `/html/` an HTML page · `/sneaky/` an HTML page labelled as octet-stream ·
//! `/stall/` headers, then silence · `/mute/` reads the request, never answers · `/slow/` throttled · `/uc` Drive's warning page
//! (form → `/download`) · `/download` the file when `confirm=t` and `uuid` are given ·
//! `/quota/uc` Drive's quota page.

use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tiny_http::{Header, Response, Server, StatusCode};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub url: String,
    pub range: Option<String>,
    pub status: u16,
}

/// A running server.
pub struct TestServer {
    pub base: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Body bytes handed to the network, all requests together.
    pub sent: Arc<AtomicUsize>,
    server: Arc<Server>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// Counts body bytes as they are sent; optionally fails after `cut` bytes, sleeps per read.
struct Body {
    inner: Cursor<Vec<u8>>,
    sent: Arc<AtomicUsize>,
    cut: Option<usize>,
    done: usize,
    pause: Option<Duration>,
    chunk: usize,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(c) = self.cut {
            if self.done >= c {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"));
            }
        }
        if let Some(p) = self.pause {
            std::thread::sleep(p);
        }
        let mut max = buf.len().min(self.chunk);
        if let Some(c) = self.cut {
            max = max.min(c - self.done);
        }
        let n = self.inner.read(&mut buf[..max])?;
        self.done += n;
        self.sent.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap()
}

pub const ETAG: &str = "\"v1-abcdef\"";

/// Drive's warning page, with a relative form action.
fn warning_page(id: &str) -> String {
    format!(
        r#"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<form id="download-form" action="/download" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="0b6a-42"></form></body></html>"#
    )
}

const QUOTA: &str = "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body><p class=\"uc-error-subcaption\">Too many users have viewed or downloaded this file recently. Please try accessing the file again later.</p></body></html>";

/// Start a server for `data`.
pub fn start(data: Vec<u8>) -> TestServer {
    let server = Arc::new(Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
    let data = Arc::new(data);
    {
        let (server, seen, sent) = (server.clone(), seen.clone(), sent.clone());
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                let (seen, sent, counts, data) =
                    (seen.clone(), sent.clone(), counts.clone(), data.clone());
                std::thread::spawn(move || handle(req, &seen, &sent, &counts, &data));
            }
        });
    }
    TestServer {
        base: format!("http://127.0.0.1:{port}"),
        seen,
        sent,
        server,
    }
}

fn handle(
    req: tiny_http::Request,
    seen: &Mutex<Vec<Seen>>,
    sent: &Arc<AtomicUsize>,
    counts: &Mutex<std::collections::HashMap<String, usize>>,
    data: &[u8],
) {
    let url = req.url().to_string();
    let route = url
        .split('/')
        .nth(1)
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
        .to_string();
    if route == "mute" {
        // Hold the connection open without a status line for longer than any test waits.
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let range = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| h.value.as_str().to_string());
    let if_range = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("If-Range"))
        .map(|h| h.value.as_str().to_string());
    let n = {
        let mut c = counts.lock().unwrap();
        let e = c.entry(route.clone()).or_insert(0);
        *e += 1;
        *e
    };
    let mut body = Body {
        inner: Cursor::new(Vec::new()),
        sent: sent.clone(),
        cut: None,
        done: 0,
        pause: None,
        chunk: 64 << 10,
    };
    let mut headers = vec![
        header("ETag", ETAG),
        header("Content-Type", "application/octet-stream"),
    ];
    let honour_range = !matches!(
        route.as_str(),
        "norange" | "cutnorange" | "alwayscutnorange"
    );
    let mut status = 200u16;
    let mut start = 0usize;
    let page = |status: u16, html: String| (status, html.into_bytes());
    let special = match route.as_str() {
        "404" => Some(page(404, "not here".into())),
        "html" | "sneaky" => Some(page(
            200,
            "<!DOCTYPE html><html><head><title>Service Unavailable</title></head></html>".into(),
        )),
        "429" if n == 1 => Some(page(429, String::new())),
        "503" if n <= 2 => Some(page(503, String::new())),
        "uc" => {
            let id = url.split("id=").nth(1).unwrap_or("").to_string();
            Some(page(200, warning_page(&id)))
        }
        "quota" => Some(page(200, QUOTA.into())),
        "download" if !(url.contains("confirm=t") && url.contains("uuid=0b6a-42")) => {
            Some(page(400, "missing confirm".into()))
        }
        _ => None,
    };
    let content = match special {
        Some((s, bytes)) => {
            status = s;
            if route == "html" || route == "uc" || route == "quota" {
                headers[1] = header("Content-Type", "text/html; charset=utf-8");
            }
            if route == "429" {
                headers.push(header("Retry-After", "1"));
            }
            bytes
        }
        None => {
            if let (true, Some(r)) = (honour_range, &range) {
                let from: usize = r
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap_or(0);
                if if_range.as_deref().is_none_or(|v| v == ETAG) && from <= data.len() {
                    status = 206;
                    start = from;
                    headers.push(header(
                        "Content-Range",
                        &format!(
                            "bytes {from}-{}/{}",
                            data.len().saturating_sub(1),
                            data.len()
                        ),
                    ));
                }
            }
            if (route == "cut" || route == "cutnorange") && n == 1 {
                body.cut = Some(data.len() / 2);
            }
            if route == "alwayscut" || route == "alwayscutnorange" {
                // Every answer breaks at the same byte of the file.
                body.cut = Some((data.len() / 2).saturating_sub(start));
            }
            if route == "stall" {
                body.pause = Some(Duration::from_secs(30));
            }
            if route == "slow" {
                body.pause = Some(Duration::from_millis(20));
                body.chunk = 16 << 10;
            }
            data[start..].to_vec()
        }
    };
    let len = content.len();
    body.inner = Cursor::new(content);
    seen.lock().unwrap().push(Seen { url, range, status });
    // Identity encoding with a Content-Length: tiny_http would chunk large bodies, and end a
    // cut one cleanly, which no real broken connection does.
    let resp = Response::new(StatusCode(status), headers, body, Some(len), None)
        .with_chunked_threshold(usize::MAX);
    let _ = req.respond(resp);
}
