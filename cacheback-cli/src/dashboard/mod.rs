//! `cacheback dashboard`: a small web page for one prefix, served on the operator's machine
//! (`page.rs` renders it). It reads what `cacheback queues` and `dead-letters list` read, plus
//! the counts the fleet's processes publish, at each load; its buttons replay and purge dead
//! letters (a purge, and a replay of a whole queue's dead letters, ask on a page of their own
//! first).

mod page;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use cacheback::RedisQueue;
use cacheback::fleet_stats::FleetStatsReader;
use serde::Deserialize;

use crate::exit::{ERROR, Failed, OK, Outcome};
use crate::output::now;
use crate::standalone::{self, Steps, Which, Write};

/// Dead letters shown per queue.
const DEAD_LETTERS_SHOWN: usize = 20;

struct Dash {
    prefix: String,
    queue: RedisQueue,
    reader: FleetStatsReader,
    refresh_secs: u64,
}

/// Serves the dashboard of `prefix` (its queues read through `queue`) on `listen` until
/// Ctrl-C.
pub(crate) async fn serve(
    url: &str,
    prefix: &str,
    queue: RedisQueue,
    listen: SocketAddr,
    refresh_secs: u64,
) -> Outcome {
    let dash = Arc::new(Dash {
        prefix: prefix.to_owned(),
        queue,
        reader: FleetStatsReader::from_url(url, prefix)?,
        refresh_secs,
    });
    let app = Router::new()
        .route("/", get(index))
        .route("/replay", post(replay))
        .route("/purge", post(purge))
        .with_state(dash);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failed::new(ERROR, format!("could not listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failed::new(ERROR, e.to_string()))?;
    // A line scripts (and tests) can wait for: the port when asked for port 0.
    eprintln!("dashboard of prefix `{prefix}` on http://{addr}/");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Failed::new(ERROR, format!("the dashboard stopped: {e}")))?;
    Ok(OK)
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    /// Seconds between reloads (0: none); the command's `--refresh` by default.
    refresh: Option<u64>,
    /// What the last button did.
    done: Option<String>,
}

fn failure(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        Html(format!(
            "<!doctype html><p>cacheback dashboard: {}</p>",
            page::escape(&error.to_string())
        )),
    )
        .into_response()
}

async fn index(State(dash): State<Arc<Dash>>, Query(query): Query<PageQuery>) -> Response {
    match view(&dash, query).await {
        Ok(view) => Html(page::render(&view)).into_response(),
        Err(error) => failure(error),
    }
}

async fn view(dash: &Dash, query: PageQuery) -> Result<page::View, Failed> {
    let now = now();
    let stats = dash.reader.read(now).await?;
    let names = dash.queue.queue_names().await?;
    let mut queues = Vec::with_capacity(names.len());
    let mut dead_letters = Vec::new();
    for name in names {
        let stats = dash.queue.stats(&name).await?;
        if stats.dead_letters > 0 {
            let letters = dash.queue.dead_letters(&name, DEAD_LETTERS_SHOWN).await?;
            dead_letters.push((name.clone(), letters));
        }
        queues.push(standalone::QueueJson::new(stats));
    }
    Ok(page::View {
        prefix: dash.prefix.clone(),
        now,
        refresh_secs: query.refresh.unwrap_or(dash.refresh_secs),
        notice: query.done,
        stats,
        queues,
        dead_letters,
    })
}

#[derive(Debug, Deserialize)]
struct Button {
    queue: String,
    /// A dead letter's id, or `all`.
    id: String,
    /// `yes` once the confirmation page was answered.
    confirm: Option<String>,
}

async fn replay(State(dash): State<Arc<Dash>>, Form(button): Form<Button>) -> Response {
    act(&dash, button, Write::Replay).await
}

async fn purge(State(dash): State<Arc<Dash>>, Form(button): Form<Button>) -> Response {
    act(&dash, button, Write::Purge).await
}

/// Runs a button's write, then shows the page again with what it did. A purge, and a replay
/// of every dead letter of a queue, ask first (a page whose "yes" posts again, confirmed).
async fn act(dash: &Dash, button: Button, op: Write) -> Response {
    let all = button.id == "all";
    let asks = matches!(op, Write::Purge) || all;
    if asks && button.confirm.as_deref() != Some("yes") {
        let action = match op {
            Write::Replay => "replay",
            Write::Purge => "purge",
        };
        let question = match (op, all) {
            (Write::Purge, true) => format!(
                "Purge every dead letter of queue {}? They are deleted for good.",
                button.queue
            ),
            (Write::Purge, false) => format!(
                "Purge dead letter {} of queue {}? It is deleted for good.",
                button.id, button.queue
            ),
            (Write::Replay, _) => format!(
                "Replay every dead letter of queue {}? Each goes back on the queue.",
                button.queue
            ),
        };
        let page = page::confirm(&dash.prefix, action, &button.queue, &button.id, &question);
        return Html(page).into_response();
    }
    let which = if all {
        match standalone::newest(&dash.queue, &button.queue).await {
            Ok(Some(which)) => which,
            Ok(None) => Which::Ids(Vec::new()),
            Err(error) => return failure(error),
        }
    } else if standalone::parse_id(&button.id).is_some() {
        Which::Ids(vec![button.id.clone()])
    } else {
        return (StatusCode::BAD_REQUEST, "not a dead letter id").into_response();
    };
    match standalone::apply(
        &dash.queue,
        &button.queue,
        which,
        op,
        Steps::default(),
        |_| {},
    )
    .await
    {
        Ok(report) => {
            let done = format!(
                "{} {} dead letter(s) of queue {}",
                op.done(),
                report.done,
                button.queue
            );
            let query = serde_urlencoded_pair("done", &done);
            Redirect::to(&format!("/?{query}")).into_response()
        }
        Err(error) => failure(error),
    }
}

/// `name=value`, with the value percent-encoded for a query string.
fn serde_urlencoded_pair(name: &str, value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{name}=");
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_percent_encoded() {
        assert_eq!(
            serde_urlencoded_pair("done", "replayed 1 of `q`&x"),
            "done=replayed%201%20of%20%60q%60%26x"
        );
    }
}
