//! Bench accounts: made through the store directly, before the server under test starts.

use domain::{AccountId, ApiKeyId};
use store::NewApiKey;

/// A bench account's key.
pub(crate) struct BenchKey {
    /// The plaintext key the clients send.
    pub(crate) secret: String,
    pub(crate) account_id: AccountId,
    pub(crate) api_key_id: ApiKeyId,
}

/// Creates `accounts` bench accounts with one key each, through the store directly: the
/// server is not running yet and opens its own store.
pub(crate) async fn create_keys(
    config: &service::Config,
    accounts: usize,
    max_concurrent_jobs: u32,
    credits: i64,
) -> anyhow::Result<Vec<BenchKey>> {
    let store = service::open_store(config).await?;
    let created = async {
        let mut keys = Vec::with_capacity(accounts);
        for n in 0..accounts {
            let secret = domain::ApiKeySecret::generate();
            let (account, key) = store
                .create_api_key(NewApiKey {
                    account_id: None,
                    name: format!("bench-{n}"),
                    email: format!("bench-{n}@reelgate.local"),
                    prefix: secret.prefix.clone(),
                    digest: secret.digest,
                    initial_credits: credits,
                    plan: "bench".into(),
                    max_concurrent_jobs,
                })
                .await?;
            keys.push(BenchKey { secret: secret.plaintext, account_id: account.id, api_key_id: key.id });
        }
        anyhow::Ok(keys)
    }
    .await;
    store.close().await;
    created
}
