//! The writer's files in `--spill-dir`: what a stop could not write, and what the store refused.
//!
//! - **Spill files** `chatbus-spill-<unix ns>.jsonl`: when a graceful stop reaches
//!   `--stop-timeout` with writes still unwritten, they go here, one [`Op`] per line, in order.
//!   A file is written under a temporary name, synced, then renamed, so a spill file is either
//!   whole or absent. The next start replays every spill file, oldest first, before it loads the
//!   store, and deletes each once it is in ([`replay`]); ops are idempotent, so a replay cut
//!   short by a crash is simply replayed again.
//! - **The dead-letter file** `chatbus-dead-letters.jsonl`: an op the store refused for good
//!   (see [`crate::store::ErrorKind::Rejected`]) is appended here with the error and the time,
//!   and synced, so nothing is dropped silently. Nothing reads it back: it is for an operator.

use crate::clock::Clock;
use crate::store::{Op, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The dead-letter file's name in `--spill-dir`.
pub const DEAD_LETTERS: &str = "chatbus-dead-letters.jsonl";
const SPILL_PREFIX: &str = "chatbus-spill-";
const SPILL_SUFFIX: &str = ".jsonl";

/// One line of the dead-letter file.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was set aside (ns since the epoch).
    pub at_ns: i64,
    /// What the store said.
    pub error: String,
    /// The op.
    pub op: Op,
}

/// Appends `op` to the dead-letter file in `dir`, synced. On failure the caller logs the op
/// whole instead.
pub fn dead_letter(dir: &Path, op: &Op, error: &StoreError) -> std::io::Result<PathBuf> {
    let path = dir.join(DEAD_LETTERS);
    let line =
        serde_json::to_string(&DeadLetter { at_ns: Clock::wall_ns(), error: error.to_string(), op: op.clone() })?;
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()?;
    Ok(path)
}

/// Writes `ops` to a new spill file in `dir`; returns its path.
pub fn spill(dir: &Path, ops: &[Op]) -> std::io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let name = format!("{SPILL_PREFIX}{:020}{SPILL_SUFFIX}", Clock::wall_ns().max(0));
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    {
        let mut w = BufWriter::new(File::create(&partial)?);
        for op in ops {
            serde_json::to_writer(&mut w, op)?;
            w.write_all(b"\n")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&partial, &path)?;
    // The rename is durable once the directory is.
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// The spill files in `dir`, oldest first.
pub fn spill_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(SPILL_PREFIX) && n.ends_with(SPILL_SUFFIX))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// Reads a spill file back.
pub fn read_spill(path: &Path) -> Result<Vec<Op>, StoreError> {
    let bad = |what: String| StoreError::other(format!("spill file {}: {what}", path.display()));
    let f = File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut ops = Vec::new();
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| bad(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(serde_json::from_str(&line).map_err(|e| bad(format!("line {}: {e}", n + 1)))?);
    }
    Ok(ops)
}

/// What [`replay`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Spill files replayed (and deleted).
    pub files: usize,
    /// Ops they held.
    pub ops: usize,
}

/// Replays every spill file in `dir` into `store`, oldest first, through `apply` (which writes a
/// batch or fails), deleting each file once it is in. Stops at the first failure, keeping the
/// file for the next start.
pub fn replay(
    dir: &Path,
    store: &mut dyn Store,
    mut apply: impl FnMut(&mut dyn Store, Vec<Op>) -> Result<(), StoreError>,
) -> Result<Replayed, StoreError> {
    let mut done = Replayed::default();
    let files = spill_files(dir).map_err(|e| StoreError::other(format!("reading {}: {e}", dir.display())))?;
    for path in files {
        let ops = read_spill(&path)?;
        let n = ops.len();
        apply(store, ops).map_err(|e| {
            StoreError::new(e.kind(), format!("replaying spill file {}: {e} (kept for the next start)", path.display()))
        })?;
        fs::remove_file(&path).map_err(|e| StoreError::other(format!("removing {}: {e}", path.display())))?;
        tracing::info!(file = %path.display(), writes = n, "replayed a spill file from an earlier stop");
        done.files += 1;
        done.ops += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MessageRow, SessionRow, UserRow};

    fn ops() -> Vec<Op> {
        vec![
            Op::UpsertUser(UserRow {
                id: 1,
                uuid: "a\"\\\u{1F600}".into(),
                display_name: "\u{0}".into(),
                left_ns: None,
            }),
            Op::InsertSession(SessionRow { uuid: u128::MAX, user_id: 1, created_ns: -5, last_active_ns: i64::MAX }),
            Op::Message(MessageRow {
                uuid: u128::MAX - 1,
                created_ns: 1,
                sender_id: 1,
                receiver_id: 1,
                body: "x".into(),
                attachments: Some("{\"k\":[1]}".into()),
            }),
            Op::TouchSessions(vec![(7, 8)]),
            Op::Watermark { user_id: 1, left_ns: 9 },
        ]
    }

    #[test]
    fn spill_files_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = spill(dir.path(), &ops()).unwrap();
        let second = spill(dir.path(), &ops()[..2]).unwrap();
        assert_eq!(spill_files(dir.path()).unwrap(), vec![first.clone(), second.clone()], "oldest first");
        assert_eq!(read_spill(&first).unwrap(), ops(), "every op back exactly, u128 and odd strings too");
        let mut seen = Vec::new();
        let r = replay(dir.path(), &mut crate::store::memory::MemoryStore, |_, ops| {
            seen.extend(ops);
            Ok(())
        })
        .unwrap();
        assert_eq!(r, Replayed { files: 2, ops: 7 });
        assert_eq!(seen.len(), 7);
        assert!(spill_files(dir.path()).unwrap().is_empty(), "replayed files are deleted");
    }

    #[test]
    fn a_failed_replay_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill(dir.path(), &ops()).unwrap();
        let err = replay(dir.path(), &mut crate::store::memory::MemoryStore, |_, _| Err(StoreError::other("down")))
            .unwrap_err();
        assert!(err.to_string().contains("kept for the next start"), "{err}");
        assert_eq!(spill_files(dir.path()).unwrap(), vec![file]);
    }

    #[test]
    fn dead_letters_append() {
        let dir = tempfile::tempdir().unwrap();
        let e = StoreError::new(crate::store::ErrorKind::Rejected, "no");
        dead_letter(dir.path(), &ops()[0], &e).unwrap();
        let path = dead_letter(dir.path(), &ops()[2], &e).unwrap();
        let lines: Vec<DeadLetter> =
            fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].op, ops()[2]);
        assert_eq!(lines[1].error, "no");
    }
}
