//! The command journal: exactly-once execution under redelivery.
//!
//! Before a command touches the equipment its id is recorded as started; before its result is
//! sent, the result is recorded as finished. Both records are fsynced. A redelivered id is
//! answered from here without executing again — also after a restart. A command found started
//! but not finished after a restart was interrupted mid-execution: it is answered as failed with
//! an "outcome unknown" message, never executed a second time.
//!
//! The file is an append-only log of JSON lines, compacted into a fresh file (atomically) when
//! it grows; entries are kept at least `retention` (24 h by default) and at most `capacity`.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write,
    time::Duration,
};

use prost::Message;
use serde::{Deserialize, Serialize};
use shopfloor_wire::{proto::CommandResult, time::now_micros};

use crate::state::{StateDir, StateError};

const FILE: &str = "journal.log";

/// What the journal knows about one command id.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Started { at: i64 },
    Finished { at: i64, result: CommandResult },
}

impl Entry {
    fn at(&self) -> i64 {
        match self {
            Entry::Started { at } | Entry::Finished { at, .. } => *at,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    at: i64,
    /// Hex of the protobuf CommandResult; absent for a start record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("journal write failed: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Journal {
    state: StateDir,
    file: File,
    entries: HashMap<String, Entry>,
    retention: Duration,
    capacity: usize,
    lines: usize,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("entries", &self.entries.len()).finish_non_exhaustive()
    }
}

fn encode(id: &str, entry: &Entry) -> String {
    let line = match entry {
        Entry::Started { at } => Line { id: id.to_owned(), at: *at, result: None },
        Entry::Finished { at, result } => {
            Line { id: id.to_owned(), at: *at, result: Some(hex_encode(&result.encode_to_vec())) }
        }
    };
    let mut s = serde_json::to_string(&line).expect("journal lines always serialize");
    s.push('\n');
    s
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn parse(text: &str) -> Result<(HashMap<String, Entry>, usize), String> {
    let mut entries = HashMap::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut count = 0;
    for (i, raw) in lines.iter().enumerate() {
        if raw.is_empty() {
            continue;
        }
        let last = i + 1 == lines.len();
        let line: Line = match serde_json::from_str(raw) {
            Ok(l) => l,
            // A crash mid-append leaves a torn last line (no newline): that record never
            // completed, so it never counted.
            Err(_) if last => break,
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        };
        let entry = match line.result {
            None => Entry::Started { at: line.at },
            Some(hex) => {
                let bytes = hex_decode(&hex).ok_or_else(|| format!("line {}: result is not hex", i + 1))?;
                let result = CommandResult::decode(bytes.as_slice()).map_err(|e| format!("line {}: {e}", i + 1))?;
                Entry::Finished { at: line.at, result }
            }
        };
        count += 1;
        // A finished record is final: a later start record for the same id cannot exist.
        match (entries.get(&line.id), &entry) {
            (Some(Entry::Finished { .. }), Entry::Started { .. }) => {}
            _ => {
                entries.insert(line.id, entry);
            }
        }
    }
    Ok((entries, count))
}

impl Journal {
    /// Opens (and replays) the journal.
    pub fn open(state: &StateDir, retention: Duration, capacity: usize) -> Result<Self, JournalError> {
        let (entries, lines) = match state.read(FILE)? {
            None => (HashMap::new(), 0),
            Some(bytes) => match parse(&String::from_utf8_lossy(&bytes)) {
                Ok(x) => x,
                Err(reason) => {
                    // Refusing to start would leave the plant unmanaged; starting empty could
                    // re-execute a redelivered command. Keep the evidence and say so loudly.
                    let err = state.quarantine(FILE, reason);
                    tracing::error!("{err}; redelivered commands from before this point may not be recognised");
                    (HashMap::new(), 0)
                }
            },
        };
        let file = OpenOptions::new().create(true).append(true).open(state.path(FILE))?;
        let mut j = Self { state: state.clone(), file, entries, retention, capacity, lines };
        j.compact_if_needed()?;
        Ok(j)
    }

    pub fn lookup(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn append(&mut self, id: &str, entry: Entry) -> Result<(), JournalError> {
        self.file.write_all(encode(id, &entry).as_bytes())?;
        self.file.sync_data()?;
        self.entries.insert(id.to_owned(), entry);
        self.lines += 1;
        self.compact_if_needed()
    }

    /// Records that `id` is about to touch the equipment. Durable on return.
    pub fn start(&mut self, id: &str) -> Result<(), JournalError> {
        self.append(id, Entry::Started { at: now_micros() })
    }

    /// Records `id`'s result. Durable on return: only then may the result be sent.
    pub fn finish(&mut self, id: &str, result: &CommandResult) -> Result<(), JournalError> {
        self.append(id, Entry::Finished { at: now_micros(), result: result.clone() })
    }

    fn compact_if_needed(&mut self) -> Result<(), JournalError> {
        if self.lines <= 2 * self.entries.len().max(1024) && self.entries.len() <= self.capacity {
            return Ok(());
        }
        let horizon = now_micros() - i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        if self.entries.len() > self.capacity {
            // Over capacity: drop the oldest entries past the retention horizon first, then the
            // oldest regardless (the capacity is the hard bound on disk and memory).
            let mut ages: Vec<(i64, String)> = self.entries.iter().map(|(k, e)| (e.at(), k.clone())).collect();
            ages.sort();
            let excess = self.entries.len() - self.capacity;
            for (at, id) in ages.into_iter().take(excess) {
                if at >= horizon {
                    tracing::warn!("journal over capacity: dropping {id}, younger than the retention period");
                }
                self.entries.remove(&id);
            }
        }
        let mut text = String::new();
        let mut ordered: Vec<(&String, &Entry)> = self.entries.iter().collect();
        ordered.sort_by_key(|(_, e)| e.at());
        for (id, e) in ordered {
            text.push_str(&encode(id, e));
        }
        self.state.write(FILE, text.as_bytes(), 0o600)?;
        self.file = OpenOptions::new().append(true).open(self.state.path(FILE))?;
        self.lines = self.entries.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i32) -> CommandResult {
        CommandResult { id: "c".into(), code, message: "done".into(), ..Default::default() }
    }

    #[test]
    fn results_survive_a_restart_and_torn_last_lines_are_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("state");
        {
            let mut j = Journal::open(&state, Duration::from_secs(86400), 100).expect("open");
            j.start("a").expect("start");
            j.finish("a", &result(1)).expect("finish");
            j.start("b").expect("start");
        }
        // A crash in the middle of appending the next record.
        OpenOptions::new()
            .append(true)
            .open(state.path(FILE))
            .expect("f")
            .write_all(b"{\"id\":\"c\",\"at\"")
            .expect("w");
        let j = Journal::open(&state, Duration::from_secs(86400), 100).expect("reopen");
        assert_eq!(
            j.lookup("a"),
            Some(&Entry::Finished { at: j.lookup("a").map(Entry::at).unwrap_or_default(), result: result(1) })
        );
        assert!(matches!(j.lookup("b"), Some(Entry::Started { .. })));
        assert_eq!(j.lookup("c"), None);
    }

    #[test]
    fn the_journal_is_bounded_and_compacted() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("state");
        let mut j = Journal::open(&state, Duration::from_secs(0), 50).expect("open");
        for i in 0..500 {
            let id = format!("cmd-{i}");
            j.start(&id).expect("start");
            j.finish(&id, &result(1)).expect("finish");
        }
        assert!(j.len() <= 50, "{}", j.len());
        assert!(j.lookup("cmd-499").is_some(), "the newest are kept");
        let lines = std::fs::read_to_string(state.path(FILE)).expect("read").lines().count();
        assert!(lines <= 2 * 1024, "{lines}");
    }

    #[test]
    fn a_corrupt_journal_is_moved_aside_not_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("state");
        state.write(FILE, b"garbage\n{\"id\":\"a\",\"at\":1}\n", 0o600).expect("write");
        let j = Journal::open(&state, Duration::from_secs(60), 10).expect("open");
        assert!(j.is_empty());
        assert!(
            std::fs::read_dir(dir.path()).expect("ls").any(|e| e
                .expect("e")
                .file_name()
                .to_string_lossy()
                .starts_with("journal.log.corrupt-"))
        );
    }
}
