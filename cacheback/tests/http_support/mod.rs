//! Shared by the HTTP layer's test binaries: an origin whose answers a test scripts, served
//! through a real socket, and a hyper client to read it.

#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
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
}

impl Reply {
    pub fn ok(cache_control: &str) -> Self {
        Reply {
            status: StatusCode::OK,
            headers: vec![("cache-control", cache_control.to_owned())],
            body: Bytes::from_static(b"v1"),
            hang: false,
            echo: None,
        }
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
}

impl Origin {
    pub fn new(reply: Reply) -> Arc<Self> {
        Arc::new(Origin {
            reply: Mutex::new(reply),
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
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
    let mut body = reply.body.to_vec();
    if let Some(name) = reply.echo
        && let Some(value) = request.headers().get(name)
    {
        body.extend_from_slice(b" ");
        body.extend_from_slice(value.as_bytes());
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers {
        response.headers_mut().append(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
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
        Got {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}
