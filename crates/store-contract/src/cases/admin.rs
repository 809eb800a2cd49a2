//! The operator's interface: every admin write with its audit row (and none for a write
//! that changed nothing), tokens, accounts, keys, credit adjustments, the paged reads
//! (accounts, ledger, audit log, jobs across accounts), job timelines, usage figures,
//! upstream activity and holds, and the overview.

use std::collections::BTreeMap;
use std::time::Duration;

use domain::{AccountId, ApiKeyId, ApiKeySecret, ApiKeyStatus, JobId, JobStatus, KeyDigest, ModelId, Stage};
use serde_json::json;
use store::{
    snapshot, Account, AccountPatch, AccountQuery, AdminJobQuery, AdminToken, AdminWrite, AdminWritten, AuditContext,
    AuditRecord, CancelOutcome, CreditAdjustment, CreditOutcome, JobChange, JobCursor, JobRecord, LedgerKind,
    NewAccount, NewApiKey, Overview, StageChange, StoreError, Transition, UpstreamActivity, UpstreamHold, UsageBucket,
    UsageGroup, UsageQuery, UsageRow,
};

use crate::support::*;

/// The command line as user `ops`: the actor of most writes below.
fn ops() -> AuditContext {
    AuditContext::cli(Some("ops"))
}

/// Applies a write that must succeed.
async fn admin(db: &Db, write: AdminWrite) -> AdminWritten {
    db.admin_write(write, ops()).await.expect("admin write")
}

/// Every audit row, newest first.
async fn audit_rows(db: &Db) -> Vec<AuditRecord> {
    db.audit_log(None, 10_000).await.expect("read the audit log")
}

/// The newest audit row.
async fn last_audit(db: &Db) -> AuditRecord {
    audit_rows(db).await.into_iter().next().expect("an audit row")
}

/// Asserts the newest audit row's action, target and before/after, written by `ops()`.
async fn assert_audited(
    db: &Db,
    action: &str,
    target: String,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) {
    let row = last_audit(db).await;
    assert_eq!((row.action.as_str(), row.target.as_str()), (action, target.as_str()), "{row:?}");
    assert_eq!((row.before.as_ref(), row.after.as_ref()), (before.as_ref(), after.as_ref()), "{action}");
    assert_eq!((row.token_id.as_deref(), row.actor.as_str(), row.request_id.as_deref()), (None, "cli:ops", None));
    assert!(row.created_at_ms <= now_ms() && row.created_at_ms > now_ms() - 60_000, "written now: {row:?}");
}

fn new_account(name: &str, email: Option<&str>, initial_credits: i64) -> NewAccount {
    NewAccount {
        name: name.into(),
        email: email.map(Into::into),
        plan: "pro".into(),
        max_concurrent_jobs: 4,
        initial_credits,
    }
}

async fn create_account(db: &Db, name: &str, email: Option<&str>, initial_credits: i64) -> Account {
    match admin(db, AdminWrite::CreateAccount(new_account(name, email, initial_credits))).await {
        AdminWritten::Account(account) => account,
        other => panic!("expected an account, got {other:?}"),
    }
}

fn new_key(account_id: Option<AccountId>, initial_credits: i64) -> NewApiKey {
    let secret = ApiKeySecret::generate();
    NewApiKey {
        account_id,
        name: "console".into(),
        email: "console@example.com".into(),
        prefix: secret.prefix,
        digest: secret.digest,
        initial_credits,
        plan: "pro".into(),
        max_concurrent_jobs: 2,
    }
}

fn adjustment(account_id: AccountId, amount: i64, note: Option<&str>, key: Option<&str>) -> AdminWrite {
    AdminWrite::AdjustCredits(CreditAdjustment {
        account_id,
        amount,
        note: note.map(Into::into),
        idempotency_key: key.map(Into::into),
    })
}

async fn adjust(db: &Db, account_id: AccountId, amount: i64, note: Option<&str>, key: Option<&str>) -> CreditOutcome {
    match admin(db, adjustment(account_id, amount, note, key)).await {
        AdminWritten::Credits(outcome) => outcome,
        other => panic!("expected a credit outcome, got {other:?}"),
    }
}

async fn set_key_status(
    db: &Db,
    id: ApiKeyId,
    status: ApiKeyStatus,
) -> Result<(Account, store::ApiKeyRecord), StoreError> {
    match db.admin_write(AdminWrite::SetKeyStatus { id, status }, ops()).await? {
        AdminWritten::Key(account, key) => Ok((account, key)),
        other => panic!("expected a key, got {other:?}"),
    }
}

async fn job_record(db: &Db, account_id: AccountId, id: JobId) -> JobRecord {
    (*db.get_job(account_id, id).await.expect("read the job").expect("the job exists")).clone()
}

