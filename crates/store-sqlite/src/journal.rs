//! The acceptance journal: where an accepted submission becomes durable before it
//! reaches SQLite.
//!
//! A durable SQLite commit writes every B-tree page the transaction touched into the WAL
//! and syncs it. For a submission that is a job row, four index entries, a ledger row and
//! a balance: measured here, about one 4 KiB page per job at the batch sizes a closed
//! loop of clients produces, and the single writer spent most of its time writing and
//! syncing those pages. The same submission as a journal record is one ~300-byte append.
//! So a submission is made durable by appending its record here and syncing once per
//! round of decisions ([`crate::acceptor`]); its caller is answered then, and the writer
//! writes the accepted jobs into SQLite later in large transactions (see
//! [`crate::accepted`]), which share their index pages. Once such a transaction has
//! committed (durably, `synchronous = FULL`), the records of its jobs are emptied.
//!
//! The journal is [`SEGMENTS`] files, `<database>.accepted` and `<database>.accepted.1`.
//! Records go to one segment until the writer takes the jobs accepted so far, which
//! seals it; later records go to the other while the writer writes the sealed one's jobs
//! into SQLite, and once that has committed the sealed segment is emptied. So a segment
//! is emptied only when every record in it is in SQLite, without pausing submissions.
//!
//! Each segment is a header (an 8-byte magic and the current generation, a `u64`), then
//! records, each `len: u32 | crc32(payload): u32 | payload` (little endian), where the
//! payload starts with the generation it was written in. Reading stops at the first
//! record that is incomplete, fails its checksum or belongs to another generation: a
//! write cut short by a crash was never synced, so never acknowledged, and older
//! generations were emptied.
//!
//! Emptying a segment bumps the generation in its header and starts writing at the front
//! again, over the old records, instead of truncating: a sync that overwrites blocks the
//! file already has was measured here at half the time of one that grows the file, so
//! each file is also filled to [`PREALLOCATED`] when created. The new header is synced
//! with (or before) the first records written after it; until then nothing in the new
//! generation was acknowledged, so a crash that keeps the old header loses nothing.
//! Replay is idempotent (a record whose job is already in SQLite is skipped), so records
//! of an emptied generation that come back after a crash change nothing either.
//!
//! This module only reads and writes the files; one thread does all the writing, in
//! order (the journal thread, see [`crate::acceptor`]).
//!
//! One process owns the journal at a time, by an exclusive lock on the first segment's
//! file held for the store's life: the server. Another process opening the same
//! database (the admin CLI) cannot take the lock and refuses submissions; before reading
//! it waits, briefly, for the owner to empty the journal, so it sees what the server has
//! acknowledged ([`wait_until_drained`]).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{AccountId, ApiKeyId, JobId, ModelId};
use store::{IdempotencyClaim, NewJob};
use uuid::Uuid;

const MAGIC: &[u8; 8] = b"RGACPT02";
const HEADER_LEN: u64 = 16;
/// A record larger than this is corrupt: the API caps request bodies far below it.
const MAX_RECORD_LEN: u32 = 64 << 20;
/// The journal's size when created. Records past it grow the file (slower syncs, still
/// correct); between two emptyings the journal holds a few hundred small records.
const PREALLOCATED: u64 = 4 << 20;
/// Segment files: records go to one while the jobs of the other are written into SQLite.
pub(crate) const SEGMENTS: usize = 2;

/// The journal beside the database at `db_path` (its first segment, which also holds
/// the lock).
pub(crate) fn path_for(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".accepted");
    PathBuf::from(name)
}

/// The file of segment `segment` of the journal at `path`.
fn segment_path(path: &Path, segment: usize) -> PathBuf {
    if segment == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{segment}"));
    PathBuf::from(name)
}

/// An accepted submission as the journal keeps it.
pub(crate) struct Record {
    /// The writer's batch time, which becomes the job's `created_at`.
    pub created_at_ms: i64,
    pub job: NewJob,
}

