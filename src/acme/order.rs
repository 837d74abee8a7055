//! One ACME order for one host name, with `instant-acme`: new order, the challenge of each pending
//! authorization published (here and in the store), ready, poll, finalize with a new key, poll the chain.
//! Whatever happens, the published answers are withdrawn at the end.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy};
use tracing::{debug, info};

use super::challenge::{hex, Challenges, HTTP_01, TLS_ALPN_01};
use super::store::Store;
use super::{AcmeError, Challenge};

/// Time given to the other replicas' watches to learn a challenge answer before the CA is told to check it.
const PROPAGATION: Duration = Duration::from_millis(250);

/// An issued certificate: the chain (leaf first) and its new private key, PEM.
pub(super) struct Issued {
    pub chain: String,
    pub key: String,
}

/// Runs an order for `host`, within `timeout` for the CA's checks and issuance.
pub(super) async fn run(
    account: &Account,
    host: &str,
    preferred: Challenge,
    challenges: &Arc<Challenges>,
    store: &Store,
    timeout: Duration,
) -> Result<Issued, AcmeError> {
    let ids = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    debug!(url = order.url(), "order created");
    let mut published: Vec<(&'static str, String)> = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(AcmeError::Authorization(format!("{other:?}"))),
            }
            let kind = match preferred {
                Challenge::Http01 => ChallengeType::Http01,
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut challenge = authz.challenge(kind).ok_or(AcmeError::NoChallenge(preferred.as_str()))?;
            let key_auth = challenge.key_authorization();
            let (label, id, answer) = match preferred {
                Challenge::Http01 => (HTTP_01, challenge.token.clone(), key_auth.as_str().to_string()),
                Challenge::TlsAlpn01 => (TLS_ALPN_01, host.to_string(), hex(key_auth.digest().as_ref())),
            };
            challenges.publish(label, &id, &answer);
            published.push((label, id.clone()));
            store.put_challenge(label, &id, &answer).await?;
            if store.is_shared() {
                // The other replicas learn the answer through their watch, within milliseconds; the CA may
                // reach any of them as soon as it is told the challenge is ready.
                tokio::time::sleep(PROPAGATION).await;
            }
            challenge.set_ready().await?;
        }
        let policy = RetryPolicy::new().initial_delay(Duration::from_millis(100)).backoff(1.5).timeout(timeout);
        let status = order.poll_ready(&policy).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Authorization(format!("order {status:?}")));
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&policy).await?;
        Ok(Issued { chain, key })
    }
    .await;
    for (label, id) in published {
        challenges.withdraw(label, &id);
        store.remove_challenge(label, &id).await;
    }
    if result.is_ok() {
        info!(host, challenge = preferred.as_str(), "certificate issued");
    }
    result
}