/// Tokens are created, found by digest, listed and revoked once, each with its audit
/// row, which names the token used and the request when there is one.
pub async fn admin_tokens_are_created_found_and_revoked_with_audit_rows(db: Db) {
    assert_eq!(AuditContext::cli(Some("root")).actor, "cli:root");
    assert_eq!(AuditContext::cli(None).actor, "cli");
    let digest = KeyDigest([7; 32]);
    let create = |name: &str, digest: KeyDigest| AdminWrite::CreateToken {
        name: name.into(),
        prefix: format!("rga_{:0>8}", name),
        digest,
    };
    let AdminWritten::Token(first) = admin(&db, create("ci", digest)).await else { panic!("a token") };
    assert_eq!(
        (first.name.as_str(), first.prefix.as_str(), first.digest, first.revoked_at_ms),
        ("ci", "rga_000000ci", digest, None)
    );
    // A UUID v4, as text.
    assert_eq!((first.id.len(), first.id.as_bytes()[14]), (36, b'4'), "{}", first.id);
    assert!(first.created_at_ms <= now_ms());
    assert_audited(&db, "token.create", format!("token:{}", first.id), None, Some(snapshot::token(&first))).await;

    // A change made with a token names it, and the request.
    let by_token =
        AuditContext { token_id: Some(first.id.clone()), actor: "ci".into(), request_id: Some("req-1".into()) };
    let AdminWritten::Token(second) = db.admin_write(create("deploy", KeyDigest([8; 32])), by_token).await.unwrap()
    else {
        panic!("a token")
    };
    let row = last_audit(&db).await;
    assert_eq!(
        (row.token_id.as_deref(), row.actor.as_str(), row.request_id.as_deref(), row.action.as_str()),
        (Some(first.id.as_str()), "ci", Some("req-1"), "token.create")
    );
    assert_eq!(row.target, format!("token:{}", second.id));

    // A digest is unique; the refused write leaves no audit row.
    let duplicate = db.admin_write(create("again", digest), ops()).await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))), "{duplicate:?}");
    assert_eq!(audit_rows(&db).await.len(), 2);

    assert_eq!(db.find_admin_token(&digest).await.unwrap(), Some(first.clone()));
    assert_eq!(db.find_admin_token(&KeyDigest([9; 32])).await.unwrap(), None);
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort_by_key(|t| (t.created_at_ms, t.id.clone()));
    assert_eq!(db.list_admin_tokens().await.unwrap(), expected);

    let AdminWritten::Token(revoked) = admin(&db, AdminWrite::RevokeToken { id: first.id.clone() }).await else {
        panic!("a token")
    };
    assert!(revoked.revoked_at_ms.is_some_and(|t| t >= first.created_at_ms && t <= now_ms()));
    assert_eq!(revoked, AdminToken { revoked_at_ms: revoked.revoked_at_ms, ..first.clone() });
    assert_audited(
        &db,
        "token.revoke",
        format!("token:{}", first.id),
        Some(snapshot::token(&first)),
        Some(snapshot::token(&revoked)),
    )
    .await;
    // Revoked tokens stay findable (the caller refuses them), and revocation happens once.
    assert_eq!(db.find_admin_token(&digest).await.unwrap(), Some(revoked.clone()));
    let again = db.admin_write(AdminWrite::RevokeToken { id: first.id.clone() }, ops()).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let unknown = db.admin_write(AdminWrite::RevokeToken { id: AccountId::new().to_string() }, ops()).await;
    assert!(matches!(unknown, Err(StoreError::NotFound(_))), "{unknown:?}");
    let actions: Vec<String> = audit_rows(&db).await.into_iter().map(|r| r.action).collect();
    assert_eq!(actions, ["token.revoke", "token.create", "token.create"]);
}

/// Accounts are created (with their initial grant) and changed, each with its audit
/// row; refused changes write nothing.
pub async fn accounts_are_created_and_updated_with_audit_rows(db: Db) {
    let acme = create_account(&db, "Acme", Some("ops@acme.test"), 50).await;
    assert_eq!(
        (acme.name.as_str(), acme.email.as_deref(), acme.plan.as_str(), acme.max_concurrent_jobs),
        ("Acme", Some("ops@acme.test"), "pro", 4)
    );
    assert_eq!((acme.credits, acme.disabled), (50, false));
    assert_eq!(get_account(&db, acme.id).await, acme);
    assert_audited(&db, "account.create", format!("account:{}", acme.id), None, Some(snapshot::account(&acme))).await;
    let ledger = db.ledger(acme.id).await.unwrap();
    let rows: Vec<_> =
        ledger.iter().map(|e| (e.kind, e.amount, e.job_id, e.note.as_deref(), e.idempotency_key.as_deref())).collect();
    assert_eq!(rows, [(LedgerKind::Grant, 50, None, Some("initial credits"), None)]);

    let empty = create_account(&db, "Empty", None, 0).await;
    assert_eq!((empty.credits, empty.email.as_deref()), (0, None));
    assert!(db.ledger(empty.id).await.unwrap().is_empty(), "no grant without initial credits");

    let patch = AccountPatch {
        name: Some("Acme Ltd".into()),
        email: Some(Some("billing@acme.test".into())),
        plan: Some("scale".into()),
        max_concurrent_jobs: Some(9),
        disabled: Some(true),
    };
    let AdminWritten::Account(changed) = admin(&db, AdminWrite::UpdateAccount { id: acme.id, patch }).await else {
        panic!("an account")
    };
    let expected = Account {
        name: "Acme Ltd".into(),
        email: Some("billing@acme.test".into()),
        plan: "scale".into(),
        max_concurrent_jobs: 9,
        disabled: true,
        ..acme.clone()
    };
    assert_eq!(changed, expected);
    assert_eq!(get_account(&db, acme.id).await, expected);
    assert_audited(
        &db,
        "account.update",
        format!("account:{}", acme.id),
        Some(snapshot::account(&acme)),
        Some(snapshot::account(&changed)),
    )
    .await;

    // Fields left out stay; `Some(None)` clears the e-mail.
    let patch = AccountPatch { email: Some(None), disabled: Some(false), ..AccountPatch::default() };
    let AdminWritten::Account(cleared) = admin(&db, AdminWrite::UpdateAccount { id: acme.id, patch }).await else {
        panic!("an account")
    };
    assert_eq!(cleared, Account { email: None, disabled: false, ..expected.clone() });

    let audited = audit_rows(&db).await.len();
    let zero = AccountPatch { max_concurrent_jobs: Some(0), ..AccountPatch::default() };
    let refused = db.admin_write(AdminWrite::UpdateAccount { id: acme.id, patch: zero }, ops()).await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    let patch = AccountPatch { name: Some("ghost".into()), ..AccountPatch::default() };
    let missing = db.admin_write(AdminWrite::UpdateAccount { id: AccountId::new(), patch }, ops()).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
    assert_eq!(audit_rows(&db).await.len(), audited, "refused writes leave no audit row");
    assert_eq!(get_account(&db, acme.id).await, cleared);
    assert_balance(&db, acme.id, 50).await;
}

