//! What every panel handler shares: the API's own state (the same backend, authenticator and
//! trusted proxies) and the sign-in sessions.

use std::sync::Arc;

use super::session::Sessions;
use crate::api::AppState;

#[derive(Clone)]
pub struct PanelState {
    pub app: AppState,
    pub sessions: Arc<Sessions>,
}
