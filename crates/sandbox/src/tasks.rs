//! The task table: every task ever created, kept small enough that 100,000 of them fit in a
//! few tens of MB, and each task's status computed from its creation time on demand.
//!
//! Nothing runs per task. A task stores when it was created and how long it takes; `status_at`
//! derives Preparing → Queueing → Processing → Success/Fail from the clock. What a task would
//! render is interned ([`RenderSpec`] behind an `Arc`), so 10,000 identical jobs share one
//! prompt string and one spec; images are referenced by content hash (see `images`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rand::{Rng, RngCore};
use tokio::time::Instant;

use crate::images::ImageRef;
use crate::markers::TaskFaults;

/// Tenths of the latency spent in `Preparing`, then in `Queueing`; the rest is `Processing`.
const PREPARING_TENTHS: u64 = 1;
const QUEUEING_TENTHS: u64 = 2;

/// The sandbox's time line: milliseconds since an origin a little before the sandbox started,
/// plus the wall clock at that start, for `created_at` and for tasks kept from an earlier run.
///
/// The origin lies `past_ms` before the start so that every task restored from disk (see
/// `saved`) keeps its true creation time as an unsigned timestamp: a task created 4 s before a
/// restart is 4 s old after it, and its status moves on from there.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_unix_ms: u64,
    past_ms: u64,
}

impl Clock {
    /// A clock whose time line reaches `past_ms` back before now.
    pub fn new(past_ms: u64) -> Self {
        Clock { start: Instant::now(), start_unix_ms: unix_now_ms(), past_ms }
    }

    pub fn now_ms(&self) -> u64 {
        self.past_ms + self.start.elapsed().as_millis() as u64
    }

    /// Unix milliseconds for a sandbox timestamp.
    pub fn unix_ms(&self, ms: u64) -> u64 {
        (self.start_unix_ms + ms).saturating_sub(self.past_ms)
    }

    /// The sandbox timestamp of a unix time; times before the origin become the origin.
    pub fn ms_of_unix(&self, unix_ms: u64) -> u64 {
        (unix_ms + self.past_ms).saturating_sub(self.start_unix_ms)
    }

    /// Unix seconds for a sandbox timestamp.
    pub fn unix_secs(&self, ms: u64) -> u64 {
        self.unix_ms(ms) / 1000
    }

    /// The instant of a sandbox timestamp, for timers (the start for anything earlier).
    pub fn instant(&self, ms: u64) -> Instant {
        self.start + std::time::Duration::from_millis(ms.saturating_sub(self.past_ms))
    }
}

/// The wall clock in unix milliseconds (0 if it is set before 1970).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a finished task renders; interned, so identical jobs share one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RenderSpec {
    pub width: u32,
    pub height: u32,
    pub seconds: u32,
    pub prompt: Arc<str>,
    pub first_frame: Option<ImageRef>,
    pub last_frame: Option<ImageRef>,
}

/// A status as MiniMax's query API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Preparing,
    Queueing,
    Processing,
    Success,
    /// Failed with this `base_resp` code.
    Fail(i64),
}

impl Status {
    pub fn query_name(self) -> &'static str {
        match self {
            Status::Preparing => "Preparing",
            Status::Queueing => "Queueing",
            Status::Processing => "Processing",
            Status::Success => "Success",
            Status::Fail(_) => "Fail",
        }
    }

    /// The lower-case spelling of callback pushes (minimax.md §2).
    pub fn callback_name(self) -> &'static str {
        match self {
            Status::Preparing => "preparing",
            Status::Queueing => "queueing",
            Status::Processing => "processing",
            Status::Success => "success",
            Status::Fail(_) => "failed",
        }
    }
}

/// One task. Field order keeps the struct at 64 bytes on 64-bit targets.
#[derive(Debug)]
pub struct Task {
    pub file_id: u64,
    pub created_ms: u64,
    pub spec: Arc<RenderSpec>,
    pub faults: Option<Box<TaskFaults>>,
    pub callback_url: Option<Arc<str>>,
    /// Index of the owning key in the key table: only the owner sees the task.
    pub owner: u32,
    pub latency_ms: u32,
    /// 0 = Success, otherwise the code the task fails with.
    pub fail_code: u16,
    /// How many queries, retrieves and downloads this task has seen, for `xN` faults (saturating).
    pub queries: u8,
    pub retrieves: u8,
    pub downloads: u8,
}

impl Task {
    fn stuck(&self) -> bool {
        self.faults.as_ref().is_some_and(|f| f.stuck)
    }

    /// When the task enters `Processing`, in sandbox ms.
    pub fn processing_at(&self) -> u64 {
        self.created_ms + u64::from(self.latency_ms) * (PREPARING_TENTHS + QUEUEING_TENTHS) / 10
    }