/// Keys are created and switched through the admin interface with their audit rows;
/// a disabled account shows on every way a key is read.
pub async fn keys_are_created_and_switched_with_audit_rows(db: Db) {
    let owner = create_account(&db, "Keys", None, 0).await;
    let AdminWritten::Key(account, key) = admin(&db, AdminWrite::CreateKey(new_key(Some(owner.id), 0))).await else {
        panic!("a key")
    };
    assert_eq!(account, owner);
    assert_eq!(
        (key.account_id, key.status, key.account_disabled, key.name.as_str()),
        (owner.id, ApiKeyStatus::Active, false, "console")
    );
    assert_audited(&db, "key.create", format!("key:{}", key.id), None, Some(snapshot::key(&key))).await;

    // Without an account, one is made, as create_api_key does.
    let AdminWritten::Key(fresh, other) = admin(&db, AdminWrite::CreateKey(new_key(None, 5))).await else {
        panic!("a key")
    };
    assert_ne!(fresh.id, owner.id);
    assert_eq!((fresh.credits, other.account_id), (5, fresh.id));
    assert_balance(&db, fresh.id, 5).await;
    assert_eq!(db.list_api_keys(Some(owner.id)).await.unwrap(), vec![key.clone()]);
    assert_eq!(db.list_api_keys(Some(fresh.id)).await.unwrap(), vec![other.clone()]);
    assert_eq!(db.list_api_keys(None).await.unwrap().len(), 2);
    assert!(db.list_api_keys(Some(AccountId::new())).await.unwrap().is_empty());

    let audited = audit_rows(&db).await.len();
    let unknown = db.admin_write(AdminWrite::CreateKey(new_key(Some(AccountId::new()), 0)), ops()).await;
    assert!(matches!(unknown, Err(StoreError::NotFound(_))), "{unknown:?}");
    assert_eq!(audit_rows(&db).await.len(), audited);

    // Disabling the account shows on its keys, whichever way they are read.
    let disable = |disabled| AdminWrite::UpdateAccount {
        id: owner.id,
        patch: AccountPatch { disabled: Some(disabled), ..AccountPatch::default() },
    };
    admin(&db, disable(true)).await;
    let found = db.find_api_key(&key.digest).await.unwrap().unwrap();
    assert_eq!((found.status, found.account_disabled), (ApiKeyStatus::Active, true));
    assert!(db.list_api_keys(Some(owner.id)).await.unwrap()[0].account_disabled);
    assert!(!db.find_api_key(&other.digest).await.unwrap().unwrap().account_disabled, "other accounts are not");
    let (_, added) = db.create_api_key(new_key(Some(owner.id), 0)).await.unwrap();
    assert!(added.account_disabled);
    assert!(db.set_api_key_status(added.id, ApiKeyStatus::Disabled).await.unwrap().account_disabled);
    admin(&db, disable(false)).await;
    assert!(!db.find_api_key(&key.digest).await.unwrap().unwrap().account_disabled);

    // Status changes, named by the new status.
    let mut previous = key.clone();
    for (status, action) in [
        (ApiKeyStatus::Disabled, "key.disable"),
        (ApiKeyStatus::Active, "key.enable"),
        (ApiKeyStatus::Revoked, "key.revoke"),
    ] {
        let (account, changed) = set_key_status(&db, key.id, status).await.unwrap();
        assert_eq!(account.id, owner.id);
        assert_eq!(changed, store::ApiKeyRecord { status, ..key.clone() });
        assert_eq!(db.find_api_key(&key.digest).await.unwrap().unwrap().status, status);
        assert_audited(
            &db,
            action,
            format!("key:{}", key.id),
            Some(snapshot::key(&previous)),
            Some(snapshot::key(&changed)),
        )
        .await;
        previous = changed;
    }
    let audited = audit_rows(&db).await.len();
    let back = set_key_status(&db, key.id, ApiKeyStatus::Active).await;
    assert!(matches!(back, Err(StoreError::Conflict(_))), "{back:?}");
    let missing = set_key_status(&db, ApiKeyId::new(), ApiKeyStatus::Disabled).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
    assert_eq!(audit_rows(&db).await.len(), audited, "refused writes leave no audit row");
}

/// Grants and deductions write one ledger row and one audit row each; a keyed
/// adjustment applies once; a deduction never takes the balance below zero.
pub async fn credit_adjustments_grant_deduct_and_replay_once(db: Db) {
    let acct = create_account(&db, "Billing", None, 10).await;
    let audited = audit_rows(&db).await.len();

    let CreditOutcome::Applied(granted, entry) = adjust(&db, acct.id, 30, Some("invoice 7"), Some("inv-7")).await
    else {
        panic!("applied")
    };
    assert_eq!(granted, Account { credits: 40, ..acct.clone() });
    assert_eq!(
        (
            entry.account_id,
            entry.kind,
            entry.amount,
            entry.job_id,
            entry.note.as_deref(),
            entry.idempotency_key.as_deref()
        ),
        (acct.id, LedgerKind::Grant, 30, None, Some("invoice 7"), Some("inv-7"))
    );
    assert_eq!(db.ledger(acct.id).await.unwrap().last(), Some(&entry));
    assert_audited(
        &db,
        "credits.adjust",
        format!("account:{}", acct.id),
        Some(snapshot::account(&acct)),
        Some(snapshot::account(&granted)),
    )
    .await;

    // The billing system retries: nothing is written, the original row comes back.
    let replayed = adjust(&db, acct.id, 30, Some("invoice 7"), Some("inv-7")).await;
    assert_eq!(replayed, CreditOutcome::Replayed(granted.clone(), entry.clone()));
    for (amount, note) in [(31, Some("invoice 7")), (30, Some("invoice 8")), (30, None), (-30, Some("invoice 7"))] {
        let mismatch = adjust(&db, acct.id, amount, note, Some("inv-7")).await;
        assert_eq!(mismatch, CreditOutcome::IdempotencyMismatch, "{amount} {note:?}");
    }
    assert_eq!(audit_rows(&db).await.len(), audited + 1, "replays and mismatches are not audited");
    assert_balance(&db, acct.id, 40).await;

    let CreditOutcome::Applied(deducted, entry) = adjust(&db, acct.id, -15, Some("chargeback"), None).await else {
        panic!("applied")
    };
    assert_eq!(deducted.credits, 25);
    assert_eq!(
        (entry.kind, entry.amount, entry.job_id, entry.note.as_deref(), entry.idempotency_key),
        (LedgerKind::Deduct, -15, None, Some("chargeback"), None)
    );
    assert_audited(
        &db,
        "credits.adjust",
        format!("account:{}", acct.id),
        Some(snapshot::account(&granted)),
        Some(snapshot::account(&deducted)),
    )
    .await;

    // Below zero is refused, leaving balance, ledger, audit log and the key untouched.
    let rows = db.ledger(acct.id).await.unwrap();
    let audited = audit_rows(&db).await.len();
    assert_eq!(adjust(&db, acct.id, -26, None, Some("too-much")).await, CreditOutcome::Insufficient { available: 25 });
    assert_eq!(adjust(&db, acct.id, -26, None, None).await, CreditOutcome::Insufficient { available: 25 });
    assert_eq!(db.ledger(acct.id).await.unwrap(), rows);
    assert_eq!(audit_rows(&db).await.len(), audited);
    assert_balance(&db, acct.id, 25).await;
    // Exactly the balance may go, and the refused key is still free.
    let CreditOutcome::Applied(emptied, _) = adjust(&db, acct.id, -25, None, Some("too-much")).await else {
        panic!("applied")
    };
    assert_eq!(emptied.credits, 0);
    let again = adjust(&db, acct.id, -25, None, Some("too-much")).await;
    assert!(matches!(again, CreditOutcome::Replayed(ref a, ref e) if a.credits == 0 && e.amount == -25), "{again:?}");

    let zero = db.admin_write(adjustment(acct.id, 0, None, None), ops()).await;
    assert!(matches!(zero, Err(StoreError::Conflict(_))), "{zero:?}");
    let missing = db.admin_write(adjustment(AccountId::new(), 5, None, Some("x")), ops()).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");

    // A key belongs to one account: another account's billing may use it too.
    let other = create_account(&db, "Other", None, 0).await;
    let CreditOutcome::Applied(other_now, _) = adjust(&db, other.id, 30, Some("invoice 7"), Some("inv-7")).await else {
        panic!("applied")
    };
    assert_eq!(other_now.credits, 30);
    assert_balance(&db, acct.id, 0).await;
    assert_balance(&db, other.id, 30).await;
    let kinds: Vec<_> = db.ledger(acct.id).await.unwrap().iter().map(|e| (e.kind, e.amount)).collect();
    assert_eq!(
        kinds,
        [(LedgerKind::Grant, 10), (LedgerKind::Grant, 30), (LedgerKind::Deduct, -15), (LedgerKind::Deduct, -25)]
    );
}

