//! Who a Kubernetes bearer token belongs to, asked of the API server itself (a
//! SelfSubjectReview, made with that token): the console learns the name for its log and audit
//! trail and holds no user list of its own. Every caller gets the console's widest role: what
//! each may actually do is the API server's RBAC decision on every call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};

use super::{clients::Clients, errors::from_kube};
use crate::{api::auth::Authenticator, caller::Role, problem::ApiError, tokens::digest_hex};

/// How long a review's answer is reused for the log's name. Authorisation is not cached: the
/// API server judges the token on every call it carries.
const KEEP: Duration = Duration::from_secs(30);

pub struct KubeAuthenticator {
    clients: Arc<Clients>,
    known: Mutex<HashMap<String, (String, Instant)>>,
}

impl KubeAuthenticator {
    pub fn new(clients: Arc<Clients>) -> Self {
        Self {
            clients,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn remembered(&self, key: &str) -> Option<String> {
        let known = self.known.lock().ok()?;
        known
            .get(key)
            .filter(|(_, at)| at.elapsed() < KEEP)
            .map(|(name, _)| name.clone())
    }

    fn remember(&self, key: String, name: &str) {
        if let Ok(mut known) = self.known.lock() {
            known.retain(|_, (_, at)| at.elapsed() < KEEP);
            known.insert(key, (name.to_owned(), Instant::now()));
        }
    }
}

impl Authenticator for KubeAuthenticator {
    fn authenticate(
        &self,
        token: String,
    ) -> BoxFuture<'_, Result<Option<(String, Role)>, ApiError>> {
        Box::pin(async move {
            let key = digest_hex(&token);
            if let Some(name) = self.remembered(&key) {
                return Ok(Some((name, Role::Admin)));
            }
            let client = self.clients.for_token(&token)?;
            let review = SelfSubjectReview {
                metadata: Default::default(),
                status: None,
            };
            let answer = Api::<SelfSubjectReview>::all(client)
                .create(&PostParams::default(), &review)
                .await;
            match answer {
                Ok(review) => {
                    let name = review
                        .status
                        .and_then(|s| s.user_info)
                        .and_then(|u| u.username)
                        .unwrap_or_else(|| "unknown-user".to_owned());
                    self.remember(key, &name);
                    Ok(Some((name, Role::Admin)))
                }
                Err(kube::Error::Api(status)) if status.code == 401 => Ok(None),
                Err(err) => Err(from_kube(err, "the token review")),
            }
        })
    }
}