/// The journal, owned (locked) by this process: [`SEGMENTS`] files, written one at a
/// time (see the module comment).
pub(crate) struct Journal {
    segments: Vec<Segment>,
    /// Set by tests to make every write fail, as a failing disk would.
    failing: Arc<AtomicBool>,
}

struct Segment {
    file: File,
    generation: u64,
    /// Where the next record goes.
    end: u64,
}

impl Journal {
    /// Opens (creating if needed) and locks the journal at `path`, returning it with the
    /// records of each segment's current generation.
    /// `None` when another process holds the lock.
    pub(crate) fn open(path: &Path) -> io::Result<Option<(Self, Vec<Record>)>> {
        let first = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        match first.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        let mut segments = Vec::with_capacity(SEGMENTS);
        let mut records = Vec::new();
        let mut created = false;
        for index in 0..SEGMENTS {
            let path = segment_path(path, index);
            let file = match index {
                0 => first.try_clone()?,
                _ => OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?,
            };
            let (segment, found, new) = Segment::open(file, &path)?;
            records.extend(found);
            created |= new;
            segments.push(segment);
        }
        // A new file's name must survive a crash too, or its records would go with it.
        if created {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        // The lock is on the open file description, which `first`'s clone shares.
        drop(first);
        Ok(Some((Self { segments, failing: Arc::default() }, records)))
    }

    /// The generation new records in `segment` must carry.
    pub(crate) fn generation(&self, segment: usize) -> u64 {
        self.segments[segment].generation
    }

    /// Empties every segment (see the module comment) and syncs the new headers.
    pub(crate) fn reset(&mut self) -> io::Result<()> {
        for segment in &mut self.segments {
            segment.start_generation(segment.generation + 1)?;
            segment.file.sync_data()?;
        }
        Ok(())
    }

    /// Empties `segment` into `generation`: new records go at its front. The new header
    /// reaches the disk with the segment's next [`sync`](Self::sync).
    pub(crate) fn empty(&mut self, segment: usize, generation: u64) -> io::Result<()> {
        self.checked(|journal| journal.segments[segment].start_generation(generation))
    }

    /// The switch behind [`checked`](Self::checked): set by the first failed write, or by
    /// a test to act as a failing disk would.
    pub(crate) fn failure_switch(&self) -> Arc<AtomicBool> {
        self.failing.clone()
    }

    /// Writes encoded records (see [`encode_record`]) after the last ones of `segment`.
    pub(crate) fn append(&mut self, segment: usize, records: &[u8]) -> io::Result<()> {
        self.checked(|journal| {
            let segment = &mut journal.segments[segment];
            segment.file.write_all_at(records, segment.end)?;
            segment.end += records.len() as u64;
            Ok(())
        })
    }

    /// Makes what was written to `segment` durable.
    pub(crate) fn sync(&mut self, segment: usize) -> io::Result<()> {
        self.checked(|journal| journal.segments[segment].file.sync_data())
    }

    /// Runs one write, unless an earlier one failed. After a failure the file may hold a
    /// header or records that did not all reach the disk (a new generation's records
    /// behind the old header would never replay), so nothing more is trusted to it:
    /// every later write fails too, and submissions are made durable in SQLite instead
    /// (see [`crate::acceptor`]) until the next start replays and empties the journal.
    fn checked(&mut self, write: impl FnOnce(&mut Self) -> io::Result<()>) -> io::Result<()> {
        if self.failing.load(Ordering::Acquire) {
            return Err(io::Error::other("the acceptance journal failed earlier and is no longer written"));
        }
        let result = write(self);
        if result.is_err() {
            self.failing.store(true, Ordering::Release);
        }
        result
    }
}

impl Segment {
    /// Reads the segment in `file`, filling it to [`PREALLOCATED`] if it is new. Returns
    /// it with its current records and whether it was created now.
    fn open(mut file: File, path: &Path) -> io::Result<(Self, Vec<Record>, bool)> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if bytes.is_empty() {
            let segment = Self { file, generation: 0, end: HEADER_LEN };
            segment.write_header()?;
            segment.file.write_all_at(&vec![0; (PREALLOCATED - HEADER_LEN) as usize], HEADER_LEN)?;
            segment.file.sync_all()?;
            return Ok((segment, Vec::new(), true));
        }
        if bytes.len() < HEADER_LEN as usize || &bytes[..MAGIC.len()] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a reelgate acceptance journal", path.display()),
            ));
        }
        let generation = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let (records, used) = read_records(&bytes[HEADER_LEN as usize..], generation);
        Ok((Self { file, generation, end: HEADER_LEN + used as u64 }, records, false))
    }

    fn start_generation(&mut self, generation: u64) -> io::Result<()> {
        self.generation = generation;
        self.end = HEADER_LEN;
        self.write_header()
    }

    fn write_header(&self) -> io::Result<()> {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&self.generation.to_le_bytes());
        self.file.write_all_at(&header, 0)
    }
}

