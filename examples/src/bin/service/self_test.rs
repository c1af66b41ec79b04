//! `--self-test`: the requests a reader would make with curl, printed with how they were
//! served. Fails on any unexpected status.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::BoxError;

pub(crate) async fn run(addr: SocketAddr) -> Result<(), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |method: Method, path: &'static str, body: &'static str| {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::from_static(body.as_bytes())));
        let client = client.clone();
        async move {
            let response = client.request(request?).await?;
            let status = response.status();
            let cache = response.headers().get("cache-status").cloned();
            let body = response.into_body().collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&body).replace('\n', " ");
            println!("{status} {path:<16} cache-status: {cache:?}\n    {text}");
            Ok::<_, BoxError>((status, text))
        }
    };
    for _ in 0..2 {
        expect(
            send(Method::GET, "/tweets/alice", "").await?,
            StatusCode::OK,
        )?;
        expect(
            send(Method::GET, "/timeline/alice", "").await?,
            StatusCode::OK,
        )?;
    }
    let posted = send(Method::POST, "/tweets/alice", "cached, then refreshed").await?;
    expect(posted, StatusCode::CREATED)?;
    // The write invalidated the page: served once more while one refresh renders it again.
    for _ in 0..100 {
        let (_, page) = send(Method::GET, "/timeline/alice", "").await?;
        if page.contains("cached, then refreshed") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("the page never showed the new tweet".into())
}

fn expect((status, _): (StatusCode, String), expected: StatusCode) -> Result<(), BoxError> {
    if status == expected {
        Ok(())
    } else {
        Err(format!("expected {expected}, got {status}").into())
    }
}
