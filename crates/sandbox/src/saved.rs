//! Tasks kept on disk, so that a restarted sandbox still answers for every task it created, as
//! MiniMax does: a task stays queryable and its file retrievable after creation, whatever
//! happens to the server in between.
//!
//! Each task is one small JSON file, `<data_dir>/tasks/<task_id>.json`, holding what the task
//! table needs to rebuild it: ids, the owning key's SHA-256 digest (never the key), the creation
//! time in unix ms, the latency and fail code drawn at create, and what to render. Faults come
//! back by parsing the prompt's markers again. A file is written to a temporary name, synced,
//! renamed into place and the directory synced, all before the create call answers: once a
//! client holds a task id, a `kill -9` cannot lose the task, and a half-written file is never
//! read back. Rendered videos need no record: they are redone on demand from the spec.
//!
//! Not kept: the per-task counters of `xN` faults and the per-prompt create attempts (a restart
//! arms them again), the rate-limit windows and the stats. Records older than
//! `SandboxConfig::task_retention_secs` are deleted when the sandbox starts.
//!
//! One file per task rather than one appended log: each create is independent (no writer to
//! share, no partial tail to repair after a crash) and deleting old tasks is deleting files.
//! Reads are bounded: a file larger than [`MAX_RECORD_BYTES`] or not a record is skipped with a
//! warning, never trusted.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::images::{hex, ImageRef};

/// The largest record read back: a 2000-character prompt (up to 8 KB of UTF-8) and a callback
/// URL fit many times over.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// One task as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: u64,
    pub file_id: u64,
    /// Hex SHA-256 of the bearer key that created the task: only that key sees it.
    pub key_sha256: String,
    pub created_unix_ms: u64,
    pub latency_ms: u32,
    pub fail_code: u16,
    pub prompt: String,
    pub width: u32,
    pub height: u32,
    pub seconds: u32,
    pub first_frame: Option<SavedImage>,
    pub last_frame: Option<SavedImage>,
    pub callback_url: Option<String>,
}

/// An input image by content hash (the bytes are in `<data_dir>/images`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedImage {
    pub sha256: String,
    pub width: u32,
    pub height: u32,
}

impl SavedImage {
    pub fn of(image: &ImageRef) -> Self {
        SavedImage { sha256: hex(&image.hash), width: image.width, height: image.height }
    }

    pub fn to_ref(&self) -> Option<ImageRef> {
        Some(ImageRef { hash: unhex32(&self.sha256)?, width: self.width, height: self.height })
    }
}

/// Decodes 64 hex digits.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The directory of task records.
#[derive(Debug)]
pub struct TaskFiles {
    dir: PathBuf,
}

impl TaskFiles {
    /// Opens (creating) the directory.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(TaskFiles { dir })
    }

    /// Writes one record durably (blocking: call it from a blocking thread).
    pub fn save(&self, record: &TaskRecord) -> std::io::Result<()> {
        let path = self.dir.join(format!("{}.json", record.task_id));
        // Task ids are unique, so no two writers share a temporary name.
        let tmp = self.dir.join(format!("{}.json.tmp", record.task_id));
        let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename is durable only once the directory entry is.
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Reads every record, deleting those created before `keep_after_unix_ms` and any temporary
    /// file a crash left behind (blocking).
    pub fn load(&self, keep_after_unix_ms: u64) -> std::io::Result<Vec<TaskRecord>> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json.tmp") {
                // Never renamed into place: its create never answered.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match read_record(&path) {
                Ok(record) if record.created_unix_ms < keep_after_unix_ms => {
                    let _ = std::fs::remove_file(&path);
                }
                Ok(record) => records.push(record),
                Err(why) => tracing::warn!(path = %path.display(), error = %why, "sandbox skipped a task record"),
            }
        }
        Ok(records)
    }
}

fn read_record(path: &std::path::Path) -> Result<TaskRecord, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!("larger than {MAX_RECORD_BYTES} bytes"));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(task_id: u64, created_unix_ms: u64) -> TaskRecord {
        TaskRecord {
            task_id,
            file_id: task_id + 1,
            key_sha256: "00".repeat(32),
            created_unix_ms,
            latency_ms: 1000,
            fail_code: 0,
            prompt: "a fox [sandbox:slow]".into(),
            width: 1366,
            height: 768,
            seconds: 6,
            first_frame: Some(SavedImage { sha256: "ab".repeat(32), width: 640, height: 480 }),
            last_frame: None,
            callback_url: None,
        }
    }

    #[test]
    fn records_round_trip_and_old_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let files = TaskFiles::open(dir.path().join("tasks")).unwrap();
        files.save(&record(1, 5_000)).unwrap();
        files.save(&record(2, 9_000)).unwrap();
        std::fs::write(dir.path().join("tasks/3.json.tmp"), b"{\"task_id\":").unwrap();
        std::fs::write(dir.path().join("tasks/4.json"), b"not json").unwrap();
        std::fs::write(dir.path().join("tasks/5.json"), vec![b' '; 70_000]).unwrap();
        let loaded = files.load(6_000).unwrap();
        assert_eq!(loaded, vec![record(2, 9_000)]);
        assert!(!dir.path().join("tasks/1.json").exists(), "expired record deleted");
        assert!(!dir.path().join("tasks/3.json.tmp").exists(), "crash leftover deleted");
        assert_eq!(loaded[0].first_frame.as_ref().unwrap().to_ref().unwrap().hash, [0xab; 32]);
    }

    #[test]
    fn hex_decoding() {
        assert_eq!(unhex32(&"0f".repeat(32)), Some([0x0f; 32]));
        assert_eq!(unhex32("0f"), None);
        assert_eq!(unhex32(&"zz".repeat(32)), None);
    }
}
