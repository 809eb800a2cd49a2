//! The fair-claim plan: which queued jobs the engine takes next, and which upstream
//! account each goes to.
//!
//! Both stores gather the inputs under their own locking (SQLite inside the writer's
//! transaction, PostgreSQL under the claim lock), then call [`order`] and [`plan`] and
//! write the plan. Keeping the rule here means the backends cannot drift apart; this
//! module must not read or write anything.
//!
//! The rule: accounts take turns, one job per account per round, starting after the
//! account served last (so no account starves behind a busy one); an account takes no
//! more jobs than its free capacity (`max_concurrent_jobs` minus its active jobs); an
//! upstream takes no more than its create calls left in the window and its free
//! in-flight slots; of the upstreams with room, the one with the most calls left takes
//! the job (spreading load).

use crate::AccountId;

/// The window over which an upstream account's create calls are counted (Unix ms).
pub const UPSTREAM_WINDOW_MS: i64 = 60_000;

/// The window a create call is reserved against just before it is sent: one second more
/// than [`UPSTREAM_WINDOW_MS`], so that network delays between our count and MiniMax's
/// cannot squeeze one call too many into MiniMax's own window.
pub const RESERVATION_WINDOW_MS: i64 = UPSTREAM_WINDOW_MS + 1_000;

/// Progress shown once the engine has taken a job (the first milestone).
pub const CLAIMED_PROGRESS: i64 = 5;

/// A customer account with queued work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    /// The account.
    pub account_id: AccountId,
    /// Further jobs it may start now: `max_concurrent_jobs` minus its active jobs.
    pub capacity: i64,
}

/// Room left on one upstream account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// Create calls left in the window, capped by the caller's pacing.
    pub calls: i64,
    /// Free in-flight slots.
    pub slots: i64,
}

impl Room {
    /// The room of an upstream allowed `create_rpm` calls a window, of which `used` are
    /// spent, paced to `claimable_now`, with `max_in_flight` slots of which `in_flight`
    /// are taken.
    pub fn new(create_rpm: u32, used: i64, claimable_now: u32, max_in_flight: u32, in_flight: i64) -> Self {
        Self {
            calls: (i64::from(create_rpm) - used).min(i64::from(claimable_now)),
            slots: i64::from(max_in_flight) - in_flight,
        }
    }

    fn open(&self) -> bool {
        self.calls > 0 && self.slots > 0
    }
}

/// An account's eligible queued jobs, oldest first, and its free capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue<J> {
    /// Further jobs it may start now.
    pub capacity: i64,
    /// Its oldest eligible queued jobs; at most [`per_account_limit`] are needed.
    pub jobs: Vec<J>,
}

/// Puts `accounts` (in id order) in serving order: starting with the first account
/// after `after`, the one served last, wrapping around.
pub fn order(accounts: &mut [Account], after: Option<AccountId>) {
    if let Some(after) = after {
        let split = accounts.iter().position(|a| a.account_id > after).unwrap_or(accounts.len());
        accounts.rotate_left(split);
    }
}

/// Whether any upstream has room; if none does, there is nothing to gather.
pub fn any_room(rooms: &[Room]) -> bool {
    rooms.iter().any(Room::open)
}

/// The most jobs one account can take in a claim, so the most of its queue worth
/// reading: no more than the upstreams' room nor `max_jobs`.
pub fn per_account_limit(rooms: &[Room], max_jobs: usize) -> i64 {
    let room: i64 = rooms.iter().map(|r| r.calls.min(r.slots).max(0)).sum();
    room.min(max_jobs as i64)
}

