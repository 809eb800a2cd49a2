//! The admin commands: `keys create|list|disable|revoke`, `credits grant|show`, `migrate`.
//!
//! They write through the same store code as the server (one SQLite transaction per
//! change, ledger row included), so they are safe while `reelgate serve` runs; the
//! server notices key changes within its key-cache TTL.

use anyhow::{bail, Context};
use domain::{AccountId, ApiKeyId, ApiKeySecret, ApiKeyStatus};
use store::{NewApiKey, Store};

use crate::DataArgs;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key (and a new account unless --account is given); prints the key last.
    Create {
        /// Name of the key (and of the new account).
        #[arg(long)]
        name: String,
        /// Credits granted to the new account.
        #[arg(long, default_value_t = 0)]
        credits: i64,
        /// Attach the key to this existing account instead of creating one.
        #[arg(long)]
        account: Option<AccountId>,
        /// Contact e-mail shown as the user in GET /v2/me.
        #[arg(long)]
        email: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Switch a key off (403 "API key is inactive"); `enable` switches it back on.
    Disable {
        /// Key id or its public prefix (afk_xxxxxxxx).
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Switch a disabled key back on.
    Enable {
        /// Key id or its public prefix.
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a key for good (401 "Invalid API key").
    Revoke {
        /// Key id or its public prefix.
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum WebhooksCommand {
    /// Deliver a job's completed or failed webhook again, with a fresh retry schedule
    /// (same `webhook-id`, so receivers that already have it can drop it).
    Replay {
        /// The job.
        job: domain::JobId,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum CreditsCommand {
    /// Add credits to an account (a `grant` ledger row).
    Grant {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        amount: i64,
        /// Reason recorded in the ledger.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Show an account's balance and ledger.
    Show {
        #[arg(long)]
        account: AccountId,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate the layered configuration and print it.
    Check {
        #[command(flatten)]
        data: DataArgs,
    },
}

pub fn config(cmd: ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check { data } = cmd;
    let config = data.load()?;
    let catalog = config.catalog()?;
    // Secrets (MiniMax API keys, the S3 secret access key) print redacted.
    println!("{config:#?}");
    for model in catalog.models() {
        println!("{}: {}", model.id, model.price_table());
    }
    println!("configuration is valid");
    Ok(())
}

async fn open(data: &DataArgs) -> anyhow::Result<(service::Config, std::sync::Arc<dyn Store>)> {
    let config = data.load()?;
    let store = service::open_store(&config).await.context("opening the database")?;
    Ok((config, store))
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create { name, credits, account, email, data } => {
            if credits < 0 {
                bail!("--credits must not be negative");
            }
            if account.is_some() && credits > 0 {
                bail!("--credits applies to a new account; use `reelgate credits grant` for an existing one");
            }
            let (config, store) = open(&data).await?;
            let secret = ApiKeySecret::generate();
            let email = email.unwrap_or_else(|| format!("{}@reelgate.local", slug(&name)));
            let (acct, key) = store
                .create_api_key(NewApiKey {
                    account_id: account,
                    name,
                    email,
                    prefix: secret.prefix.clone(),
                    digest: secret.digest,
                    initial_credits: credits,
                    plan: config.accounts.default_plan.clone(),
                    max_concurrent_jobs: config.accounts.default_max_concurrent_jobs,
                })
                .await?;
            store.close().await;
            println!("account: {} ({}, {} credits)", acct.id, acct.name, acct.credits);
            println!("key id:  {} ({})", key.id, key.prefix);
            println!("Store this key now; reelgate keeps only its SHA-256 digest:");
            println!("{}", secret.plaintext);
        }
        KeysCommand::List { data } => {
            let (_, store) = open(&data).await?;
            let keys = store.list_api_keys().await?;
            store.close().await;
            println!("{:<36}  {:<12}  {:<8}  {:<36}  name", "id", "prefix", "status", "account");
            for k in keys {
                println!("{:<36}  {:<12}  {:<8}  {:<36}  {}", k.id, k.prefix, k.status.as_str(), k.account_id, k.name);
            }
        }
        KeysCommand::Disable { id, data } => set_status(&data, &id, ApiKeyStatus::Disabled).await?,
        KeysCommand::Enable { id, data } => set_status(&data, &id, ApiKeyStatus::Active).await?,
        KeysCommand::Revoke { id, data } => set_status(&data, &id, ApiKeyStatus::Revoked).await?,
    }
    Ok(())
}

async fn set_status(data: &DataArgs, id: &str, status: ApiKeyStatus) -> anyhow::Result<()> {
    let (_, store) = open(data).await?;
    let key_id = match id.parse::<ApiKeyId>() {
        Ok(k) => k,
        Err(_) => {
            let matches: Vec<_> = store.list_api_keys().await?.into_iter().filter(|k| k.prefix == id).collect();
            match matches.as_slice() {
                [one] => one.id,
                [] => bail!("no API key with id or prefix {id:?}"),
                _ => bail!("prefix {id:?} is ambiguous; use the key id"),
            }
        }
    };
    let key = store.set_api_key_status(key_id, status).await?;
    store.close().await;
    println!("key {} ({}) is now {}", key.id, key.prefix, key.status.as_str());
    Ok(())
}

pub async fn webhooks(cmd: WebhooksCommand) -> anyhow::Result<()> {
    match cmd {
        WebhooksCommand::Replay { job, data } => {
            let (_, store) = open(&data).await?;
            let n = store.replay_webhooks(job).await;
            store.close().await;
            match n? {
                0 => bail!("job {job} has no completed or failed webhook event to replay"),
                n => println!("{n} webhook event(s) of job {job} scheduled for delivery now"),
            }
        }
    }
    Ok(())
}

pub async fn credits(cmd: CreditsCommand) -> anyhow::Result<()> {
    match cmd {
        CreditsCommand::Grant { account, amount, note, data } => {
            if amount <= 0 {
                bail!("--amount must be a positive number of credits");
            }
            let (_, store) = open(&data).await?;
            let acct = store.grant_credits(account, amount, note).await?;
            store.close().await;
            println!("account {} now has {} credits", acct.id, acct.credits);
        }
        CreditsCommand::Show { account, data } => {
            let (_, store) = open(&data).await?;
            let acct = store.get_account(account).await?.with_context(|| format!("no account {account}"))?;
            let ledger = store.ledger(account).await?;
            store.close().await;
            println!("account: {} ({})", acct.id, acct.name);
            println!("credits: {}", acct.credits);
            println!("ledger ({} rows, sum {}):", ledger.len(), ledger.iter().map(|e| e.amount).sum::<i64>());
            for e in ledger {
                let job = e.job_id.map(|j| j.to_string()).unwrap_or_default();
                println!(
                    "  #{:<6} {:<6} {:>8}  {}  {}",
                    e.id,
                    e.kind.as_str(),
                    e.amount,
                    job,
                    e.note.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

pub async fn migrate(data: DataArgs) -> anyhow::Result<()> {
    let config = data.load()?;
    let applied = service::migrate(&config).await?;
    if applied.is_empty() {
        println!("database is up to date");
    }
    for name in applied {
        println!("applied {name}");
    }
    Ok(())
}

fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "key".into()
    } else {
        s
    }
}
