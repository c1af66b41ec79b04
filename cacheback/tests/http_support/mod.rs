//! Shared by the HTTP layer's test binaries: an origin whose answers a test scripts, served
//! through a real socket, and a hyper client to read it.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What the origin answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Never answer (a hung origin).
    pub hang: bool,
    /// Append the request's value of this header to the body (to see what the origin saw).
    pub echo: Option<&'static str>,
    /// Send these chunks instead of `body` (chunked, no `Content-Length`).
    pub stream: Option<Streamed>,
    /// Wait for a permit of this semaphore before answering (the permit is given back).
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
}

/// A body sent as it streams.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub chunks: Vec<Bytes>,
    /// Never end after the chunks (an event stream).
    pub endless: bool,
}

impl Reply {
    pub fn ok(cache_control: &str) -> Self {
        Reply {
            status: StatusCode::OK,
            headers: vec![("cache-control", cache_control.to_owned())],
            body: Bytes::from_static(b"v1"),
            hang: false,
            echo: None,
            stream: None,
            gate: None,
        }
    }

    /// The same reply with its body streamed in `chunks`, ending or not.
    pub fn streamed(mut self, chunks: Vec<Bytes>, endless: bool) -> Self {
        self.stream = Some(Streamed { chunks, endless });
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// The origin: counts its calls, keeps the headers of each request it saw.
#[derive(Debug)]
pub struct Origin {
    pub reply: Mutex<Reply>,
    pub calls: AtomicUsize,
    pub seen: Mutex<Vec<HeaderMap>>,
    /// Streamed bodies dropped (finished or not) by whoever read them.
    pub streams_dropped: AtomicUsize,
}

impl Origin {
    pub fn new(reply: Reply) -> Arc<Self> {
        Arc::new(Origin {
            reply: Mutex::new(reply),
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            streams_dropped: AtomicUsize::new(0),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn streams_dropped(&self) -> usize {
        self.streams_dropped.load(Ordering::SeqCst)
    }

    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    pub fn body(&self, body: &'static [u8]) {
        self.reply.lock().unwrap().body = Bytes::from_static(body);
    }

    /// The routes: every path answers as scripted.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/{*path}", get(answer).post(answer))
            .with_state(Arc::clone(self))
    }
}

async fn answer(State(origin): State<Arc<Origin>>, request: Request) -> Response {
    origin.calls.fetch_add(1, Ordering::SeqCst);
    origin.seen.lock().unwrap().push(request.headers().clone());
    let reply = origin.reply.lock().unwrap().clone();
    if reply.hang {
        std::future::pending::<()>().await;
    }
    if let Some(gate) = &reply.gate {
        drop(gate.acquire().await.unwrap());
    }
    let mut body = reply.body.to_vec();
    if let Some(name) = reply.echo
        && let Some(value) = request.headers().get(name)
    {
        body.extend_from_slice(b" ");
        body.extend_from_slice(value.as_bytes());
    }
    let body = match reply.stream {
        Some(streamed) => {
            let chunks = stream::iter(streamed.chunks).map(Ok::<_, Infallible>);
            let chunks = if streamed.endless {
                chunks.chain(stream::pending()).boxed()
            } else {
                chunks.boxed()
            };
            Body::from_stream(Counted {
                chunks,
                origin: Arc::clone(&origin),
            })
        }
        None => Body::from(body),
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers {
        response.headers_mut().append(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}

/// A streamed body that counts itself dropped.
struct Counted {
    chunks: BoxStream<'static, Result<Bytes, Infallible>>,
    origin: Arc<Origin>,
}

impl Stream for Counted {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.poll_next_unpin(cx)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.origin.streams_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Serves `app` on a free loopback port until the test ends.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A response as the client read it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// The `Cache-Status` header.
    pub fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `Age` header, in seconds.
    pub fn age(&self) -> Option<u64> {
        self.headers.get("age")?.to_str().ok()?.parse().ok()
    }
}

/// A hyper client of one server.
#[derive(Clone)]
pub struct Client {
    hyper: Hyper<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client {
            hyper: Hyper::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    pub async fn get(&self, path: &str) -> Got {
        self.send("GET", path, &[]).await
    }

    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let open = self.open(method, path, headers).await;
        Got {
            status: open.status,
            headers: open.headers,
            body: open.body.collect().await.unwrap().to_bytes(),
        }
    }

    /// The response's head, its body still to be read.
    pub async fn open(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Open {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .hyper
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Open {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// A response whose body is read as it comes.
#[derive(Debug)]
pub struct Open {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
}

impl Open {
    /// The `Cache-Status` header.
    pub fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Option<Bytes> {
        loop {
            let frame = self.body.frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                return Some(data);
            }
        }
    }
}
