//! The panel's sign-in sessions: kept in memory, keyed by a random id the browser holds in an
//! HttpOnly cookie. The API token a user signed in with stays here, never in a page, and each
//! session carries its own CSRF token that every form posts back.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ring::rand::{SecureRandom, SystemRandom};

/// The cookie that names a session.
pub const COOKIE: &str = "devicelink_session";

/// A session unused this long is forgotten: the user signs in again.
const IDLE_LIMIT: Duration = Duration::from_secs(8 * 3600);

/// At most this many sessions are kept; the least recently used go first.
const MAX_SESSIONS: usize = 10_000;

/// A one-time message shown on the next page (POST-redirect-GET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub error: bool,
    pub text: String,
}

#[derive(Clone)]
pub struct PanelSession {
    /// The API token signed in with, re-checked on every request so a revoked token ends the
    /// session at once.
    pub bearer: String,
    pub csrf: String,
    flash: Option<Flash>,
    /// A token just created on the tokens page, shown once.
    created_token: Option<(String, String)>,
    last_used: Instant,
}

impl PanelSession {
    pub fn new(bearer: String) -> Result<Self, SessionError> {
        Ok(Self {
            bearer,
            csrf: random_hex()?,
            flash: None,
            created_token: None,
            last_used: Instant::now(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the system's random source failed")]
    Random,
}

/// 256 random bits as hex: session ids and CSRF tokens.
pub fn random_hex() -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SessionError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, PanelSession>>,
}

impl Sessions {
    /// Stores a new session and returns its id.
    pub fn open(&self, session: PanelSession) -> Result<String, SessionError> {
        let id = random_hex()?;
        let mut map = self.lock();
        map.retain(|_, s| s.last_used.elapsed() < IDLE_LIMIT);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// The session of this id, if it is still alive; marks it used.
    pub fn touch(&self, id: &str) -> Option<PanelSession> {
        let mut map = self.lock();
        let alive = map
            .get(id)
            .is_some_and(|s| s.last_used.elapsed() < IDLE_LIMIT);
        if !alive {
            map.remove(id);
            return None;
        }
        let session = map.get_mut(id)?;
        session.last_used = Instant::now();
        Some(session.clone())
    }

    /// Whether the session still exists, without counting this as a use (a page left open
    /// with a live stream does not keep its session alive).
    pub fn alive(&self, id: &str) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|s| s.last_used.elapsed() < IDLE_LIMIT)
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(session) = self.lock().get_mut(id) {
            session.flash = Some(flash);
        }
    }

    /// The message left for this page, once.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.lock().get_mut(id)?.flash.take()
    }

    pub fn set_created_token(&self, id: &str, name: String, secret: String) {
        if let Some(session) = self.lock().get_mut(id) {
            session.created_token = Some((name, secret));
        }
    }

    /// A token's secret just created, once: the page that shows it is its only copy.
    pub fn take_created_token(&self, id: &str) -> Option<(String, String)> {
        self.lock().get_mut(id)?.created_token.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PanelSession>> {
        // A panic while holding the map leaves it consistent (every change is one call).
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Set-Cookie` for a new session: HttpOnly, SameSite=Strict, Path=/, Secure under TLS.
pub fn cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/{secure}")
}

/// `Set-Cookie` that makes the browser forget the session.
pub fn cleared_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

/// The session id the request's `Cookie` header carries.
pub fn id_from_cookies(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_and_forgotten_when_closed() {
        let sessions = Sessions::default();
        let id = sessions
            .open(PanelSession::new("dlc_x".into()).unwrap())
            .unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("theme=dark; {COOKIE}={id}").parse().unwrap(),
        );
        let found = id_from_cookies(&headers).unwrap();
        assert_eq!(sessions.touch(&found).unwrap().bearer, "dlc_x");
        sessions.close(&found);
        assert!(sessions.touch(&found).is_none());
    }

    #[test]
    fn the_session_cookie_is_secure_under_tls_and_never_readable_by_scripts() {
        let plain = cookie("abc", false);
        let tls = cookie("abc", true);
        for flags in [&plain, &tls] {
            assert!(flags.contains("HttpOnly") && flags.contains("SameSite=Strict"));
            assert!(flags.contains("Path=/"));
        }
        assert!(!plain.contains("Secure"));
        assert!(tls.ends_with("; Secure"));
        assert!(cleared_cookie(true).contains("Max-Age=0"));
    }

    #[test]
    fn a_flash_is_shown_once() {
        let sessions = Sessions::default();
        let id = sessions
            .open(PanelSession::new("dlc_x".into()).unwrap())
            .unwrap();
        let flash = Flash {
            error: false,
            text: "done".into(),
        };
        sessions.set_flash(&id, flash.clone());
        assert_eq!(sessions.take_flash(&id), Some(flash));
        assert_eq!(sessions.take_flash(&id), None);
    }

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
