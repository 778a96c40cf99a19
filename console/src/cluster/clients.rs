//! Kubernetes clients that act as the caller: the cluster's address and trust come from the
//! console's own configuration, the credentials from the bearer token the caller presented and
//! nothing else, so the API server authenticates, authorises and audits the person, not the
//! console. Clients are kept a short while per token, so a page of requests shares connections.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::{Client, Config, config::AuthInfo};

use crate::{problem::ApiError, tokens::digest_hex};

/// How long a caller's client is reused; a revoked Kubernetes token is refused by the API
/// server on the next call regardless, this only saves connection set-up.
const KEEP: Duration = Duration::from_secs(60);
/// At most this many callers' clients are kept.
const MAX_KEPT: usize = 256;

pub struct Clients {
    /// The cluster without credentials.
    cluster: Config,
    /// The console's own identity: for recording Events and checking the API server answers.
    own: Client,
    kept: Mutex<HashMap<String, (Client, Instant)>>,
}

impl Clients {
    /// `config` is the console's own (in-cluster or kubeconfig); callers' clients keep its
    /// address and trust and drop its credentials.
    pub fn new(config: Config) -> Result<Self, kube::Error> {
        let own = Client::try_from(config.clone())?;
        let mut cluster = config;
        cluster.auth_info = AuthInfo::default();
        Ok(Self {
            cluster,
            own,
            kept: Mutex::new(HashMap::new()),
        })
    }

    pub fn own(&self) -> Client {
        self.own.clone()
    }

    /// A client that presents `bearer` and no other credential.
    pub fn for_token(&self, bearer: &str) -> Result<Client, ApiError> {
        let key = digest_hex(bearer);
        let now = Instant::now();
        let mut kept = self
            .kept
            .lock()
            .map_err(|_| ApiError::internal("client cache lock poisoned"))?;
        if let Some((client, at)) = kept.get(&key)
            && now.duration_since(*at) < KEEP
        {
            return Ok(client.clone());
        }
        let mut config = self.cluster.clone();
        config.auth_info = AuthInfo {
            token: Some(bearer.to_owned().into()),
            ..AuthInfo::default()
        };
        let client = Client::try_from(config).map_err(|e| ApiError::Kubernetes(e.to_string()))?;
        kept.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(key, (client.clone(), now));
        Ok(client)
    }
}
