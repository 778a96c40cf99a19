//! The control panel in a real browser: headless Chromium over WebDriver in the test bed's client
//! namespace, the console (local backend, a real proxy on the eBPF data plane) in the proxy
//! namespace, a real sshd behind it. A user signs in with a token and does a link's whole life
//! from the page; what the proxy does shows up without a reload. Needs root, `chromium` and
//! `chromium-driver` (`cargo xtask setup`). Saves the README's screenshots in docs/screenshots/.

mod common;

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    console::{Console, DATA_PORT, SSH_PORT, front, token, token_for},
    netns::run_in,
};
use devicelink_testbed::{
    CLIENT_V4, DEVICE_V4, OTHER_CLIENT_V4, PROXY_FRONT_V4, Process, Topology, ssh::SshDevice,
};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// The console listens where the client namespace reaches it, as a browser on a user's
/// network would.
const PANEL: SocketAddr = SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), 18_080);
/// How long anything the page shows may take to appear.
const PATIENCE: Duration = Duration::from_secs(20);
const VNC_PORT: u16 = 2224;

fn url(path: &str) -> String {
    format!("http://{PANEL}{path}")
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
}

/// chromedriver on a free loopback port of the client namespace; it starts Chromium there.
fn chromedriver(topology: &Topology) -> (Process, u16) {
    let port = run_in(&topology.client, || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    });
    let mut cmd = topology.client.command("chromedriver");
    cmd.arg(format!("--port={port}"));
    let process = Process::start("chromedriver", cmd)
        .expect("chromedriver starts (apt-get install chromium-driver, or cargo xtask setup)");
    let deadline = Instant::now() + PATIENCE;
    while !run_in(&topology.client, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen:\n{}",
            process.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (process, port)
}