    /// When the task reaches its terminal status, or None if it never does.
    pub fn done_at(&self) -> Option<u64> {
        (!self.stuck()).then(|| self.created_ms + u64::from(self.latency_ms))
    }

    pub fn terminal(&self) -> Status {
        if self.fail_code == 0 {
            Status::Success
        } else {
            Status::Fail(i64::from(self.fail_code))
        }
    }

    pub fn status_at(&self, now_ms: u64) -> Status {
        if self.done_at().is_some_and(|t| now_ms >= t) {
            self.terminal()
        } else if now_ms < self.created_ms + u64::from(self.latency_ms) * PREPARING_TENTHS / 10 {
            Status::Preparing
        } else if now_ms < self.processing_at() {
            Status::Queueing
        } else {
            Status::Processing
        }
    }
}

/// Fields of a new task, before ids are assigned.
pub struct NewTask {
    pub owner: u32,
    pub created_ms: u64,
    pub latency_ms: u32,
    pub spec: RenderSpec,
    pub fail_code: u16,
    pub faults: Option<Box<TaskFaults>>,
    pub callback_url: Option<String>,
}

/// Which counter of a task to bump.
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    Queries,
    Retrieves,
    Downloads,
}

struct Inner {
    tasks: HashMap<u64, Task>,
    /// file_id → task_id.
    files: HashMap<u64, u64>,
    specs: HashSet<Arc<RenderSpec>>,
    prompts: HashSet<Arc<str>>,
    next_task_id: u64,
    next_file_id: u64,
    rng: rand::rngs::StdRng,
}

impl Inner {
    fn put(&mut self, task_id: u64, file_id: u64, new: NewTask) {
        let spec = match self.specs.get(&new.spec) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(new.spec);
                self.specs.insert(s.clone());
                s
            }
        };
        let task = Task {
            file_id,
            created_ms: new.created_ms,
            spec,
            faults: new.faults,
            callback_url: new.callback_url.map(Arc::from),
            owner: new.owner,
            latency_ms: new.latency_ms,
            fail_code: new.fail_code,
            queries: 0,
            retrieves: 0,
            downloads: 0,
        };
        self.tasks.insert(task_id, task);
        self.files.insert(file_id, task_id);
    }
}

/// All tasks, behind one lock: every operation on it is a few hash lookups.
pub struct TaskTable {
    inner: Mutex<Inner>,
}