/// Racing retries of one keyed grant apply it once; racing deductions never overdraw.
pub async fn racing_keyed_grants_apply_once_and_deductions_never_overdraw(db: Db) {
    let acct = create_account(&db, "Race", None, 0).await;
    let outcomes =
        concurrently(12, |_| {
            let db = db.clone();
            async move {
                db.admin_write(adjustment(acct.id, 20, Some("invoice"), Some("inv-1")), ops()).await.expect("adjust")
            }
        })
        .await;
    let mut applied = Vec::new();
    let mut replayed = Vec::new();
    for o in outcomes {
        match o {
            AdminWritten::Credits(CreditOutcome::Applied(_, e)) => applied.push(e),
            AdminWritten::Credits(CreditOutcome::Replayed(a, e)) => {
                assert_eq!(a.credits, 20);
                replayed.push(e)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((applied.len(), replayed.len()), (1, 11));
    assert!(replayed.iter().all(|e| *e == applied[0]), "every retry gets the one row");
    assert_balance(&db, acct.id, 20).await;
    assert_eq!(ledger_rows(&db, acct.id, LedgerKind::Grant).await, 1);

    let outcomes = concurrently(10, |_| {
        let db = db.clone();
        async move { db.admin_write(adjustment(acct.id, -3, None, None), ops()).await.expect("adjust") }
    })
    .await;
    let taken = outcomes.iter().filter(|o| matches!(o, AdminWritten::Credits(CreditOutcome::Applied(..)))).count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, AdminWritten::Credits(CreditOutcome::Insufficient { available: 2 })))
        .count();
    assert_eq!((taken, refused), (6, 4), "{outcomes:?}");
    assert_balance(&db, acct.id, 2).await;
    let adjusts = audit_rows(&db).await.iter().filter(|r| r.action == "credits.adjust").count();
    assert_eq!(adjusts, 7, "one audit row per applied adjustment");
}

/// An admin cancel refunds like the account's own cancel and is announced; a webhook
/// replay schedules the final events again; both are audited only when they did something.
pub async fn admin_cancels_and_webhook_replays_write_audit_rows(db: Db) {
    let key = account(&*db, 20, 5).await;
    let id = submit(&*db, with_webhook(job(&key, 4), None)).await;
    let mut changes = db.job_changes();
    let AdminWritten::Cancel(CancelOutcome::Cancelled(cancelled)) = admin(&db, AdminWrite::CancelJob { id }).await
    else {
        panic!("a queued job is cancellable")
    };
    assert_eq!(
        (cancelled.id, cancelled.status, cancelled.credit_cost, cancelled.webhook_status),
        (id, JobStatus::Cancelled, 0, None)
    );
    let announced = tokio::time::timeout(Duration::from_secs(1), changes.recv()).await.expect("announced").unwrap();
    assert_eq!(announced, JobChange { account_id: key.account_id, job_id: id });
    assert_eq!(job_record(&db, key.account_id, id).await.status, JobStatus::Cancelled);
    assert_audited(
        &db,
        "job.cancel",
        format!("job:{id}"),
        Some(snapshot::job(JobStatus::Queued, 4)),
        Some(snapshot::job(JobStatus::Cancelled, 0)),
    )
    .await;
    assert_balance(&db, key.account_id, 20).await;
    let refund = db.ledger(key.account_id).await.unwrap().pop().unwrap();
    assert_eq!((refund.kind, refund.amount, refund.job_id), (LedgerKind::Refund, 4, Some(id)));

    let audited = audit_rows(&db).await.len();
    let again = admin(&db, AdminWrite::CancelJob { id }).await;
    assert!(matches!(again, AdminWritten::Cancel(CancelOutcome::NotCancellable(JobStatus::Cancelled))), "{again:?}");
    let missing = admin(&db, AdminWrite::CancelJob { id: JobId::new() }).await;
    assert!(matches!(missing, AdminWritten::Cancel(CancelOutcome::NotFound)), "{missing:?}");
    let running = submit(&*db, job(&key, 1)).await;
    claim_some(&db, 1).await;
    let late = admin(&db, AdminWrite::CancelJob { id: running }).await;
    assert!(matches!(late, AdminWritten::Cancel(CancelOutcome::NotCancellable(JobStatus::Processing))), "{late:?}");
    assert_eq!(audit_rows(&db).await.len(), audited, "nothing cancelled, nothing audited");
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Refund).await, 1);

    let done = submit(&*db, with_webhook(job(&key, 5), Some(&["completed"]))).await;
    complete(&db, done).await;
    let replayed = admin(&db, AdminWrite::ReplayWebhooks { id: done }).await;
    assert!(matches!(replayed, AdminWritten::Replayed(1)), "{replayed:?}");
    assert_audited(&db, "job.webhooks.replay", format!("job:{done}"), None, Some(json!({"events": 1}))).await;
    let audited = audit_rows(&db).await.len();
    let quiet = submit(&*db, job(&key, 1)).await;
    assert!(matches!(admin(&db, AdminWrite::ReplayWebhooks { id: quiet }).await, AdminWritten::Replayed(0)));
    assert!(matches!(admin(&db, AdminWrite::ReplayWebhooks { id: JobId::new() }).await, AdminWritten::Replayed(0)));
    assert_eq!(audit_rows(&db).await.len(), audited, "nothing replayed, nothing audited");
}