/// Appends the record of `job`, accepted at `created_at_ms`, as written in `generation`,
/// to `out`.
pub(crate) fn encode_record(job: &NewJob, created_at_ms: i64, generation: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&generation.to_le_bytes());
    encode(job, created_at_ms, out);
    let payload = &out[start + 8..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// For a process that does not own the journal: waits until the owner has moved every
/// acknowledged submission into SQLite (the journal is empty), at most `limit`. Under
/// continuous load the journal may never be empty; the caller then reads what SQLite
/// holds, at most a few milliseconds behind.
pub(crate) async fn wait_until_drained(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if !holds_records(path) || !owned_by_anyone(path) {
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether a live process holds the journal's lock (and will empty it). When none does,
/// the records wait for the next store to open the database, and nobody will drain them
/// before.
fn owned_by_anyone(path: &Path) -> bool {
    match File::open(path) {
        Ok(file) => matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Whether the journal at `path` holds records of a segment's current generation (read
/// without the lock: a torn read only makes the caller wait or read a moment early).
pub(crate) fn holds_records(path: &Path) -> bool {
    (0..SEGMENTS).any(|segment| segment_holds_records(&segment_path(path, segment)))
}

fn segment_holds_records(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    let mut head = [0u8; HEADER_LEN as usize + 16];
    let Ok(()) = file.read_exact_at(&mut head, 0) else { return false };
    let generation = &head[8..16];
    let first = &head[HEADER_LEN as usize..];
    let len = u32::from_le_bytes(first[..4].try_into().expect("4 bytes"));
    len != 0 && &first[8..16] == generation
}

/// The intact records of `generation` at the start of `bytes`, and how many bytes they take.
fn read_records(bytes: &[u8], generation: u64) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some((payload, tail)) = next_payload(rest) {
        let Some(written_in) = payload.get(..8).map(|g| u64::from_le_bytes(g.try_into().expect("8 bytes"))) else {
            break;
        };
        if written_in != generation {
            break;
        }
        match decode(&payload[8..]) {
            Some(record) => records.push(record),
            None => break,
        }
        rest = tail;
    }
    (records, bytes.len() - rest.len())
}

fn next_payload(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len == 0 || len > MAX_RECORD_LEN {
        return None;
    }
    let payload = bytes.get(8..8 + len as usize)?;
    (crc32fast::hash(payload) == crc).then(|| (payload, &bytes[8 + len as usize..]))
}

fn encode(job: &NewJob, created_at_ms: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&created_at_ms.to_le_bytes());
    out.extend_from_slice(job.id.0.as_bytes());
    out.extend_from_slice(job.account_id.0.as_bytes());
    out.extend_from_slice(job.api_key_id.0.as_bytes());
    out.extend_from_slice(&job.cost.to_le_bytes());
    put_str(out, job.model.as_str());
    put_str(out, &job.input_json);
    put_opt_str(out, job.webhook_url.as_deref());
    put_opt_str(out, job.webhook_events.as_ref().map(|e| e.join(",")).as_deref());
    match &job.idempotency {
        Some(claim) => {
            out.push(1);
            put_str(out, &claim.key);
            out.extend_from_slice(&claim.fingerprint);
        }
        None => out.push(0),
    }
}

fn decode(payload: &[u8]) -> Option<Record> {
    let mut r = Reader(payload);
    let created_at_ms = r.i64()?;
    let id = JobId(r.uuid()?);
    let account_id = AccountId(r.uuid()?);
    let api_key_id = ApiKeyId(r.uuid()?);
    let cost = r.i64()?;
    let model = ModelId::parse(r.str()?)?;
    let input_json = r.str()?.to_owned();
    let webhook_url = r.opt_str()?.map(str::to_owned);
    let webhook_events = r.opt_str()?.map(|e| e.split(',').map(str::to_owned).collect());
    let idempotency = match r.byte()? {
        0 => None,
        1 => {
            let key = r.str()?.to_owned();
            let fingerprint: [u8; 32] = r.take(32)?.try_into().ok()?;
            // The window only matters when deciding; this job was decided already.
            Some(IdempotencyClaim { key, fingerprint, not_before_ms: 0 })
        }
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    let job = NewJob { id, account_id, api_key_id, model, cost, input_json, webhook_url, webhook_events, idempotency };
    Some(Record { created_at_ms, job })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn uuid(&mut self) -> Option<Uuid> {
        Some(Uuid::from_bytes(self.take(16)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }
    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: i64, key: Option<&str>) -> Record {
        Record {
            created_at_ms: 1_700_000_000_000 + n,
            job: NewJob {
                id: JobId::new(),
                account_id: AccountId::new(),
                api_key_id: ApiKeyId::new(),
                model: ModelId::Hailuo02,
                cost: 5 + n,
                input_json: format!(r#"{{"prompt":"job {n}"}}"#),
                webhook_url: (n % 2 == 0).then(|| "https://example.com/hook".to_owned()),
                webhook_events: (n % 2 == 0).then(|| vec!["completed".to_owned(), "failed".to_owned()]),
                idempotency: key.map(|k| IdempotencyClaim {
                    key: k.to_owned(),
                    fingerprint: [n as u8; 32],
                    not_before_ms: 9,
                }),
            },
        }
    }

    fn same(a: &Record, b: &Record) {
        assert_eq!(a.created_at_ms, b.created_at_ms);
        let (a, b) = (&a.job, &b.job);
        assert_eq!(
            (a.id, a.account_id, a.api_key_id, a.model, a.cost),
            (b.id, b.account_id, b.api_key_id, b.model, b.cost)
        );
        assert_eq!(
            (&a.input_json, &a.webhook_url, &a.webhook_events),
            (&b.input_json, &b.webhook_url, &b.webhook_events)
        );
        let key = |j: &NewJob| j.idempotency.as_ref().map(|c| (c.key.clone(), c.fingerprint));
        assert_eq!(key(a), key(b));
    }

    /// Writes `records` into segment 0 and syncs, as the acceptor does.
    fn write(journal: Journal, records: &[Record], empty_first: bool) {
        write_segments(journal, &[(0, records)], empty_first.then_some(0));
    }

    /// Empties segment `empty_first` (if any), then writes each `(segment, records)` and
    /// syncs every segment.
    fn write_segments(mut journal: Journal, writes: &[(usize, &[Record])], empty_first: Option<usize>) {
        if let Some(segment) = empty_first {
            journal.empty(segment, journal.generation(segment) + 1).unwrap();
        }
        for (segment, records) in writes {
            let mut bytes = Vec::new();
            for r in *records {
                encode_record(&r.job, r.created_at_ms, journal.generation(*segment), &mut bytes);
            }
            journal.append(*segment, &bytes).unwrap();
        }
        for segment in 0..SEGMENTS {
            journal.sync(segment).unwrap();
        }
    }

    #[test]
    fn both_segments_replay_and_emptying_one_keeps_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("reelgate.db"));
        let (first, second) = ([record(0, Some("k-0")), record(1, None)], [record(2, None)]);
        let (journal, _) = Journal::open(&path).unwrap().unwrap();
        write_segments(journal, &[(0, &first), (1, &second)], None);
        assert!(segment_path(&path, 1).exists(), "the second segment has a file of its own");
        let (journal, replay) = Journal::open(&path).unwrap().unwrap();
        assert_eq!(replay.len(), 3);
        for (a, b) in first.iter().chain(&second).zip(&replay) {
            same(a, b);
        }

        // Segment 0's jobs reached SQLite: emptying it leaves segment 1's record.
        write_segments(journal, &[], Some(0));
        assert!(holds_records(&path), "segment 1 still holds a record");
        let (journal, replay) = Journal::open(&path).unwrap().unwrap();
        assert_eq!(replay.len(), 1);
        same(&second[0], &replay[0]);
        write_segments(journal, &[], Some(1));
        assert!(!holds_records(&path));
    }

    #[test]
    fn synced_records_come_back_after_reopening_and_emptying_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("reelgate.db"));
        let written = [record(0, Some("k-0")), record(1, None), record(2, Some("k-2"))];
        let (journal, replay) = Journal::open(&path).unwrap().expect("not locked");
        assert!(replay.is_empty());
        assert!(!holds_records(&path));
        write(journal, &written, false);
        assert!(holds_records(&path));
        let (mut journal, replay) = Journal::open(&path).unwrap().expect("the lock went with the file");
        assert_eq!(replay.len(), 3);
        for (a, b) in written.iter().zip(&replay) {
            same(a, b);
        }
        journal.reset().unwrap();
        assert!(!holds_records(&path));
        drop(journal);
        let (journal, replay) = Journal::open(&path).unwrap().unwrap();
        assert!(replay.is_empty(), "an emptied journal replays nothing");

        // Emptied, then one new record over the old ones.
        let later = record(7, None);
        write(journal, std::slice::from_ref(&later), true);
        let (_, replay) = Journal::open(&path).unwrap().unwrap();
        assert_eq!(replay.len(), 1, "only the new generation's record");
        same(&later, &replay[0]);
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("reelgate.db"));
        let first = Journal::open(&path).unwrap().expect("first opener owns it");
        assert!(Journal::open(&path).unwrap().is_none(), "a second opener must not own it too");
        drop(first);
        assert!(Journal::open(&path).unwrap().is_some());
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_replay_without_losing_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("reelgate.db"));
        let written = [record(0, None), record(1, Some("k")), record(2, None)];
        let (journal, _) = Journal::open(&path).unwrap().unwrap();
        write(journal, &written, false);
        let full = std::fs::read(&path).unwrap();
        let first_len = 8 + u32::from_le_bytes(full[16..20].try_into().unwrap()) as usize;
        let second_len = 8 + u32::from_le_bytes(full[16 + first_len..20 + first_len].try_into().unwrap()) as usize;
        let third = 16 + first_len + second_len;

        // The third record cut short: the first two replay.
        let mut torn = full.clone();
        torn[third + 20] ^= 0xff;
        std::fs::write(&path, &torn).unwrap();
        let (journal, replay) = Journal::open(&path).unwrap().unwrap();
        assert_eq!(replay.len(), 2);
        same(&written[0], &replay[0]);
        same(&written[1], &replay[1]);
        // New records go after the intact ones, over the torn one.
        let later = record(3, None);
        write(journal, std::slice::from_ref(&later), false);
        let (_, replay) = Journal::open(&path).unwrap().unwrap();
        assert_eq!(replay.len(), 3);
        same(&later, &replay[2]);

        // A flipped byte inside the second record: only the first replays.
        let mut bytes = full;
        bytes[16 + first_len + 30] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, replay) = Journal::open(&path).unwrap().unwrap();
        assert_eq!(replay.len(), 1);
        same(&written[0], &replay[0]);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("reelgate.db"));
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(Journal::open(&path).is_err());
    }
}
