//! The admin commands: `admin tokens create|list|revoke`, `keys create|list|disable|revoke`,
//! `credits grant|show`, `webhooks replay`, `migrate`, `config check`.
//!
//! Every change goes through the same functions as the admin API (`service::admin`), so
//! it is checked the same way and lands in the audit log (as `cli:<user>`) in the same
//! transaction. They open the store themselves, so they work with or without a running
//! server, and are safe while one runs; the server notices key changes within its
//! key-cache TTL.

use anyhow::{bail, Context};
use domain::{AccountId, ApiKeyStatus};
use service::admin::{self as actions, KeyInput};
use store::{AuditContext, Store};

use crate::DataArgs;

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Admin tokens for the admin API and the console.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(clap::Subcommand)]
pub enum TokensCommand {
    /// Make an admin token; prints it once, alone on the last line (only its digest is kept).
    Create {
        /// A label saying who or what uses the token (shown in the audit log).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List admin tokens (never their secrets).
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke an admin token for good.
    Revoke {
        /// Token id or its public prefix (rga_xxxxxxxx).
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

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
            let (config, store) = open(&data).await?;
            let input = KeyInput { account_id: account, name, email, credits };
            let made = actions::create_key(store.as_ref(), &config.accounts, input, cli_actor()).await;
            store.close().await;
            let made = made?;
            println!("account: {} ({}, {} credits)", made.account.id, made.account.name, made.account.credits);
            println!("key id:  {} ({})", made.key.id, made.key.prefix);
            println!("Store this key now; reelgate keeps only its SHA-256 digest:");
            println!("{}", made.secret);
        }
        KeysCommand::List { data } => {
            let (_, store) = open(&data).await?;
            let keys = store.list_api_keys(None).await?;
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
    let changed = async {
        let key_id = actions::resolve_key(store.as_ref(), id).await?;
        actions::set_key_status(store.as_ref(), key_id, status, cli_actor()).await
    }
    .await;
    store.close().await;
    let key = changed?;
    println!("key {} ({}) is now {}", key.id, key.prefix, key.status.as_str());
    Ok(())
}

/// Who the audit log says made a change from the command line.
fn cli_actor() -> AuditContext {
    AuditContext::cli(std::env::var("USER").ok().as_deref())
}

pub async fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    let AdminCommand::Tokens(cmd) = cmd;
    match cmd {
        TokensCommand::Create { name, data } => {
            let (_, store) = open(&data).await?;
            let made = actions::create_token(store.as_ref(), &name, cli_actor()).await;
            store.close().await;
            let made = made?;
            println!("admin token id: {} ({}, {})", made.token.id, made.token.prefix, made.token.name);
            println!("Store this token now; reelgate keeps only its SHA-256 digest:");
            println!("{}", made.secret);
        }
        TokensCommand::List { data } => {
            let (_, store) = open(&data).await?;
            let tokens = actions::list_tokens(store.as_ref()).await;
            store.close().await;
            println!("{:<36}  {:<12}  {:<8}  {:<24}  name", "id", "prefix", "status", "created");
            for t in tokens? {
                let status = if t.revoked_at_ms.is_some() { "revoked" } else { "active" };
                let created = service::api::dto::timestamp(t.created_at_ms);
                println!("{:<36}  {:<12}  {:<8}  {:<24}  {}", t.id, t.prefix, status, created, t.name);
            }
        }
        TokensCommand::Revoke { id, data } => {
            let (_, store) = open(&data).await?;
            let revoked = actions::revoke_token(store.as_ref(), &id, cli_actor()).await;
            store.close().await;
            let token = revoked?;
            println!("admin token {} ({}) is revoked", token.id, token.prefix);
        }
    }
    Ok(())
}

pub async fn webhooks(cmd: WebhooksCommand) -> anyhow::Result<()> {
    match cmd {
        WebhooksCommand::Replay { job, data } => {
            let (_, store) = open(&data).await?;
            let n = actions::replay_webhooks(store.as_ref(), job, cli_actor()).await;
            store.close().await;
            println!("{} webhook event(s) of job {job} scheduled for delivery now", n?);
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
            let granted = actions::adjust_credits(store.as_ref(), account, amount, note, None, cli_actor()).await;
            store.close().await;
            let granted = granted?;
            println!("account {} now has {} credits", granted.account.id, granted.account.credits);
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
