//! The panel's forms and sessions over a real SQLite file, calling the router directly (no
//! socket, no browser): sign-in and its cookie, CSRF and origin refusals, roles checked on every
//! post, the create form's field errors, and a revoked token ending its sessions.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request, StatusCode, header},
};
use devicelink_console::{
    api::{self, AppState, auth::LocalTokens},
    caller::Role,
    local::{LocalBackend, LocalSettings, db},
    metrics::Metrics,
    panel, tokens,
};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Console {
    app: Router,
    viewer: String,
    operator: String,
    admin: String,
    tokens: Arc<std::sync::Mutex<rusqlite::Connection>>,
    dir: PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn console() -> Console {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "devicelink-panel-forms-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let conn = db::open(&dir).unwrap();
    let viewer = tokens::create(&conn, "vera", Role::Viewer).unwrap();
    let operator = tokens::create(&conn, "otto", Role::Operator).unwrap();
    let admin = tokens::create(&conn, "ada", Role::Admin).unwrap();
    let backend = LocalBackend::new(
        conn,
        LocalSettings {
            public_host: "links.example.net".to_owned(),
            ..LocalSettings::default()
        },
    );
    let state = AppState {
        authenticator: Arc::new(LocalTokens(backend.connection())),
        tokens: Some(backend.connection()),
        backend: Arc::new(backend.clone()),
        metrics: Arc::new(Metrics::default()),
        trusted_proxies: Arc::new(vec!["10.0.0.0/8".parse().unwrap()]),
    };
    Console {
        app: api::router(state.clone()).merge(panel::router(state)),
        viewer,
        operator,
        admin,
        tokens: backend.connection(),
        dir,
    }
}

struct Answer {
    status: StatusCode,
    location: String,
    set_cookie: String,
    body: String,
}

impl Console {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (status, location, set_cookie) = (
            response.status(),
            header(header::LOCATION),
            header(header::SET_COOKIE),
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            location,
            set_cookie,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: &str) -> Answer {
        self.send(
            Request::get(path)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn post(&self, path: &str, cookie: &str, form: &str) -> Answer {
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(header::COOKIE, cookie)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form.to_owned()))
                .unwrap(),
        )
        .await
    }

    /// Signs in and returns the session cookie and the session's CSRF token.
    async fn sign_in(&self, token: &str) -> (String, String) {
        let answer = self.post("/sign-in", "", &format!("token={token}")).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = answer.set_cookie.split(';').next().unwrap().to_owned();
        let page = self.get("/", &cookie).await;
        let csrf = page
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a CSRF token in the page")
            .to_owned();
        (cookie, csrf)
    }

    async fn create_link(&self, cookie: &str, csrf: &str, name: &str) -> Answer {
        self.post(
            "/links/new",
            cookie,
            &format!(
                "csrf={csrf}&namespace=default&name={name}&host=10.0.0.9&device_port=22&port=2222&sources=203.0.113.0%2F24&ttl=1h&enabled=on"
            ),
        )
        .await
    }
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_a_right_one_gets_a_strict_session_cookie() {
    let console = console();
    let refused = console.post("/sign-in", "", "token=dlc_nope").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.body.contains("unknown or was revoked"));
    assert!(refused.set_cookie.is_empty());

    let signed_in = console
        .post("/sign-in", "", &format!("token={}", console.admin))
        .await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            signed_in.set_cookie.contains(flag),
            "{}",
            signed_in.set_cookie
        );
    }
    assert!(
        !signed_in.set_cookie.contains(&console.admin),
        "the token never reaches the browser"
    );
    assert!(!signed_in.set_cookie.contains("Secure"), "plain HTTP");
}

