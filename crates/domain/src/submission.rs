//! The submission decision: which of a batch of waiting submissions are accepted,
//! replayed, refused for a key mismatch or for want of credits.
//!
//! Both stores gather the inputs under their own locking (SQLite inside the writer's
//! transaction, PostgreSQL under the accounts' row locks), call [`decide`], and write
//! the accepted jobs with one debit per account. The rule lives here once so the two
//! backends cannot drift apart; this module must not read or write anything.

use std::collections::HashMap;

use crate::{AccountId, JobId, JobStatus};

/// One waiting submission, as the decision needs it.
#[derive(Clone, Copy, Debug)]
pub struct Submission<'a> {
    /// The job the submission would create.
    pub job_id: JobId,
    /// The account that pays.
    pub account_id: AccountId,
    /// What the job costs, in credits.
    pub cost: i64,
    /// The `Idempotency-Key` it carries, if any.
    pub key: Option<KeyClaim<'a>>,
}

/// An idempotency key named by a submission.
#[derive(Clone, Copy, Debug)]
pub struct KeyClaim<'a> {
    /// The key, unique per account.
    pub key: &'a str,
    /// The request body's fingerprint: a retry must send the same body.
    pub fingerprint: &'a [u8; 32],
    /// A key taken earlier than this (Unix ms) is past its replay window and free.
    pub not_before_ms: i64,
}

/// An idempotency key already stored, with its job's current status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The job holding the key.
    pub job_id: JobId,
    /// The fingerprint of the body that took it.
    pub fingerprint: Vec<u8>,
    /// When it was taken (Unix ms).
    pub created_at_ms: i64,
    /// The holding job's status now, which a replay reports.
    pub status: JobStatus,
}

/// What happens to one submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Create the job and charge its cost.
    Accept,
    /// The key is held within its window by an identical request: answer with that job.
    Replay {
        /// The job holding the key.
        job_id: JobId,
        /// Its status (QUEUED for a job accepted earlier in the same batch).
        status: JobStatus,
    },
    /// The key is held within its window by a different body.
    Mismatch,
    /// The balance left does not cover the cost.
    Insufficient {
        /// The cost.
        required: i64,
        /// The balance left, never below zero.
        available: i64,
    },
    /// The paying account does not exist.
    UnknownAccount,
}

