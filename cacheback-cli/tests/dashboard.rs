//! `cacheback dashboard` loaded in a real headless Chromium (driven over WebDriver by
//! fantoccini) while a real fleet runs: the page shows the live queue depth and the fleet's
//! published counts, a dead letter appears, and its Replay button replays it; then "Replay
//! all" puts several back on the queue, and "Purge all" deletes several. One test, so one
//! Redis and one chromedriver per run. Skips loudly without `chromium` and `chromedriver`,
//! unless `CACHEBACK_REQUIRE_CHROMIUM=1`.
//!
//! `CACHEBACK_DASHBOARD_SCREENSHOT=path` also saves a screenshot of the page there (the
//! README's `docs/dashboard.png`).

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use support::{Fleet, Killed, WITHIN};

#[test]
fn child_process() {
    support::child_main();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `chromedriver` on a free port, or `None` (skipped loudly) when Chromium is missing.
fn chromedriver() -> Option<(Killed, String)> {
    if !installed("chromedriver") || !installed("chromium") {
        let message = "chromium and chromedriver are not installed \
                       (apt-get install chromium chromium-driver)";
        if std::env::var("CACHEBACK_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("{message}, and CACHEBACK_REQUIRE_CHROMIUM=1");
        }
        eprintln!("SKIPPED: {message}");
        return None;
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WITHIN;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((Killed(child), url))
}

/// A headless Chromium session.
async fn browser(webdriver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1200,1400"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(webdriver)
        .await
        .expect("a WebDriver session")
}

/// `cacheback dashboard` on a free port; returns it with its address.
fn dashboard(fleet: &Fleet) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cacheback"))
        .args(["--url", &fleet.server.url(), "--prefix", &fleet.prefix])
        .args(["dashboard", "--listen", "127.0.0.1:0", "--refresh", "0"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the dashboard");
    let mut line = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    // Keep reading, so that anything it prints later still has somewhere to go.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (Killed(child), url)
}

/// The text of the first element at `css`, or "" when there is none.
async fn text(browser: &Client, css: &str) -> String {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Clicks the element at `css`, then waits for the element at `then` on the page it leads to.
async fn press(browser: &Client, css: &str, then: &str) -> fantoccini::elements::Element {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css(then))
        .await
        .unwrap_or_else(|e| panic!("no `{then}` after clicking `{css}`: {e}"))
}

/// Clicks the button at `css` and returns the notice of the page the form's post redirects to.
async fn click(browser: &Client, css: &str) -> String {
    press(browser, css, "#notice").await.text().await.unwrap()
}

/// Clicks the button at `css`, which asks first: checks the question, leaves once with "no"
/// (nothing done), then clicks it again and answers "yes"; returns the notice of the page the
/// confirmed post redirects to.
async fn click_confirmed(browser: &Client, css: &str, question: &str) -> String {
    let ask = || async {
        let text = press(browser, css, "#question").await.text().await.unwrap();
        assert!(text.contains(question), "{text}");
    };
    ask().await;
    // "No": back on the dashboard, nothing done.
    press(browser, "a.cancel", css).await;
    ask().await;
    click(browser, "button.confirm").await
}

/// Reloads `url` until the element at `css` reads `want`.
async fn until_text(browser: &Client, url: &str, css: &str, want: &str) {
    let deadline = Instant::now() + WITHIN;
    loop {
        browser.goto(url).await.unwrap();
        let got = text(browser, css).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` reads {got:?}, not {want:?}:\n{}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_live_fleet_and_replays_and_purges_dead_letters() {
    let Some((_driver, webdriver)) = chromedriver() else {
        return;
    };
    let Some(fleet) = Fleet::start("dashboard") else {
        return;
    };
    let (_dash, url) = dashboard(&fleet);
    let browser = browser(&webdriver).await;

    // A web process (of a release whose `report` no worker knows yet) reads 4 profiles and
    // 2 reports, all misses, and publishes its counts: 6 requests wait, no worker runs.
    let _web = fleet.live_web("ann,bob,cid,dan", "1,2");
    until_text(&browser, &url, "tr[data-queue='default'] td.depth", "6").await;
    until_text(&browser, &url, "tr[data-job='profile'] td.misses", "4").await;
    assert_eq!(text(&browser, "tr[data-job='report'] td.misses").await, "2");
    assert!(
        browser
            .source()
            .await
            .unwrap()
            .contains("id=\"served-age\"")
    );

    // The old worker drains the queue and dead-letters the two reports.
    let mut old = fleet.worker("worker");
    until_text(&browser, &url, "tr[data-queue='default'] td.dead", "2").await;
    until_text(&browser, &url, "tr[data-queue='default'] td.depth", "0").await;
    let rows = browser
        .find_all(Locator::Css("tr.dead-letter"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let reason = rows[0].text().await.unwrap();
    assert!(reason.contains("unknown job `report`"), "{reason}");

    if let Ok(path) = std::env::var("CACHEBACK_DASHBOARD_SCREENSHOT") {
        let png = browser.screenshot().await.unwrap();
        std::fs::write(&path, &png).unwrap();
    }

    // The new release's worker knows `report`: Replay on the newest dead letter refreshes it.
    old.kill();
    let mut new = fleet.worker("worker-v2");
    let id = rows[0]
        .attr("data-id")
        .await
        .unwrap()
        .expect("a dead letter id");
    // The reports' keys, the replayed one first, from the command's own listing.
    let listed = fleet.json(&["dead-letters", "list", "default"]);
    let mut keys: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["request"]["key"].as_str().unwrap().to_owned())
        .collect();
    if listed[0]["id"] != id.as_str() {
        keys.reverse();
    }
    // The form posts, and the page it redirects to says what was done.
    let notice = click(&browser, &format!("tr[data-id='{id}'] button.replay")).await;
    assert_eq!(notice, "replayed 1 dead letter(s) of queue default");
    let rows = browser
        .find_all(Locator::Css("tr.dead-letter"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the replayed one is gone");
    assert_ne!(
        rows[0].attr("data-id").await.unwrap().as_deref(),
        Some(id.as_str())
    );
    // The replayed refresh ran: the replayed report's entry exists, the other's does not.
    let deadline = Instant::now() + WITHIN;
    loop {
        let written: Vec<bool> = keys
            .iter()
            .map(|key| fleet.cli(&["entry", key]).code == 0)
            .collect();
        if written == [true, false] {
            break;
        }
        assert!(Instant::now() < deadline, "reports written: {written:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    new.kill();

    replay_all_then_purge_all(&browser, &url, &fleet).await;
    browser.close().await.unwrap();
}

/// Goes on from one dead letter and no worker: "Replay all" puts several back on the queue,
/// then "Purge all" deletes several (none put back). No worker runs while a button acts, so
/// the queue's depth counts what was put back.
async fn replay_all_then_purge_all(browser: &Client, url: &str, fleet: &Fleet) {
    // The old release dead-letters five more reports: six in all.
    let mut old = fleet.worker("worker");
    assert_eq!(fleet.web("", "3,4,5,6,7"), 5);
    until_text(browser, url, "tr[data-queue='default'] td.dead", "6").await;
    until_text(browser, url, "tr[data-queue='default'] td.depth", "0").await;
    old.kill();
    let rows = browser
        .find_all(Locator::Css("tr.dead-letter"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 6);

    // Replay all (asked first; "no" does nothing): none left on the page, all six back on
    // the queue.
    assert_eq!(fleet.depth_and_dead_letters(), (0, 6));
    let notice = click_confirmed(
        browser,
        "button.replay-all",
        "Replay every dead letter of queue default?",
    )
    .await;
    assert_eq!(notice, "replayed 6 dead letter(s) of queue default");
    assert!(
        browser.find(Locator::Css("#no-dead-letters")).await.is_ok(),
        "{}",
        browser.source().await.unwrap_or_default()
    );
    assert_eq!(
        text(browser, "tr[data-queue='default'] td.depth").await,
        "6"
    );
    assert_eq!(text(browser, "tr[data-queue='default'] td.dead").await, "0");
    assert_eq!(fleet.depth_and_dead_letters(), (6, 0));

    // The old release dead-letters the six again, and two new reports: eight.
    let mut old = fleet.worker("worker");
    assert_eq!(fleet.web("", "8,9"), 2);
    until_text(browser, url, "tr[data-queue='default'] td.dead", "8").await;
    until_text(browser, url, "tr[data-queue='default'] td.depth", "0").await;
    old.kill();

    // Purge all (asked first): none left, and nothing was put back on the queue.
    let notice = click_confirmed(
        browser,
        "button.purge-all",
        "Purge every dead letter of queue default? They are deleted for good.",
    )
    .await;
    assert_eq!(notice, "purged 8 dead letter(s) of queue default");
    assert!(browser.find(Locator::Css("#no-dead-letters")).await.is_ok());
    assert_eq!(
        text(browser, "tr[data-queue='default'] td.depth").await,
        "0"
    );
    assert_eq!(fleet.depth_and_dead_letters(), (0, 0));
}