/// Holds are made, changed, listed while they last and released, each audited; a
/// release of nothing writes nothing.
pub async fn upstream_holds_are_made_listed_and_released(db: Db) {
    let now = now_ms();
    let hold = |name: &str, until_ms: i64, reason: &str| UpstreamHold {
        name: name.into(),
        until_ms,
        reason: reason.into(),
        created_at_ms: now,
    };
    assert!(db.upstream_holds(now).await.unwrap().is_empty());
    let b = hold("mm-b", now + 60_000, "quota");
    let AdminWritten::Upstream(Some(made)) = admin(&db, AdminWrite::HoldUpstream(b.clone())).await else {
        panic!("a hold")
    };
    assert_eq!(made, b);
    assert_audited(&db, "upstream.hold", "upstream:mm-b".into(), None, Some(snapshot::hold(&b))).await;
    let a = hold("mm-a", now + 120_000, "429s");
    admin(&db, AdminWrite::HoldUpstream(a.clone())).await;
    admin(&db, AdminWrite::HoldUpstream(hold("mm-c", now - 1, "over"))).await;
    assert_eq!(db.upstream_holds(now).await.unwrap(), vec![a.clone(), b.clone()], "lasting holds, by name");
    assert_eq!(db.upstream_holds(now + 90_000).await.unwrap(), vec![a.clone()]);

    // Holding again replaces the hold.
    let longer = hold("mm-b", now + 600_000, "still quota");
    admin(&db, AdminWrite::HoldUpstream(longer.clone())).await;
    assert_audited(
        &db,
        "upstream.hold",
        "upstream:mm-b".into(),
        Some(snapshot::hold(&b)),
        Some(snapshot::hold(&longer)),
    )
    .await;
    assert_eq!(db.upstream_holds(now + 200_000).await.unwrap(), vec![longer.clone()]);

    let released = admin(&db, AdminWrite::ReleaseUpstream { name: "mm-b".into() }).await;
    assert!(matches!(released, AdminWritten::Upstream(Some(ref h)) if *h == longer), "{released:?}");
    assert_audited(&db, "upstream.release", "upstream:mm-b".into(), Some(snapshot::hold(&longer)), None).await;
    let audited = audit_rows(&db).await.len();
    // mm-c's hold ran out: releasing it releases nothing.
    for name in ["mm-b", "mm-unknown", "mm-c"] {
        let nothing = admin(&db, AdminWrite::ReleaseUpstream { name: name.into() }).await;
        assert!(matches!(nothing, AdminWritten::Upstream(None)), "{name}: {nothing:?}");
    }
    assert_eq!(audit_rows(&db).await.len(), audited, "nothing released, nothing audited");
    assert_eq!(db.upstream_holds(now).await.unwrap(), vec![a]);
}

fn steps(timeline: &[StageChange]) -> Vec<(Option<Stage>, Stage, Option<&str>)> {
    timeline.iter().map(|c| (c.from, c.to, c.note.as_deref())).collect()
}

/// A job's timeline starts with its creation and has one entry per stage change, with
/// the upstream, the MiniMax task or the failure reason as the note.
pub async fn a_jobs_timeline_follows_its_stage_changes(db: Db) {
    let key = account(&*db, 100, 5).await;
    let id = submit(&*db, job(&key, 5)).await;
    let created = job_record(&db, key.account_id, id).await.created_at_ms;
    let start = StageChange { at_ms: created, from: None, to: Stage::Queued, note: None };
    assert_eq!(db.job_timeline(id).await.unwrap(), vec![start.clone()]);

    let claimed = claim_some(&db, 1).await;
    assert_eq!(ids(&claimed), vec![id]);
    let mut submitted =
        Transition::new(id, Stage::Submitting, Stage::Running).if_due_at(claimed[0].job.due_at_ms).due_at(now_ms() + 1);
    submitted.upstream_task_id = Some("task-9".into());
    advance(&db, submitted).await;
    // A poll is not a stage change.
    advance(&db, Transition::new(id, Stage::Running, Stage::Running).progress(50)).await;
    advance(&db, Transition::new(id, Stage::Running, Stage::Downloading).progress(90)).await;
    let mut done = Transition::new(id, Stage::Downloading, Stage::Completed).progress(100);
    done.result = Some(json!({"videoUrl": "https://cdn.example.com/t.mp4"}));
    advance(&db, done).await;
    let timeline = db.job_timeline(id).await.unwrap();
    assert_eq!(
        steps(&timeline),
        [
            (None, Stage::Queued, None),
            (Some(Stage::Queued), Stage::Submitting, Some("upstream a")),
            (Some(Stage::Submitting), Stage::Running, Some("MiniMax task task-9")),
            (Some(Stage::Running), Stage::Downloading, None),
            (Some(Stage::Downloading), Stage::Completed, None),
        ]
    );
    assert_eq!(timeline[0], start);
    assert!(timeline.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "{timeline:?}");
    assert!(timeline.last().unwrap().at_ms <= now_ms());

    // A requeue and a failure; the failure's reason is the note.
    let other = submit(&*db, job(&key, 5)).await;
    claim_some(&db, 1).await;
    advance(&db, Transition::new(other, Stage::Submitting, Stage::Queued).due_at(now_ms() - 1)).await;
    advance(&db, Transition::new(other, Stage::Queued, Stage::Failed).error("upstream refused the prompt")).await;
    assert_eq!(
        steps(&db.job_timeline(other).await.unwrap()),
        [
            (None, Stage::Queued, None),
            (Some(Stage::Queued), Stage::Submitting, Some("upstream a")),
            (Some(Stage::Submitting), Stage::Queued, None),
            (Some(Stage::Queued), Stage::Failed, Some("upstream refused the prompt")),
        ]
    );

    // Cancels, the account's own and an operator's.
    let own = submit(&*db, job(&key, 1)).await;
    db.cancel_job(key.account_id, own).await.unwrap();
    let by_operator = submit(&*db, job(&key, 1)).await;
    admin(&db, AdminWrite::CancelJob { id: by_operator }).await;
    for cancelled in [own, by_operator] {
        let timeline = db.job_timeline(cancelled).await.unwrap();
        assert_eq!(steps(&timeline), [(None, Stage::Queued, None), (Some(Stage::Queued), Stage::Cancelled, None)]);
        let record = job_record(&db, key.account_id, cancelled).await;
        assert_eq!(timeline[0].at_ms, record.created_at_ms);
        assert!(timeline[1].at_ms >= record.created_at_ms);
    }
    assert!(db.job_timeline(JobId::new()).await.unwrap().is_empty());
}

