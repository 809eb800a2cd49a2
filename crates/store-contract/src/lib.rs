//! One behavioural test suite for every [`store::Store`] backend.
//!
//! Each case is an async function in [`cases`] that takes a fresh, empty store and
//! asserts what the trait promises through the trait alone: no backend's tables are
//! read, so SQLite and PostgreSQL are held to exactly the same behaviour, including
//! under concurrency (racing submissions, cancels, claims and reservations).
//!
//! A backend's test file calls [`contract_tests!`] with a function opening a fresh
//! store; the macro turns every case into its own `#[tokio::test]`, so a new case
//! reaches every backend without touching their test files:
//!
//! ```ignore
//! async fn open() -> Option<store_contract::TestStore> { /* a temp dir, a new schema */ }
//! store_contract::contract_tests!(open);
//! ```
//!
//! The opener returns `None` only when the backend is deliberately skipped (it says why
//! on stderr). Every case runs on its own task, so the store is closed and the opener's
//! cleanup runs even when an assertion fails; the failure is re-raised afterwards.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use store::Store;

pub mod cases;
pub mod support;

/// A boxed, sendable future, as cases and cleanups are passed around.
pub type BoxFuture<T = ()> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A fresh store for one case, and what to do once the case is over.
pub struct TestStore {
    /// An empty store with migrations applied.
    pub store: Arc<dyn Store>,
    /// Runs after the store is closed (remove a temporary directory, drop a schema).
    pub cleanup: Option<BoxFuture>,
}

/// Runs one case against a store from `open`, then closes it and cleans up, and only
/// then reports the case's panic, if any.
pub async fn run<O, F>(open: O, case: fn(Arc<dyn Store>) -> BoxFuture)
where
    O: FnOnce() -> F,
    F: Future<Output = Option<TestStore>>,
{
    let Some(test_store) = open().await else { return };
    let outcome = tokio::spawn(case(test_store.store.clone())).await;
    test_store.store.close().await;
    if let Some(cleanup) = test_store.cleanup {
        cleanup.await;
    }
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the case did not finish: {e}"),
        }
    }
}

/// Declares one `#[tokio::test]` per contract case, each on a fresh store from `$open`
/// (an async fn returning `Option<TestStore>`). The calling crate needs `tokio` with the
/// `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! contract_tests {
    ($open:path) => {
        $crate::contract_tests!(@cases $open;
            api_keys_are_created_found_and_listed,
            api_key_status_changes_and_revocation_is_final,
            grants_write_ledger_rows_that_sum_to_the_balance,
            a_submission_is_charged_once_and_reads_back_verbatim,
            insufficient_credits_write_nothing,
            idempotent_replays_return_the_original_job,
            concurrent_submissions_never_overdraw,
            concurrent_keyed_submissions_never_overdraw,
            racing_requests_with_one_key_make_one_job,
            purged_idempotency_keys_are_forgotten,
            cancelling_a_queued_job_refunds_it_once,
            racing_cancels_refund_once,
            committed_job_changes_are_announced,
            jobs_are_read_only_within_their_account,
            job_lists_page_newest_first_with_filters,
            claims_go_round_robin_and_fifo_within_an_account,
            claims_start_after_the_account_served_last,
            claims_respect_account_and_upstream_caps,
            concurrent_claims_never_take_a_job_twice,
            concurrent_claims_respect_the_caps,
            upstream_budget_holds_under_concurrency,
            the_create_budget_is_a_sliding_window,
            transitions_are_compare_and_set,
            failures_refund_once_and_raise_the_subscribed_events,
            due_jobs_come_soonest_first_and_requeued_jobs_return,
            completed_results_expire,
            webhook_deliveries_are_claimed_deferred_and_recorded,
            replaying_webhooks_resends_the_final_events,
            concurrent_webhook_claims_never_share_an_event,
            a_closed_store_is_unavailable,
            a_shared_secret_is_stored_once_and_agreed_on,
            uploads_read_back_and_keys_replay_per_account,
            racing_uploads_with_one_key_record_one,
            expired_uploads_are_listed_and_deleted,
            admin_tokens_are_created_found_and_revoked_with_audit_rows,
            accounts_are_created_and_updated_with_audit_rows,
            keys_are_created_and_switched_with_audit_rows,
            credit_adjustments_grant_deduct_and_replay_once,
            racing_keyed_grants_apply_once_and_deductions_never_overdraw,
            admin_cancels_and_webhook_replays_write_audit_rows,
            upstream_holds_are_made_listed_and_released,
            a_jobs_timeline_follows_its_stage_changes,
            account_pages_cover_every_account_once_and_search_finds_them,
            ledger_and_audit_pages_cover_every_row_once,
            admin_job_lists_page_across_accounts_with_filters,
            usage_figures_match_a_scripted_set_of_jobs,
            upstream_activity_and_the_overview_count_what_the_engine_does,
        );
    };
    (@cases $open:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::run($open, |store| Box::pin($crate::cases::$case(store))).await;
            }
        )*
    };
}