async fn browser(port: u16, profile: &Path) -> Client {
    let options = json!({
        "binary": "/usr/bin/chromium",
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1000", format!("--user-data-dir={}", profile.display()),
        ],
    });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_owned(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// The page's text of `css` once `want` holds for it, polling until [`PATIENCE`] runs out.
async fn wait_for(b: &Client, css: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(el) = b.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
            && want(&text)
        {
            return text;
        }
        if Instant::now() > deadline {
            let page = b.source().await.unwrap_or_default();
            panic!("{what}: `{css}` never matched\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn type_into(b: &Client, css: &str, text: &str) {
    let el = b.find(Locator::Css(css)).await.expect(css);
    el.clear().await.expect("clear");
    el.send_keys(text).await.expect("type");
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

async fn value_of(b: &Client, css: &str) -> String {
    b.find(Locator::Css(css))
        .await
        .expect(css)
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("screenshot");
    let dir = screenshots();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// The whole page, the window grown to its height for the shot.
async fn full_page_screenshot(b: &Client, name: &str) {
    let height = b
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .expect("script runs")
        .as_u64()
        .unwrap_or(1000);
    b.set_window_size(1280, height as u32 + 100).await.unwrap();
    screenshot(b, name).await;
    b.set_window_size(1280, 1000).await.unwrap();
}

/// Marks the page so a later check can tell it was updated in place, not reloaded.
async fn mark_page(b: &Client) {
    b.execute("window.notReloaded = true; return true;", vec![])
        .await
        .expect("script runs");
}

async fn assert_not_reloaded(b: &Client, what: &str) {
    let marked = b
        .execute("return window.notReloaded === true;", vec![])
        .await
        .expect("script runs");
    assert_eq!(marked, Value::Bool(true), "{what}: the page was reloaded");
}

async fn sign_in(b: &Client, token: &str) {
    b.goto(&url("/")).await.expect("the panel answers");
    wait_for(b, "h1", "the sign-in page", |t| t == "Sign in").await;
    type_into(b, "#token", token).await;
    click(b, "form[action='/sign-in'] button").await;
    wait_for(b, "h1", "the links page", |t| t.starts_with("Links")).await;
}

async fn fill_link(b: &Client, name: &str, port: u16, sources: &str, ttl: &str) {
    b.goto(&url("/links/new?namespace=plant-a")).await.unwrap();
    type_into(b, "#name", name).await;
    type_into(b, "#host", &DEVICE_V4.to_string()).await;
    type_into(b, "#device_port", "22").await;
    type_into(b, "#port", &port.to_string()).await;
    type_into(b, "#sources", sources).await;
    type_into(b, "#ttl", ttl).await;
}

/// An SSH session from the client namespace through the link, held open by `remote`.
fn held_ssh(topology: &Topology, sshd: &SshDevice, remote: &str) -> Process {
    let mut ssh = topology.client.command("ssh");
    ssh.arg("-i").arg(sshd.client_key()).args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-p",
        &SSH_PORT.to_string(),
        &format!("root@{PROXY_FRONT_V4}"),
        remote,
    ]);
    Process::start("ssh-held", ssh).expect("ssh starts")
}

/// A form post the page itself did not build, sent with the session cookie: the status the
/// browser saw and the page it ended on.
async fn forged_post(b: &Client, path: &str, body: &str) -> (u64, String) {
    let script = "const [path, body, done] = arguments;
        fetch(path, {method: 'POST', body: new URLSearchParams(body), credentials: 'same-origin'})
          .then(async r => done([r.status, await r.text()]))
          .catch(e => done([0, String(e)]));";
    let answer = b
        .execute_async(script, vec![json!(path), json!(body)])
        .await
        .expect("fetch runs");
    (
        answer[0].as_u64().unwrap_or_default(),
        answer[1].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn a_user_runs_a_link_from_the_panel_in_a_real_browser() {
    let topology = Topology::new("panel")
        .unwrap_or_else(|e| panic!("topology: {e:#} (these tests need root)"));
    let sshd = SshDevice::start(&topology.device, SocketAddr::new(IpAddr::V4(DEVICE_V4), 22))
        .expect("sshd on the device");
    let data = std::env::temp_dir().join(format!("devicelink-panel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let admin = token(&data);
    let viewer = token_for(&data, "vic", "viewer");
    let console = Console::start_on(
        &topology,
        &data,
        &admin,
        PANEL,
        &["--insecure-plain-http-on-any-address"],
    );
    let (driver, driver_port) = chromedriver(&topology);
    let profile = data.join("chromium-profile");
    let client_range = format!("{CLIENT_V4}/32");

    run_in(&topology.client, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let b = browser(driver_port, &profile).await;

            // Sign in with the admin's token.
            sign_in(&b, &admin).await;

            // A range with host bits set: refused at its field, with the reason, typed text kept.
            fill_link(&b, "ssh", SSH_PORT, "10.77.1.3/24", "1h").await;
            click(&b, "form.create button[type=submit]").await;
            let reason =
                wait_for(&b, "#sources-error", "the range's error", |t| !t.is_empty()).await;
            assert!(
                reason.contains("10.77.1.0/24"),
                "the fix is named: {reason}"
            );
            assert_eq!(value_of(&b, "#sources").await, "10.77.1.3/24");
            assert_eq!(value_of(&b, "#name").await, "ssh");
            let field = b.find(Locator::Css("#sources")).await.unwrap();
            assert_eq!(
                field.attr("aria-invalid").await.unwrap().as_deref(),
                Some("true")
            );
            assert!(
                field
                    .attr("aria-describedby")
                    .await
                    .unwrap()
                    .unwrap_or_default()
                    .contains("sources-error"),
                "the error is tied to its field"
            );
            full_page_screenshot(&b, "create-form-error.png").await;

            // Put right, the link is created and turns ready on the page by itself.
            type_into(&b, "#sources", &format!("{OTHER_CLIENT_V4}/32")).await;
            click(&b, "form.create button[type=submit]").await;
            wait_for(&b, "h1", "the link's page", |t| t.starts_with("ssh")).await;
            mark_page(&b).await;
            wait_for(&b, "#link-state", "the link turns ready", |t| t == "ready").await;
            assert_not_reloaded(&b, "turning ready").await;

            // "Add my address" adds the browser's own address, as the API's rule sees it.
            click(&b, "form[action$='/sources/add-mine'] button").await;
            let said = wait_for(&b, ".flash", "add my address", |t| {
                t.contains("may now connect")
            })
            .await;
            assert!(said.contains(&CLIENT_V4.to_string()), "{said}");
            wait_for(&b, ".sources", "the range is listed", |t| {
                t.contains(&client_range)
            })
            .await;

            // SSH through the link; a session held open appears on the page without a reload.
            let echoed = sshd
                .ssh(
                    &topology.client,
                    front(SSH_PORT),
                    "echo through-the-panel",
                    None,
                )
                .expect("ssh through the link");
            assert!(echoed.contains("through-the-panel"), "{echoed}");
            mark_page(&b).await;
            // A steady trickle from the device, for the traffic chart.
            let held = held_ssh(
                &topology,
                &sshd,
                "while true; do head -c 131072 /dev/zero; sleep 0.25; done",
            );
            wait_for(&b, "#sessions tbody", "the session appears", |t| {
                t.contains(&CLIENT_V4.to_string())
            })
            .await;
            wait_for(&b, "#traffic-now", "the chart shows the traffic", |t| {
                t.starts_with("Now ") && (t.contains("KiB/s,") || t.contains("MiB/s,"))
            })
            .await;
            let deadline = Instant::now() + PATIENCE;
            while b
                .execute(
                    "return document.getElementById('traffic-line').points.numberOfItems;",
                    vec![],
                )
                .await
                .unwrap()
                .as_u64()
                < Some(8)
            {
                assert!(
                    Instant::now() < deadline,
                    "the chart never drew eight samples"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert_not_reloaded(&b, "a session opening").await;
            full_page_screenshot(&b, "link.png").await;

            // A second session, closed from the page.
            let second = held_ssh(&topology, &sshd, "sleep 120");
            let deadline = Instant::now() + PATIENCE;
            while b
                .find_all(Locator::Css("#sessions tbody tr"))
                .await
                .unwrap()
                .len()
                < 2
            {
                assert!(Instant::now() < deadline, "the second session never showed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            click(&b, "#sessions tbody tr:last-child button").await;
            wait_for(&b, ".flash", "closing a session", |t| {
                t == "Session closed."
            })
            .await;
            let mut sessions = [held, second];
            let deadline = Instant::now() + PATIENCE;
            let closed = loop {
                if let Some(closed) = sessions.iter_mut().position(|p| p.try_wait().is_some()) {
                    break closed;
                }
                assert!(
                    Instant::now() < deadline,
                    "no ssh was cut by closing its session"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let [first, second] = sessions;
            let mut held = if closed == 0 { second } else { first };
            assert!(held.try_wait().is_none(), "only the closed session ended");

            // Extend by 1h: the expiry moves an hour.
            let before: jiff::Timestamp =
                wait_for(&b, "#link-expires-at", "the expiry", |t| t.ends_with('Z'))
                    .await
                    .parse()
                    .unwrap();
            click(&b, "form[action$='/extend'] input[value='1h'] ~ button").await;
            wait_for(&b, ".flash", "the extension", |t| t.starts_with("Extended")).await;
            let after: jiff::Timestamp = wait_for(&b, "#link-expires-at", "the new expiry", |t| {
                t.ends_with('Z')
            })
            .await
            .parse()
            .unwrap();
            assert_eq!(
                after.duration_since(before),
                jiff::SignedDuration::from_hours(1)
            );

            // The client's range removed: its session ends, on the page and for ssh.
            click(
                &b,
                &format!(
                    "form[action$='/sources/remove'] button[aria-label='Remove {client_range}']"
                ),
            )
            .await;
            wait_for(&b, ".flash", "the removal", |t| {
                t.contains("may no longer connect")
            })
            .await;
            mark_page(&b).await;
            let deadline = Instant::now() + PATIENCE;
            loop {
                let hidden = b
                    .find(Locator::Css("#sessions-empty"))
                    .await
                    .unwrap()
                    .attr("hidden")
                    .await
                    .unwrap();
                if hidden.is_none() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the session never ended on the page"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_not_reloaded(&b, "a session ending").await;
            assert!(
                held.wait_timeout(Duration::from_secs(10)).is_some(),
                "the removed client's ssh was not cut"
            );

            // Disable.
            click(&b, "form[action$='/disable'] button").await;
            wait_for(&b, ".flash", "disabling", |t| t.contains("disabled")).await;
            wait_for(&b, "#link-state", "the link turns disabled", |t| {
                t == "disabled"
            })
            .await;

            // A short link expires on the page without a reload.
            fill_link(&b, "short", DATA_PORT, &client_range, "10s").await;
            click(&b, "form.create button[type=submit]").await;
            wait_for(&b, "h1", "the short link's page", |t| {
                t.starts_with("short")
            })
            .await;
            mark_page(&b).await;
            wait_for(&b, "#link-state", "the short link turns ready", |t| {
                t == "ready"
            })
            .await;
            wait_for(&b, "#link-state", "the short link expires", |t| {
                t == "expired"
            })
            .await;
            assert_eq!(
                wait_for(&b, "#link-time-left", "time left", |t| t == "expired").await,
                "expired"
            );
            wait_for(&b, "#timeline", "the expiry in the timeline", |t| {
                t.contains("expired")
            })
            .await;
            assert_not_reloaded(&b, "expiring").await;

            // One more, closing within the quarter hour: marked on the list.
            let (status, body) = console.call(
                "POST",
                "/api/v1/namespaces/plant-a/links",
                Some(&json!({
                    "name": "vnc", "device": {"host": DEVICE_V4.to_string(), "port": 5900},
                    "port": VNC_PORT, "allowedSourceRanges": [client_range], "ttl": "10m",
                    "description": "the pump's touch panel",
                })),
            );
            assert_eq!(status, 201, "create vnc: {body}");
            b.goto(&url("/?namespace=plant-a")).await.unwrap();
            wait_for(
                &b,
                "tr[data-link='vnc'] [data-field='state']",
                "vnc turns ready",
                |t| t == "ready",
            )
            .await;
            wait_for(&b, "tr[data-link='vnc']", "vnc is marked", |t| {
                t.contains("expires soon")
            })
            .await;
            wait_for(
                &b,
                "tr[data-link='short']",
                "short is listed expired",
                |t| t.contains("expired"),
            )
            .await;
            screenshot(&b, "links.png").await;

            // On a phone's width the list fits without sideways scrolling.
            b.set_window_size(390, 844).await.unwrap();
            let fits = b
                .execute(
                    "return document.documentElement.scrollWidth <= window.innerWidth;",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(
                fits,
                Value::Bool(true),
                "the list scrolls sideways on a phone"
            );
            b.set_window_size(1280, 1000).await.unwrap();

            // The state filter.
            b.goto(&url("/?namespace=plant-a&state=expired"))
                .await
                .unwrap();
            wait_for(&b, "h1", "the filtered list", |t| t.starts_with("Links")).await;
            let rows = b.find_all(Locator::Css("#links tbody tr")).await.unwrap();
            assert_eq!(rows.len(), 1, "only the expired link is listed");

            // Tokens: a new one is shown once, then only listed; it can be revoked.
            b.goto(&url("/tokens")).await.unwrap();
            type_into(&b, "#token-name", "ci-bot").await;
            click(&b, "form[action='/tokens'] button").await;
            let secret = wait_for(&b, "#created-secret", "the new token", |t| {
                t.starts_with("dlc_")
            })
            .await;
            b.goto(&url("/tokens")).await.unwrap();
            wait_for(&b, "table.tokens", "the token is listed", |t| {
                t.contains("ci-bot")
            })
            .await;
            assert!(
                !b.source().await.unwrap().contains(&secret),
                "the secret is shown only once"
            );
            click(&b, "button[aria-label='Revoke ci-bot']").await;
            wait_for(&b, ".flash", "the revocation", |t| t.contains("revoked")).await;

            // A viewer: no edit controls, and posts the page did not build are refused.
            click(&b, "form[action='/sign-out'] button").await;
            wait_for(&b, "h1", "signed out", |t| t == "Sign in").await;
            sign_in(&b, &viewer).await;
            assert!(
                b.find_all(Locator::Css("a[href^='/links/new']"))
                    .await
                    .unwrap()
                    .is_empty(),
                "a viewer is offered no new link"
            );
            b.goto(&url("/links/plant-a/ssh")).await.unwrap();
            wait_for(&b, "h1", "the link's page", |t| t.starts_with("ssh")).await;
            let controls = b
                .find_all(Locator::Css("main form, main button:not(.copy)"))
                .await
                .unwrap();
            assert!(
                controls.is_empty(),
                "a viewer sees {} edit controls",
                controls.len()
            );
            let (status, page) = forged_post(&b, "/links/plant-a/ssh/enable", "").await;
            assert_eq!(status, 403, "a post without the CSRF token: {page}");
            let (status, _) = forged_post(&b, "/links/plant-a/ssh/enable", "csrf=0123abcd").await;
            assert_eq!(status, 403, "a post with a wrong CSRF token");
            let csrf = value_of(&b, "form[action='/sign-out'] input[name=csrf]").await;
            let (_, page) =
                forged_post(&b, "/links/plant-a/ssh/enable", &format!("csrf={csrf}")).await;
            assert!(
                page.contains("may not enable links"),
                "the role is checked on the server: {page}"
            );
            b.close().await.unwrap();
        });
    });
    assert_eq!(
        console.link("ssh")["enabled"],
        false,
        "the viewer changed nothing"
    );
    let log = console.process.log();
    assert!(
        log.contains("panel post refused: missing or wrong CSRF token"),
        "refusals are logged"
    );
    drop(driver);
    let _ = std::fs::remove_dir_all(&data);
}