/// Pages through `list_accounts` with `limit`, checking each page's size.
async fn all_account_pages(db: &Db, search: Option<&str>, limit: u32) -> Vec<Account> {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let query = AccountQuery { search: search.map(Into::into), after, limit };
        let mut page = db.list_accounts(&query).await.unwrap();
        assert!(page.len() <= limit as usize + 1, "at most limit + 1 rows");
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        after = page.last().map(|a| (a.created_at_ms, a.id));
        seen.extend(page);
        if !more {
            return seen;
        }
    }
}

/// Account pages come newest first, with every account exactly once; search matches a
/// name or e-mail in any case, or an exact id.
pub async fn account_pages_cover_every_account_once_and_search_finds_them(db: Db) {
    let mut made = Vec::new();
    for i in 0..7 {
        made.push(create_account(&db, &format!("Studio {i}"), Some(&format!("team{i}@Example.com")), 0).await);
    }
    let zed = create_account(&db, "Zed", None, 0).await;
    let uber = create_account(&db, "Über Bild GmbH", Some("kontakt@über.example"), 0).await;
    let mut expected: Vec<Account> = made.iter().cloned().chain([zed.clone(), uber.clone()]).collect();
    expected.sort_by_key(|a| std::cmp::Reverse((a.created_at_ms, a.id)));
    for limit in [1, 3, 8, 20] {
        assert_eq!(all_account_pages(&db, None, limit).await, expected, "limit {limit}");
    }

    let studios: Vec<Account> = expected.iter().filter(|a| a.id != zed.id && a.id != uber.id).cloned().collect();
    assert_eq!(all_account_pages(&db, Some("studio"), 2).await, studios);
    assert_eq!(all_account_pages(&db, Some("EXAMPLE.COM"), 3).await, studios);
    assert_eq!(all_account_pages(&db, Some("sTuDiO 3"), 5).await, vec![made[3].clone()]);
    assert_eq!(all_account_pages(&db, Some("team5@"), 5).await, vec![made[5].clone()]);
    assert_eq!(all_account_pages(&db, Some(&zed.id.to_string()), 5).await, vec![zed.clone()]);
    // Case is folded by Unicode's rules on every backend, not only for ASCII.
    assert_eq!(all_account_pages(&db, Some("über bild"), 5).await, vec![uber.clone()]);
    assert_eq!(all_account_pages(&db, Some("ÜBER.EXAMPLE"), 5).await, vec![uber.clone()]);
    for nothing in ["nobody", "%", "_", &AccountId::new().to_string()] {
        assert!(all_account_pages(&db, Some(nothing), 5).await.is_empty(), "{nothing}");
    }
}

/// Ledger and audit pages come newest first, with every row exactly once.
pub async fn ledger_and_audit_pages_cover_every_row_once(db: Db) {
    let acct = create_account(&db, "Pages", None, 5).await;
    for i in 1..=9 {
        adjust(&db, acct.id, i, Some(&format!("grant {i}")), None).await;
    }
    let AdminWritten::Key(_, key) = admin(&db, AdminWrite::CreateKey(new_key(Some(acct.id), 0))).await else {
        panic!("a key")
    };
    submit(&*db, job(&key, 3)).await;
    let other = create_account(&db, "Elsewhere", None, 1).await;

    let mut expected = db.ledger(acct.id).await.unwrap();
    expected.reverse();
    assert_eq!(expected.len(), 11);
    for limit in [1, 4, 11, 50] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let mut page = db.ledger_page(acct.id, before, limit).await.unwrap();
            assert!(page.len() <= limit as usize + 1);
            let more = page.len() > limit as usize;
            page.truncate(limit as usize);
            before = page.last().map(|e| e.id);
            seen.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    assert!(db.ledger_page(acct.id, Some(expected.last().unwrap().id), 5).await.unwrap().is_empty());
    assert_eq!(db.ledger_page(other.id, None, 5).await.unwrap().len(), 1);
    assert!(db.ledger_page(AccountId::new(), None, 5).await.unwrap().is_empty());
    assert_balance(&db, acct.id, 5 + 45 - 3).await;

    let all = audit_rows(&db).await;
    assert_eq!(all.len(), 12, "two accounts, nine grants, one key");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    for limit in [1, 5, 12] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let mut page = db.audit_log(before, limit).await.unwrap();
            assert!(page.len() <= limit as usize + 1);
            let more = page.len() > limit as usize;
            page.truncate(limit as usize);
            before = page.last().map(|r| r.id);
            seen.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(seen, all, "limit {limit}");
    }
}

/// Pages through `admin_jobs` with `query`'s filters, checking each page's size.
async fn all_admin_job_pages(db: &Db, query: AdminJobQuery) -> Vec<JobId> {
    let mut seen = Vec::new();
    let mut query = AdminJobQuery { after: None, ..query };
    loop {
        let mut page = db.admin_jobs(&query).await.unwrap();
        assert!(page.len() <= query.limit as usize + 1);
        let more = page.len() > query.limit as usize;
        page.truncate(query.limit as usize);
        query.after = page.last().map(|j| JobCursor { created_at_ms: j.created_at_ms, id: j.id });
        seen.extend(page.iter().map(|j| j.id));
        if !more {
            return seen;
        }
    }
}