#[tokio::test]
async fn a_page_without_a_session_sends_the_user_to_sign_in() {
    let console = console();
    let answer = console.get("/", "").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location, "/sign-in");
    let forged = console
        .get("/", "devicelink_session=0000000000000000")
        .await;
    assert_eq!(forged.location, "/sign-in");
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_or_from_another_origin_is_refused() {
    let console = console();
    let (cookie, csrf) = console.sign_in(&console.admin).await;
    let missing = console.create_link(&cookie, "", "pump").await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    let wrong = console.create_link(&cookie, "00ff", "pump").await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let elsewhere = console
        .send(
            Request::post("/links/new")
                .header(header::COOKIE, &cookie)
                .header(header::HOST, "console.example")
                .header(header::ORIGIN, "https://evil.example")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={csrf}&name=pump")))
                .unwrap(),
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::FORBIDDEN);
    let list = console.get("/", &cookie).await;
    assert!(!list.body.contains("pump"), "nothing was created");

    let created = console.create_link(&cookie, &csrf, "pump").await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    assert_eq!(created.location, "/links/default/pump");
}

#[tokio::test]
async fn a_viewer_sees_no_controls_and_the_server_refuses_their_posts_by_role() {
    let console = console();
    let (admin, admin_csrf) = console.sign_in(&console.admin).await;
    console.create_link(&admin, &admin_csrf, "pump").await;

    let (viewer, csrf) = console.sign_in(&console.viewer).await;
    let page = console.get("/links/default/pump", &viewer).await;
    assert_eq!(page.status, StatusCode::OK);
    for control in [
        "/disable",
        "/extend",
        "/sources/remove",
        "/sources/add-mine",
        "/delete",
    ] {
        assert!(!page.body.contains(control), "a viewer sees {control}");
    }
    let refused = console
        .post(
            "/links/default/pump/disable",
            &viewer,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER);
    let after = console.get("/links/default/pump", &viewer).await;
    assert!(
        after.body.contains("may not disable links"),
        "{}",
        after.body
    );
    assert!(
        after.body.contains("state-pending"),
        "the link is unchanged"
    );
    let tokens = console.get("/tokens", &viewer).await;
    assert_eq!(tokens.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_refused_field_is_marked_with_its_reason_and_what_was_typed_is_kept() {
    let console = console();
    let (cookie, csrf) = console.sign_in(&console.admin).await;
    let answer = console
        .post(
            "/links/new",
            &cookie,
            &format!(
                "csrf={csrf}&namespace=default&name=pump&host=10.0.0.9&device_port=22&sources=10.1.2.3%2F24&ttl=1h&description=%3Cb%3Ehi"
            ),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer.body.contains(
        r#"aria-describedby="sources-hint sources-error" aria-invalid="true">10.1.2.3/24</textarea>"#
    ));
    assert!(
        answer
            .body
            .contains(r#"<p id="sources-error" class="error">"#)
    );
    assert!(answer.body.contains("10.1.2.0/24"), "the fix is named");
    assert!(answer.body.contains(r#"value="pump""#), "the name is kept");
    assert!(
        answer.body.contains("&#60;b&#62;hi") || answer.body.contains("&lt;b&gt;hi"),
        "what was typed is escaped"
    );

    let port = console
        .post(
            "/links/new",
            &cookie,
            &format!("csrf={csrf}&namespace=default&name=pump&host=10.0.0.9&device_port=ssh"),
        )
        .await;
    assert!(
        port.body
            .contains(r#"<p id="device_port-error" class="error">"#)
    );
}

#[tokio::test]
async fn a_revoked_token_ends_its_panel_sessions() {
    let console = console();
    let (cookie, _) = console.sign_in(&console.viewer).await;
    assert_eq!(console.get("/", &cookie).await.status, StatusCode::OK);
    tokens::revoke(&console.tokens.lock().unwrap(), "vera").unwrap();
    let answer = console.get("/", &cookie).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location, "/sign-in");
}

#[tokio::test]
async fn an_admin_creates_a_token_shown_once_and_cannot_revoke_their_own() {
    let console = console();
    let (cookie, csrf) = console.sign_in(&console.admin).await;
    let created = console
        .post(
            "/tokens",
            &cookie,
            &format!("csrf={csrf}&name=ci-bot&role=operator"),
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER);
    let shown = console.get("/tokens", &cookie).await;
    let secret = shown
        .body
        .split("id=\"created-secret\" class=\"secret\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the secret is shown")
        .to_owned();
    assert!(secret.starts_with("dlc_"));
    assert!(!console.get("/tokens", &cookie).await.body.contains(&secret));
    assert_eq!(
        tokens::lookup(&console.tokens.lock().unwrap(), &secret).unwrap(),
        Some(("ci-bot".to_owned(), Role::Operator))
    );
    console
        .post("/tokens/revoke", &cookie, &format!("csrf={csrf}&name=ada"))
        .await;
    let page = console.get("/tokens", &cookie).await;
    assert!(
        page.body.contains("the token you are signed in with"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn an_operator_gets_the_open_time_controls_but_not_the_admins() {
    let console = console();
    let (admin, admin_csrf) = console.sign_in(&console.admin).await;
    console.create_link(&admin, &admin_csrf, "pump").await;

    let (operator, csrf) = console.sign_in(&console.operator).await;
    let page = console.get("/links/default/pump", &operator).await;
    for control in ["/extend", "/disable"] {
        assert!(page.body.contains(control), "an operator lacks {control}");
    }
    for control in [
        "/sources/remove",
        "/sources/add-mine",
        "/links/new",
        "/tokens",
        "/delete",
    ] {
        assert!(!page.body.contains(control), "an operator sees {control}");
    }
    let extended = console
        .post(
            "/links/default/pump/extend",
            &operator,
            &format!("csrf={csrf}&by=4h"),
        )
        .await;
    assert_eq!(extended.status, StatusCode::SEE_OTHER);
    let after = console.get("/links/default/pump", &operator).await;
    assert!(
        after.body.contains("Extended: the link now expires at"),
        "{}",
        after.body
    );
    let refused = console
        .post(
            "/links/default/pump/sources/remove",
            &operator,
            &format!("csrf={csrf}&range=203.0.113.0%2F24"),
        )
        .await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER);
    let after = console.get("/links/default/pump", &operator).await;
    assert!(after.body.contains("may not edit links"), "{}", after.body);
    assert!(after.body.contains("203.0.113.0/24"), "the range is kept");
}

#[tokio::test]
async fn the_cookie_is_secure_when_a_trusted_reverse_proxy_says_the_browser_used_https() {
    let console = console();
    let sign_in_from = |peer: &str| {
        let mut request = Request::post("/sign-in")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("x-forwarded-proto", "https")
            .body(Body::from(format!("token={}", console.viewer)))
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(peer.parse::<std::net::SocketAddr>().unwrap()));
        request
    };
    let proxied = console.send(sign_in_from("10.0.0.1:40000")).await;
    assert!(
        proxied.set_cookie.ends_with("; Secure"),
        "{}",
        proxied.set_cookie
    );
    let direct = console.send(sign_in_from("203.0.113.9:40000")).await;
    assert_eq!(direct.status, StatusCode::SEE_OTHER);
    assert!(
        !direct.set_cookie.contains("Secure"),
        "anyone may send the header: {}",
        direct.set_cookie
    );
}

#[tokio::test]
async fn an_admin_deletes_a_link_only_when_the_box_is_ticked() {
    let console = console();
    let (cookie, csrf) = console.sign_in(&console.admin).await;
    console.create_link(&cookie, &csrf, "pump").await;
    let unticked = console
        .post(
            "/links/default/pump/delete",
            &cookie,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(unticked.location, "/links/default/pump");
    let page = console.get("/links/default/pump", &cookie).await;
    assert!(page.body.contains("the link was kept"), "{}", page.body);

    let ticked = console
        .post(
            "/links/default/pump/delete",
            &cookie,
            &format!("csrf={csrf}&confirm=on"),
        )
        .await;
    assert_eq!(ticked.location, "/?namespace=default");
    let list = console.get("/?namespace=default", &cookie).await;
    assert!(list.body.contains("Link pump deleted."));
    assert!(!list.body.contains("data-link=\"pump\""));
    let gone = console.get("/links/default/pump", &cookie).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}