impl TaskTable {
    pub fn new(mut rng: rand::rngs::StdRng) -> Self {
        // 18-digit task ids and 15-digit file ids, as in real answers (minimax.md §1.6, §3).
        let next_task_id = rng.random_range(300_000_000_000_000_000..400_000_000_000_000_000u64);
        let next_file_id = rng.random_range(200_000_000_000_000..300_000_000_000_000u64);
        TaskTable {
            inner: Mutex::new(Inner {
                tasks: HashMap::new(),
                files: HashMap::new(),
                specs: HashSet::new(),
                prompts: HashSet::new(),
                next_task_id,
                next_file_id,
                rng,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("task table lock poisoned only by a panic inside it")
    }

    /// Interns a prompt, so that a spec built from it shares the string with earlier tasks.
    pub fn intern_prompt(&self, prompt: &str) -> Arc<str> {
        let mut inner = self.lock();
        if let Some(p) = inner.prompts.get(prompt) {
            return p.clone();
        }
        let p: Arc<str> = Arc::from(prompt);
        inner.prompts.insert(p.clone());
        p
    }

    /// Stores a task and returns its (task_id, file_id).
    pub fn insert(&self, new: NewTask) -> (u64, u64) {
        let mut inner = self.lock();
        // Ids grow by a small random step: unique without a set, yet not trivially sequential.
        let task_id = inner.next_task_id;
        let file_id = inner.next_file_id;
        let step = 1 + inner.rng.next_u64() % 4096;
        inner.next_task_id += step;
        inner.next_file_id += 1 + inner.rng.next_u64() % 4096;
        inner.put(task_id, file_id, new);
        (task_id, file_id)
    }

    /// Puts back a task kept from an earlier run under its own ids; false if either id is taken.
    /// New ids continue above the restored ones, so they never collide.
    pub fn restore(&self, task_id: u64, file_id: u64, new: NewTask) -> bool {
        let mut inner = self.lock();
        if inner.tasks.contains_key(&task_id) || inner.files.contains_key(&file_id) {
            return false;
        }
        inner.next_task_id = inner.next_task_id.max(task_id + 1);
        inner.next_file_id = inner.next_file_id.max(file_id + 1);
        inner.put(task_id, file_id, new);
        true
    }

    /// Reads a task, optionally bumping one of its counters first; `f` sees the count *before* the bump.
    pub fn with_task<T>(&self, task_id: u64, bump: Option<Counter>, f: impl FnOnce(&Task, u8) -> T) -> Option<T> {
        let mut inner = self.lock();
        let task = inner.tasks.get_mut(&task_id)?;
        let before = match bump {
            None => 0,
            Some(c) => {
                let slot = match c {
                    Counter::Queries => &mut task.queries,
                    Counter::Retrieves => &mut task.retrieves,
                    Counter::Downloads => &mut task.downloads,
                };
                let before = *slot;
                *slot = slot.saturating_add(1);
                before
            }
        };
        Some(f(task, before))
    }

    /// The task that owns a file.
    pub fn task_of_file(&self, file_id: u64) -> Option<u64> {
        self.lock().files.get(&file_id).copied()
    }

    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn spec(prompt: &str) -> RenderSpec {
        RenderSpec { width: 1366, height: 768, seconds: 6, prompt: prompt.into(), first_frame: None, last_frame: None }
    }

    fn new_task(fail_code: u16, faults: Option<Box<TaskFaults>>) -> NewTask {
        NewTask { owner: 0, created_ms: 1000, latency_ms: 1000, spec: spec("p"), fail_code, faults, callback_url: None }
    }

    #[test]
    fn task_stays_small() {
        assert!(std::mem::size_of::<Task>() <= 64, "{}", std::mem::size_of::<Task>());
    }

    #[test]
    fn timeline() {
        let table = TaskTable::new(rand::rngs::StdRng::seed_from_u64(1));
        let (id, _) = table.insert(new_task(0, None));
        let at = |ms| table.with_task(id, None, |t, _| t.status_at(ms)).unwrap();
        assert_eq!(at(1000), Status::Preparing);
        assert_eq!(at(1099), Status::Preparing);
        assert_eq!(at(1100), Status::Queueing);
        assert_eq!(at(1300), Status::Processing);
        assert_eq!(at(1999), Status::Processing);
        assert_eq!(at(2000), Status::Success);
        let (id, _) = table.insert(new_task(1027, None));
        assert_eq!(table.with_task(id, None, |t, _| t.status_at(5000)).unwrap(), Status::Fail(1027));
        let stuck = TaskFaults { stuck: true, ..TaskFaults::default() };
        let (id, _) = table.insert(new_task(0, Some(Box::new(stuck))));
        assert_eq!(table.with_task(id, None, |t, _| t.status_at(1_000_000)).unwrap(), Status::Processing);
    }

    #[test]
    fn identical_specs_are_shared_and_ids_are_unique() {
        let table = TaskTable::new(rand::rngs::StdRng::seed_from_u64(2));
        let (a, fa) = table.insert(new_task(0, None));
        let (b, fb) = table.insert(new_task(0, None));
        assert_ne!(a, b);
        assert_ne!(fa, fb);
        assert_eq!(a.to_string().len(), 18);
        assert_eq!(fa.to_string().len(), 15);
        let sa = table.with_task(a, None, |t, _| t.spec.clone()).unwrap();
        let sb = table.with_task(b, None, |t, _| t.spec.clone()).unwrap();
        assert!(Arc::ptr_eq(&sa, &sb));
        assert_eq!(table.task_of_file(fb), Some(b));
    }

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap_or("0 kB");
        line.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
    }

    #[test]
    fn hundred_thousand_tasks_fit() {
        let table = TaskTable::new(rand::rngs::StdRng::seed_from_u64(4));
        let before = rss_kib();
        for i in 0..100_000u64 {
            // Half share one prompt; the others are distinct, as in a mixed load test.
            let prompt = if i % 2 == 0 { "shared".to_owned() } else { format!("a distinct prompt {i}") };
            let spec = RenderSpec { prompt: table.intern_prompt(&prompt), ..spec("") };
            table.insert(NewTask { spec, created_ms: i, ..new_task(0, None) });
        }
        let grown = rss_kib().saturating_sub(before);
        println!("100k tasks: RSS grew by {grown} KiB");
        assert_eq!(table.len(), 100_000);
        assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    }

    #[test]
    fn counters_report_the_count_before() {
        let table = TaskTable::new(rand::rngs::StdRng::seed_from_u64(3));
        let (id, _) = table.insert(new_task(0, None));
        let seen: Vec<u8> = (0..3).map(|_| table.with_task(id, Some(Counter::Queries), |_, n| n).unwrap()).collect();
        assert_eq!(seen, [0, 1, 2]);
    }
}