/// Jobs across accounts page newest first with every job once, filtered by account,
/// key, status, model and submission time.
pub async fn admin_job_lists_page_across_accounts_with_filters(db: Db) {
    let a = account(&*db, 100, 10).await;
    let a2 = second_key(&db, a.account_id).await;
    let b = account(&*db, 100, 10).await;
    let mut submitted = Vec::new();
    for i in 0..9 {
        let new = match i % 3 {
            0 => job(&a, 1),
            1 => store::NewJob { model: ModelId::Hailuo02, ..job(&a2, 1) },
            _ => job(&b, 1),
        };
        submitted.push(submit(&*db, new).await);
    }
    advance(&db, Transition::new(submitted[2], Stage::Queued, Stage::Failed).error("x")).await;
    let mut records = Vec::new();
    for (i, id) in submitted.iter().enumerate() {
        let owner = if i % 3 == 2 { b.account_id } else { a.account_id };
        records.push(job_record(&db, owner, *id).await);
    }
    records.sort_by_key(|j| std::cmp::Reverse((j.created_at_ms, j.id)));
    let expect =
        |keep: &dyn Fn(&JobRecord) -> bool| records.iter().filter(|j| keep(j)).map(|j| j.id).collect::<Vec<_>>();

    for limit in [1, 4, 9, 30] {
        let all = all_admin_job_pages(&db, AdminJobQuery { limit, ..AdminJobQuery::default() }).await;
        assert_eq!(all, expect(&|_| true), "limit {limit}");
    }
    let by_account = AdminJobQuery { account_id: Some(a.account_id), limit: 2, ..AdminJobQuery::default() };
    assert_eq!(all_admin_job_pages(&db, by_account).await, expect(&|j| j.account_id == a.account_id));
    let by_key = AdminJobQuery { api_key_id: Some(a2.id), limit: 2, ..AdminJobQuery::default() };
    assert_eq!(all_admin_job_pages(&db, by_key).await, expect(&|j| j.api_key_id == a2.id));
    let failed = AdminJobQuery { status: Some(JobStatus::Failed), limit: 2, ..AdminJobQuery::default() };
    assert_eq!(all_admin_job_pages(&db, failed).await, vec![submitted[2]]);
    let model = ModelId::Hailuo02.as_str().to_string();
    let by_model = AdminJobQuery { model: Some(model.clone()), limit: 2, ..AdminJobQuery::default() };
    assert_eq!(all_admin_job_pages(&db, by_model).await, expect(&|j| j.model == model));
    let (from, to) = (records[6].created_at_ms, records[1].created_at_ms);
    let window = AdminJobQuery { from_ms: Some(from), to_ms: Some(to), limit: 2, ..AdminJobQuery::default() };
    assert_eq!(
        all_admin_job_pages(&db, window).await,
        expect(&|j| j.created_at_ms >= from && j.created_at_ms < to),
        "[from, to)"
    );
    let combined = AdminJobQuery {
        account_id: Some(b.account_id),
        status: Some(JobStatus::Queued),
        from_ms: Some(from),
        limit: 1,
        ..AdminJobQuery::default()
    };
    assert_eq!(
        all_admin_job_pages(&db, combined).await,
        expect(&|j| j.account_id == b.account_id && j.status == JobStatus::Queued && j.created_at_ms >= from)
    );
    let nobody = AdminJobQuery { account_id: Some(AccountId::new()), limit: 5, ..AdminJobQuery::default() };
    assert!(all_admin_job_pages(&db, nobody).await.is_empty());
}

/// One scripted job, as the usage report must count it.
struct Scripted {
    account: AccountId,
    key: ApiKeyId,
    model: &'static str,
    created_at_ms: i64,
    status: JobStatus,
    charged: i64,
    refunded: i64,
}

/// The usage rows `jobs` must produce, computed here job by job.
fn expected_usage(jobs: &[Scripted], q: &UsageQuery) -> Vec<UsageRow> {
    let mut rows: BTreeMap<(i64, String), UsageRow> = BTreeMap::new();
    for j in jobs {
        if j.created_at_ms < q.from_ms || j.created_at_ms >= q.to_ms || q.account_id.is_some_and(|a| a != j.account) {
            continue;
        }
        let group = match q.group_by {
            UsageGroup::Account => j.account.to_string(),
            UsageGroup::Key => j.key.to_string(),
            UsageGroup::Model => j.model.to_string(),
        };
        let bucket_start_ms = j.created_at_ms.div_euclid(q.bucket.millis()) * q.bucket.millis();
        let row = rows.entry((bucket_start_ms, group.clone())).or_insert(UsageRow {
            group,
            bucket_start_ms,
            submitted: 0,
            completed: 0,
            failed: 0,
            cancelled: 0,
            credits_charged: 0,
            credits_refunded: 0,
        });
        row.submitted += 1;
        row.completed += i64::from(j.status == JobStatus::Completed);
        row.failed += i64::from(j.status == JobStatus::Failed);
        row.cancelled += i64::from(j.status == JobStatus::Cancelled);
        row.credits_charged += j.charged;
        row.credits_refunded += j.refunded;
    }
    rows.into_values().collect()
}