/// Decides `batch` in arrival order, exactly as one-at-a-time submissions would:
/// an unknown account is refused; a key within its window (stored, or taken by a job
/// accepted earlier in this batch) replays or mismatches; otherwise the job is accepted
/// if the balance left covers it, and its cost is taken from that balance.
///
/// `balances` holds each known account's balance; `stored` the stored keys the batch
/// names, by account and key.
pub fn decide(
    batch: &[Submission<'_>],
    balances: &HashMap<AccountId, i64>,
    stored: &HashMap<(AccountId, String), StoredKey>,
) -> Vec<Decision> {
    let mut left: HashMap<AccountId, i64> = HashMap::new();
    // Keys taken by jobs accepted earlier in this batch.
    let mut taken: HashMap<(AccountId, &str), (JobId, &[u8; 32])> = HashMap::new();
    batch
        .iter()
        .map(|s| {
            let Some(balance) = balances.get(&s.account_id) else {
                return Decision::UnknownAccount;
            };
            if let Some(claim) = &s.key {
                if let Some((holder, fingerprint)) = taken.get(&(s.account_id, claim.key)) {
                    return if *fingerprint == claim.fingerprint {
                        Decision::Replay { job_id: *holder, status: JobStatus::Queued }
                    } else {
                        Decision::Mismatch
                    };
                }
                if let Some(key) = stored.get(&(s.account_id, claim.key.to_owned())) {
                    // A key past its window is free: this job takes it over.
                    if key.created_at_ms >= claim.not_before_ms {
                        return if key.fingerprint[..] == claim.fingerprint[..] {
                            Decision::Replay { job_id: key.job_id, status: key.status }
                        } else {
                            Decision::Mismatch
                        };
                    }
                }
            }
            let left = left.entry(s.account_id).or_insert(*balance);
            if *left < s.cost {
                return Decision::Insufficient { required: s.cost, available: (*left).max(0) };
            }
            *left -= s.cost;
            if let Some(claim) = &s.key {
                taken.insert((s.account_id, claim.key), (s.job_id, claim.fingerprint));
            }
            Decision::Accept
        })
        .collect()
}

/// What each account pays for the accepted jobs of a batch: one debit per account.
pub fn debits(batch: &[Submission<'_>], decisions: &[Decision]) -> Vec<(AccountId, i64)> {
    let mut debits: Vec<(AccountId, i64)> = Vec::new();
    for (s, _) in batch.iter().zip(decisions).filter(|(_, d)| **d == Decision::Accept) {
        match debits.iter_mut().find(|(account, _)| *account == s.account_id) {
            Some((_, total)) => *total += s.cost,
            None => debits.push((s.account_id, s.cost)),
        }
    }
    debits
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];

    fn ids() -> (AccountId, AccountId) {
        (AccountId::new(), AccountId::new())
    }

    fn sub(account: AccountId, cost: i64, key: Option<(&'static str, &'static [u8; 32])>) -> Submission<'static> {
        Submission {
            job_id: JobId::new(),
            account_id: account,
            cost,
            key: key.map(|(key, fingerprint)| KeyClaim { key, fingerprint, not_before_ms: 100 }),
        }
    }

    fn stored(job_id: JobId, fingerprint: &[u8; 32], created_at_ms: i64) -> StoredKey {
        StoredKey { job_id, fingerprint: fingerprint.to_vec(), created_at_ms, status: JobStatus::Processing }
    }

    #[test]
    fn the_decision_table() {
        let (acct, other) = ids();
        let held = JobId::new();
        let balances = HashMap::from([(acct, 10), (other, 0)]);
        let keys = HashMap::from([
            ((acct, "live".to_owned()), stored(held, &A, 100)),
            ((acct, "old".to_owned()), stored(held, &A, 99)),
        ]);
        struct Case {
            name: &'static str,
            batch: Vec<Submission<'static>>,
            want: Vec<Decision>,
        }
        let first = sub(acct, 3, Some(("new", &A)));
        let cases = [
            Case { name: "affordable", batch: vec![sub(acct, 10, None)], want: vec![Decision::Accept] },
            Case {
                name: "the balance left, not the balance, decides",
                batch: vec![sub(acct, 6, None), sub(acct, 6, None), sub(acct, 4, None)],
                want: vec![Decision::Accept, Decision::Insufficient { required: 6, available: 4 }, Decision::Accept],
            },
            Case {
                name: "unknown account",
                batch: vec![sub(AccountId::new(), 1, None)],
                want: vec![Decision::UnknownAccount],
            },
            Case {
                name: "an empty account",
                batch: vec![sub(other, 1, None), sub(other, 0, None)],
                want: vec![Decision::Insufficient { required: 1, available: 0 }, Decision::Accept],
            },
            Case {
                name: "a stored key within its window replays with the job's status",
                batch: vec![sub(acct, 1, Some(("live", &A)))],
                want: vec![Decision::Replay { job_id: held, status: JobStatus::Processing }],
            },
            Case {
                name: "a stored key with another body conflicts",
                batch: vec![sub(acct, 1, Some(("live", &B)))],
                want: vec![Decision::Mismatch],
            },
            Case {
                name: "a stored key past its window is taken over",
                batch: vec![sub(acct, 1, Some(("old", &B)))],
                want: vec![Decision::Accept],
            },
            Case {
                name: "a key taken earlier in the batch replays or conflicts",
                batch: vec![first, sub(acct, 3, Some(("new", &A))), sub(acct, 3, Some(("new", &B)))],
                want: vec![
                    Decision::Accept,
                    Decision::Replay { job_id: first.job_id, status: JobStatus::Queued },
                    Decision::Mismatch,
                ],
            },
            Case {
                name: "a refused job takes no key",
                batch: vec![sub(acct, 11, Some(("k", &A))), sub(acct, 1, Some(("k", &B)))],
                want: vec![Decision::Insufficient { required: 11, available: 10 }, Decision::Accept],
            },
            Case {
                name: "a replay is decided before the balance",
                batch: vec![sub(other, 5, None), sub(acct, 50, Some(("live", &A)))],
                want: vec![
                    Decision::Insufficient { required: 5, available: 0 },
                    Decision::Replay { job_id: held, status: JobStatus::Processing },
                ],
            },
            Case {
                name: "the same key on another account is another key",
                batch: vec![sub(other, 0, Some(("live", &B)))],
                want: vec![Decision::Accept],
            },
        ];
        for case in cases {
            assert_eq!(decide(&case.batch, &balances, &keys), case.want, "{}", case.name);
        }
    }

    #[test]
    fn debits_sum_the_accepted_jobs_per_account() {
        let (acct, other) = ids();
        let batch = [sub(acct, 2, None), sub(other, 5, None), sub(acct, 3, None), sub(acct, 100, None)];
        let balances = HashMap::from([(acct, 10), (other, 5)]);
        let decisions = decide(&batch, &balances, &HashMap::new());
        assert_eq!(debits(&batch, &decisions), vec![(acct, 5), (other, 5)]);
    }
}
