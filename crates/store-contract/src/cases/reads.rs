//! Reading jobs back: account isolation, listing order, keyset paging and filters.

use domain::{JobId, JobStatus, ModelId};
use store::{CancelOutcome, JobCursor, JobQuery, JobRecord};

use crate::support::*;

/// A job is visible only to its own account (the engine's view excepted).
pub async fn jobs_are_read_only_within_their_account(db: Db) {
    let alice = account(&*db, 10, 1).await;
    let bob = account(&*db, 10, 1).await;
    let id = submit(&*db, job(&alice, 1)).await;
    assert_eq!(db.get_job(alice.account_id, id).await.unwrap().map(|j| j.id), Some(id));
    assert!(db.get_job(bob.account_id, id).await.unwrap().is_none());
    assert!(db.get_job(alice.account_id, JobId::new()).await.unwrap().is_none());
    let bobs = JobQuery {
        account_id: bob.account_id,
        api_key_id: None,
        status: None,
        model: None,
        job_id: Some(id),
        after: None,
        limit: 10,
    };
    assert!(db.list_jobs(&bobs).await.unwrap().is_empty());
    assert!(db.job_models(bob.account_id, None).await.unwrap().is_empty());
    // The engine's view is not scoped: it reads any job.
    assert_eq!(engine_job(&db, id).await.record.account_id, alice.account_id);
    assert!(db.engine_job(JobId::new()).await.unwrap().is_none());
}

fn order_key(j: &JobRecord) -> (i64, JobId) {
    (j.created_at_ms, j.id)
}

/// Listing is newest first, keyset-paged without gaps or repeats, and filters combine.
pub async fn job_lists_page_newest_first_with_filters(db: Db) {
    let first_key = account(&*db, 100, 1).await;
    let second_key = second_key(&db, first_key.account_id).await;
    let mut submitted = Vec::new();
    for i in 0..7 {
        let key = if i % 2 == 0 { &first_key } else { &second_key };
        let mut new = job(key, 1);
        new.model = if i < 3 { ModelId::Hailuo02 } else { ModelId::Hailuo23 };
        submitted.push(submit(&*db, new).await);
        if i == 3 {
            // Some jobs share a millisecond, some do not: both orders must hold.
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    }
    let query = JobQuery {
        account_id: first_key.account_id,
        api_key_id: None,
        status: None,
        model: None,
        job_id: None,
        after: None,
        limit: 100,
    };
    let all = db.list_jobs(&query).await.unwrap();
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| order_key(&w[0]) > order_key(&w[1])), "newest first");
    let mut listed: Vec<JobId> = all.iter().map(|j| j.id).collect();
    listed.sort();
    let mut expected = submitted.clone();
    expected.sort();
    assert_eq!(listed, expected);

    // Pages of three: each answer has one extra row telling that more exist.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = db.list_jobs(&JobQuery { after, limit: 3, ..query.clone() }).await.unwrap();
        let more = page.len() > 3;
        assert!(page.len() <= 4);
        paged.extend(page.into_iter().take(3));
        let last = paged.last().unwrap();
        after = Some(JobCursor { created_at_ms: last.created_at_ms, id: last.id });
        if !more {
            break;
        }
    }
    assert_eq!(paged.iter().map(|j| j.id).collect::<Vec<_>>(), all.iter().map(|j| j.id).collect::<Vec<_>>());
    // A cursor at the end gives an empty page.
    assert!(db.list_jobs(&JobQuery { after, ..query.clone() }).await.unwrap().is_empty());

    let by_key = db.list_jobs(&JobQuery { api_key_id: Some(second_key.id), ..query.clone() }).await.unwrap();
    assert_eq!(by_key.len(), 3);
    assert!(by_key.iter().all(|j| j.api_key_id == second_key.id));
    let by_model = db.list_jobs(&JobQuery { model: Some("hailuo-02".into()), ..query.clone() }).await.unwrap();
    assert_eq!(by_model.iter().map(|j| j.id).collect::<Vec<_>>(), vec![submitted[2], submitted[1], submitted[0]]);
    let by_id = db.list_jobs(&JobQuery { job_id: Some(submitted[4]), ..query.clone() }).await.unwrap();
    assert_eq!(by_id.iter().map(|j| j.id).collect::<Vec<_>>(), vec![submitted[4]]);
    assert!(matches!(db.cancel_job(first_key.account_id, submitted[5]).await.unwrap(), CancelOutcome::Cancelled(_)));
    let cancelled = db.list_jobs(&JobQuery { status: Some(JobStatus::Cancelled), ..query.clone() }).await.unwrap();
    assert_eq!(cancelled.iter().map(|j| j.id).collect::<Vec<_>>(), vec![submitted[5]]);
    let queued = db.list_jobs(&JobQuery { status: Some(JobStatus::Queued), limit: 2, ..query.clone() }).await.unwrap();
    assert_eq!(queued.len(), 3, "limit + 1");
    assert!(queued.iter().all(|j| j.status == JobStatus::Queued));

    // Distinct models, in byte order, optionally of one key.
    assert_eq!(db.job_models(first_key.account_id, None).await.unwrap(), ["hailuo-02", "hailuo-2.3"]);
    let second_key_models = db.job_models(first_key.account_id, Some(second_key.id)).await.unwrap();
    assert_eq!(second_key_models, ["hailuo-02", "hailuo-2.3"]);
    let mut only_new = job(&second_key, 1);
    only_new.model = ModelId::Hailuo23Fast;
    submit(&*db, only_new).await;
    assert_eq!(
        db.job_models(first_key.account_id, None).await.unwrap(),
        ["hailuo-02", "hailuo-2.3", "hailuo-2.3-fast"]
    );
    assert_eq!(db.job_models(first_key.account_id, Some(first_key.id)).await.unwrap(), ["hailuo-02", "hailuo-2.3"]);
}