/// Usage figures per account, key and model, by hour and day, match a scripted set of
/// jobs: submitted, completed, failed, cancelled, charged and refunded.
pub async fn usage_figures_match_a_scripted_set_of_jobs(db: Db) {
    let a1 = account(&*db, 100, 10).await;
    let a2 = second_key(&db, a1.account_id).await;
    let b1 = account(&*db, 100, 10).await;
    let mut jobs = Vec::new();
    // (key, model, cost, what becomes of it)
    let script: [(&store::ApiKeyRecord, ModelId, i64, &str); 8] = [
        (&a1, ModelId::Hailuo23, 5, "complete"),
        (&a1, ModelId::Hailuo23, 5, "fail"),
        (&a1, ModelId::Hailuo23, 3, "cancel"),
        (&a1, ModelId::Hailuo23, 2, "queue"),
        (&a2, ModelId::Hailuo02, 4, "process"),
        (&b1, ModelId::Hailuo02, 7, "complete"),
        (&b1, ModelId::Hailuo23, 0, "complete"),
        (&b1, ModelId::Hailuo02, 6, "operator cancel"),
    ];
    for (key, model, cost, fate) in script {
        let id = submit(&*db, store::NewJob { model, ..job(key, cost) }).await;
        let (status, refunded) = match fate {
            "complete" => {
                complete(&db, id).await;
                (JobStatus::Completed, 0)
            }
            "fail" => {
                advance(&db, Transition::new(id, Stage::Queued, Stage::Submitting)).await;
                advance(&db, Transition::new(id, Stage::Submitting, Stage::Failed).error("no")).await;
                (JobStatus::Failed, cost)
            }
            "cancel" => {
                assert!(matches!(db.cancel_job(key.account_id, id).await.unwrap(), CancelOutcome::Cancelled(_)));
                (JobStatus::Cancelled, cost)
            }
            "operator cancel" => {
                admin(&db, AdminWrite::CancelJob { id }).await;
                (JobStatus::Cancelled, cost)
            }
            "process" => {
                advance(&db, Transition::new(id, Stage::Queued, Stage::Submitting)).await;
                (JobStatus::Processing, 0)
            }
            _ => (JobStatus::Queued, 0),
        };
        let record = job_record(&db, key.account_id, id).await;
        assert_eq!(record.status, status);
        jobs.push(Scripted {
            account: key.account_id,
            key: key.id,
            model: model.as_str(),
            created_at_ms: record.created_at_ms,
            status,
            charged: cost,
            refunded,
        });
    }
    let first = jobs[0].created_at_ms;
    let end = jobs.last().unwrap().created_at_ms + 1;
    for group_by in [UsageGroup::Account, UsageGroup::Key, UsageGroup::Model] {
        for bucket in [UsageBucket::Hour, UsageBucket::Day] {
            for (from_ms, to_ms, account_id) in [
                (first, end, None),
                (first - 86_400_000, end + 86_400_000, None),
                (first, end, Some(b1.account_id)),
                (jobs[2].created_at_ms, jobs[6].created_at_ms, None),
                (end, end + 1_000, None),
            ] {
                let q = UsageQuery { group_by, bucket, from_ms, to_ms, account_id };
                let got = db.usage(&q).await.unwrap();
                assert_eq!(got, expected_usage(&jobs, &q), "{q:?}");
            }
        }
    }
    // The whole range by account, in totals: the ledger agrees.
    let q = UsageQuery {
        group_by: UsageGroup::Account,
        bucket: UsageBucket::Day,
        from_ms: first,
        to_ms: end,
        account_id: Some(a1.account_id),
    };
    let net: i64 = db.usage(&q).await.unwrap().iter().map(UsageRow::net_credits).sum();
    assert_eq!(net, 5 + 2 + 4);
    assert_balance(&db, a1.account_id, 100 - net).await;
}

/// Upstream activity counts recent create calls and jobs in flight per upstream
/// account; the overview counts jobs by status, the last hour's endings and today's credits.
pub async fn upstream_activity_and_the_overview_count_what_the_engine_does(db: Db) {
    let start = now_ms();
    let empty = db.overview(start).await.unwrap();
    let zeros: Vec<(JobStatus, i64)> = JobStatus::ALL.iter().map(|s| (*s, 0)).collect();
    assert_eq!(empty, Overview { by_status: zeros, ..Overview::default() });
    assert!(db.upstream_activity(start, 60_000).await.unwrap().is_empty());

    let key = account(&*db, 100, 10).await;
    let ids = submit_n(&db, &key, 6).await;
    let on_a = db.claim_jobs(claim(vec![budget("a", 100, 100)], 2, None)).await.unwrap();
    assert_eq!(self::ids(&on_a), ids[..2].to_vec());
    let on_b = db.claim_jobs(claim(vec![budget("b", 100, 100)], 1, None)).await.unwrap();
    assert_eq!(self::ids(&on_b), vec![ids[2]]);
    for id in &ids[..2] {
        assert_eq!(db.reserve_upstream_call("a", *id, 100, 60_000).await.unwrap(), store::CallReservation::Granted);
    }
    advance(&db, Transition::new(ids[1], Stage::Submitting, Stage::Running)).await;
    advance(&db, Transition::new(ids[2], Stage::Submitting, Stage::Running)).await;
    advance(&db, Transition::new(ids[2], Stage::Running, Stage::Downloading)).await;
    complete(&db, ids[3]).await;
    advance(&db, Transition::new(ids[4], Stage::Queued, Stage::Failed).error("x")).await;
    // A create call on "c" with nothing in flight there.
    assert_eq!(db.reserve_upstream_call("c", ids[5], 100, 60_000).await.unwrap(), store::CallReservation::Granted);

    let now = now_ms();
    let activity = |name: &str, creates_in_window: u32, in_flight: u32| UpstreamActivity {
        name: name.into(),
        creates_in_window,
        in_flight,
    };
    assert_eq!(
        db.upstream_activity(now, 60_000).await.unwrap(),
        vec![activity("a", 2, 2), activity("b", 0, 1), activity("c", 1, 0)]
    );
    assert_eq!(
        db.upstream_activity(now + 120_000, 60_000).await.unwrap(),
        vec![activity("a", 0, 2), activity("b", 0, 1)],
        "calls out of the window; upstreams with neither are left out"
    );

    let overview = db.overview(now).await.unwrap();
    let by_status = vec![
        (JobStatus::Queued, 1),
        (JobStatus::Processing, 3),
        (JobStatus::Completed, 1),
        (JobStatus::Failed, 1),
        (JobStatus::Cancelled, 0),
    ];
    assert_eq!(overview.by_status, by_status);
    assert_eq!(overview.oldest_queued_at_ms, Some(job_record(&db, key.account_id, ids[5]).await.created_at_ms));
    let mut minutes: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let completed_at = job_record(&db, key.account_id, ids[3]).await.completed_at_ms.unwrap();
    let failed_at = job_record(&db, key.account_id, ids[4]).await.completed_at_ms.unwrap();
    minutes.entry(completed_at.div_euclid(60_000) * 60_000).or_default().0 += 1;
    minutes.entry(failed_at.div_euclid(60_000) * 60_000).or_default().1 += 1;
    let per_minute: Vec<(i64, i64, i64)> = minutes.into_iter().map(|(m, (c, f))| (m, c, f)).collect();
    assert_eq!(overview.per_minute, per_minute);
    assert_eq!((overview.charged_today, overview.refunded_today), (6, 1));
    assert_eq!(overview.oldest_queued_at_ms, db.queue_depth().await.unwrap().oldest_queued_at_ms);

    // Two hours on, the endings have left the last hour; the rest stays.
    let later = db.overview(now + 7_200_000).await.unwrap();
    assert!(later.per_minute.is_empty());
    assert_eq!(later.by_status, by_status);
}