/// The plan: jobs picked from `queues` (in serving order, see [`order`]) with the index
/// of the upstream in `rooms` that takes each, in pick order, at most `max_jobs`.
///
/// A store may pass the queues of only the first accounts in serving order, as long as
/// they include `max_jobs` non-empty ones (or all): later accounts could not be reached
/// in this claim.
pub fn plan<J: Clone>(queues: &[Queue<J>], rooms: &[Room], max_jobs: usize) -> Vec<(J, usize)> {
    let mut rooms = rooms.to_vec();
    let mut taken = vec![0usize; queues.len()];
    let mut picked = Vec::new();
    'rounds: loop {
        let mut progressed = false;
        for (queue, taken) in queues.iter().zip(taken.iter_mut()) {
            if *taken as i64 >= queue.capacity || *taken >= queue.jobs.len() {
                continue;
            }
            if picked.len() >= max_jobs {
                break 'rounds;
            }
            // Of equal maxima the last wins (`max_by_key`), which both stores always did.
            let Some((at, room)) = rooms.iter_mut().enumerate().filter(|(_, r)| r.open()).max_by_key(|(_, r)| r.calls)
            else {
                break 'rounds;
            };
            picked.push((queue.jobs[*taken].clone(), at));
            *taken += 1;
            room.calls -= 1;
            room.slots -= 1;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(capacity: i64, jobs: &[&'static str]) -> Queue<&'static str> {
        Queue { capacity, jobs: jobs.to_vec() }
    }

    fn room(calls: i64, slots: i64) -> Room {
        Room { calls, slots }
    }

    #[test]
    fn the_plan_table() {
        struct Case {
            name: &'static str,
            queues: Vec<Queue<&'static str>>,
            rooms: Vec<Room>,
            max_jobs: usize,
            want: Vec<(&'static str, usize)>,
        }
        let cases = [
            Case {
                name: "one job per account per round",
                queues: vec![q(9, &["a1", "a2", "a3"]), q(9, &["b1"]), q(9, &["c1", "c2"])],
                rooms: vec![room(100, 100)],
                max_jobs: 10,
                want: vec![("a1", 0), ("b1", 0), ("c1", 0), ("a2", 0), ("c2", 0), ("a3", 0)],
            },
            Case {
                name: "max_jobs stops mid-round",
                queues: vec![q(9, &["a1", "a2"]), q(9, &["b1", "b2"])],
                rooms: vec![room(100, 100)],
                max_jobs: 3,
                want: vec![("a1", 0), ("b1", 0), ("a2", 0)],
            },
            Case {
                name: "an account's capacity caps it",
                queues: vec![q(1, &["a1", "a2"]), q(0, &["b1"]), q(2, &["c1", "c2", "c3"])],
                rooms: vec![room(100, 100)],
                max_jobs: 10,
                want: vec![("a1", 0), ("c1", 0), ("c2", 0)],
            },
            Case {
                name: "the upstream with the most calls left takes each job",
                queues: vec![q(9, &["a1", "a2", "a3", "a4"])],
                rooms: vec![room(3, 9), room(2, 9)],
                max_jobs: 10,
                want: vec![("a1", 0), ("a2", 1), ("a3", 0), ("a4", 1)],
            },
            Case {
                name: "slots cap an upstream as calls do",
                queues: vec![q(9, &["a1", "a2", "a3"])],
                rooms: vec![room(5, 1), room(1, 5)],
                max_jobs: 10,
                want: vec![("a1", 0), ("a2", 1)],
            },
            Case {
                name: "no room, no plan",
                queues: vec![q(9, &["a1"])],
                rooms: vec![room(0, 5), room(5, 0), room(-2, 5)],
                max_jobs: 10,
                want: vec![],
            },
            Case {
                name: "an empty queue is passed over",
                queues: vec![q(9, &[]), q(9, &["b1"])],
                rooms: vec![room(100, 100)],
                max_jobs: 10,
                want: vec![("b1", 0)],
            },
        ];
        for case in cases {
            assert_eq!(plan(&case.queues, &case.rooms, case.max_jobs), case.want, "{}", case.name);
        }
    }

    #[test]
    fn serving_starts_after_the_account_served_last() {
        let ids: Vec<AccountId> = {
            let mut ids: Vec<AccountId> = (0..4).map(|_| AccountId::new()).collect();
            ids.sort();
            ids
        };
        let accounts: Vec<Account> = ids.iter().map(|&account_id| Account { account_id, capacity: 1 }).collect();
        let served = |after| {
            let mut a = accounts.clone();
            order(&mut a, after);
            a.iter().map(|a| ids.iter().position(|id| *id == a.account_id).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(served(None), [0, 1, 2, 3]);
        assert_eq!(served(Some(ids[1])), [2, 3, 0, 1]);
        assert_eq!(served(Some(ids[3])), [0, 1, 2, 3], "after the last, the first");
        // An account served last that has since left the queue still marks the place.
        let gone = ids[0];
        let mut rest = accounts[1..].to_vec();
        order(&mut rest, Some(gone));
        assert_eq!(rest[0].account_id, ids[1]);
    }

    #[test]
    fn rooms_and_limits() {
        let r = Room::new(10, 4, 3, 5, 1);
        assert_eq!(r, Room { calls: 3, slots: 4 }, "pacing caps calls; in-flight tasks take slots");
        assert!(any_room(&[room(0, 1), r]));
        assert!(!any_room(&[room(0, 1), room(1, 0)]));
        assert_eq!(per_account_limit(&[room(3, 2), room(5, 9), room(-1, 4)], 100), 7);
        assert_eq!(per_account_limit(&[room(30, 20)], 4), 4);
    }
}
