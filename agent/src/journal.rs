//! The command journal: exactly-once execution under redelivery.
//!
//! Before a command touches the equipment its id is recorded as started; before its result is
//! sent, the result is recorded as finished. Both records are fsynced. A redelivered id is
//! answered from here without executing again — also after a restart. A command found started
//! but not finished after a restart was interrupted mid-execution: it is answered as failed with
//! an "outcome unknown" message, never executed a second time.
//!
//! The file is an append-only log of JSON lines, compacted into a fresh file (atomically) when
//! it grows. Crash safety rests on three rules:
//! - a record counts only once its newline is on disk; a torn tail (a crash or a full disk in the
//!   middle of an append) is cut off at open, and after a failed append the file is truncated
//!   back to its last whole record before anything else is written — so no record is ever
//!   appended onto a partial one;
//! - an unreadable line in the middle is skipped, not fatal: every intact record is kept, the
//!   original file is copied aside as evidence and the journal is rewritten from what was read;
//! - entries younger than `retention` are never evicted: when `capacity` is reached with all of
//!   them inside the window, new commands are refused instead (the caller reports why).

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
    #[error(
        "the journal holds {entries} commands, all younger than its {retention:?} retention period, and may not \
         forget any of them; new commands are refused until the oldest ages out (raise the capacity if this \
         rate of commands is expected: `shopfloor-agent run --journal-capacity`, or journalCapacity in the config file)"
    )]
    Full { entries: usize, retention: Duration },
    #[error(
        "an earlier journal write failed and the partial record could not be removed ({0}); no command runs until \
         the agent is restarted with a writable state directory"
    )]
    Poisoned(String),
}

/// What opening found, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of a torn last record that were cut off.
    pub torn_tail_bytes: usize,
    /// Unreadable lines skipped (their records are lost; every other record is kept).
    pub unreadable_lines: usize,
    /// Records salvaged from lines where an older agent had appended onto a torn record.
    pub salvaged: usize,
}

pub struct Journal {
    state: StateDir,
    file: File,
    /// Length of the file up to the end of its last whole record.
    good_len: u64,
    poisoned: Option<String>,
    entries: HashMap<String, Entry>,
    retention: Duration,
    capacity: usize,
    lines: usize,
    recovery: Recovery,
    /// Fail the next append after this many bytes, as a full disk would (crash tests only).
    #[cfg(test)]
    fault: Option<usize>,
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
            Line { id: id.to_owned(), at: *at, result: Some(hex::encode(result.encode_to_vec())) }
        }
    };
    let mut s = serde_json::to_string(&line).expect("journal lines always serialize");
    s.push('\n');
    s
}

fn decode(raw: &[u8]) -> Option<(String, Entry)> {
    let line: Line = serde_json::from_slice(raw).ok()?;
    let entry = match line.result {
        None => Entry::Started { at: line.at },
        Some(h) => {
            Entry::Finished { at: line.at, result: CommandResult::decode(hex::decode(h).ok()?.as_slice()).ok()? }
        }
    };
    Some((line.id, entry))
}

/// The file's records, the length of its whole-record prefix, and what was repaired.
struct Parsed {
    records: Vec<(String, Entry)>,
    good_len: u64,
    recovery: Recovery,
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut records = Vec::new();
    let mut recovery = Recovery::default();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            // No newline: the last append never completed, so that record never counted.
            recovery.torn_tail_bytes = bytes.len() - pos;
            break;
        };
        let raw = &bytes[pos..pos + nl];
        pos += nl + 1;
        if raw.is_empty() {
            continue;
        }
        if let Some(r) = decode(raw) {
            records.push(r);
            continue;
        }
        // An agent before this journal format appended after a torn record, leaving
        // `<torn part>{"id":…}` on one line: the record after the tear is whole.
        let salvaged = raw
            .windows(6)
            .enumerate()
            .rev()
            .filter(|(i, w)| *i > 0 && *w == b"{\"id\":")
            .find_map(|(i, _)| decode(&raw[i..]));
        match salvaged {
            Some(r) => {
                recovery.salvaged += 1;
                records.push(r);
            }
            None => recovery.unreadable_lines += 1,
        }
    }
    let good_len = (bytes.len() - recovery.torn_tail_bytes) as u64;
    Parsed { records, good_len, recovery }
}

fn replay(records: Vec<(String, Entry)>) -> HashMap<String, Entry> {
    let mut entries = HashMap::new();
    for (id, entry) in records {
        // A finished record is final: a later start record for the same id cannot exist.
        match (entries.get(&id), &entry) {
            (Some(Entry::Finished { .. }), Entry::Started { .. }) => {}
            _ => {
                entries.insert(id, entry);
            }
        }
    }
    entries
}

fn sync_dir(state: &StateDir) -> std::io::Result<()> {
    File::open(state.root())?.sync_all()
}

impl Journal {
    /// Opens (and replays) the journal, repairing what a crash or a full disk left behind.
    pub fn open(state: &StateDir, retention: Duration, capacity: usize) -> Result<Self, JournalError> {
        let path = state.path(FILE);
        let bytes = state.read(FILE)?;
        let created = bytes.is_none();
        let Parsed { records, good_len, recovery } = parse(bytes.as_deref().unwrap_or_default());
        let lines = records.len();
        let entries = replay(records);
        if recovery.unreadable_lines > 0 || recovery.salvaged > 0 {
            // Keep the evidence, then continue from everything that could be read: starting
            // empty would let a redelivered command execute a second time.
            let evidence = state.path(&format!("{FILE}.damaged-{}", now_micros() / 1_000_000));
            std::fs::copy(&path, &evidence)?;
            tracing::error!(
                file = %path.display(),
                copy = %evidence.display(),
                unreadable_lines = recovery.unreadable_lines,
                salvaged = recovery.salvaged,
                kept = entries.len(),
                "the command journal had damaged lines; every readable record is kept, the original is copied aside"
            );
        }
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
        if recovery.torn_tail_bytes > 0 {
            tracing::warn!(
                file = %path.display(),
                bytes = recovery.torn_tail_bytes,
                "cutting off a torn last journal record (an append interrupted by a crash or a full disk)"
            );
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        if created {
            sync_dir(state)?;
        }
        let mut j = Self {
            state: state.clone(),
            file,
            good_len,
            poisoned: None,
            entries,
            retention,
            capacity,
            lines,
            recovery: recovery.clone(),
            #[cfg(test)]
            fault: None,
        };
        if recovery.unreadable_lines > 0 || recovery.salvaged > 0 {
            j.rewrite()?;
        } else {
            j.compact_if_needed()?;
        }
        Ok(j)
    }

    /// What opening repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
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

    /// Makes the next append fail after writing `bytes` of its record, as a full disk does.
    #[cfg(test)]
    fn fail_next_append_after(&mut self, bytes: usize) {
        self.fault = Some(bytes);
    }

    fn write_record(&mut self, record: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        self.file.seek(SeekFrom::Start(self.good_len))?;
        #[cfg(test)]
        if let Some(n) = self.fault.take() {
            self.file.write_all(&record[..n.min(record.len())])?;
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.file.write_all(record)?;
        self.file.sync_data()
    }

    fn append(&mut self, id: &str, entry: Entry) -> Result<(), JournalError> {
        if let Some(why) = &self.poisoned {
            return Err(JournalError::Poisoned(why.clone()));
        }
        let record = encode(id, &entry);
        if let Err(e) = self.write_record(record.as_bytes()) {
            // Part of the record may be on disk: cut it off so the next record starts on a
            // line of its own. If even that fails, nothing more may be written.
            if let Err(cut) = self.file.set_len(self.good_len).and_then(|()| self.file.sync_all()) {
                self.poisoned = Some(format!("{e}; then truncating: {cut}"));
            }
            return Err(e.into());
        }
        self.good_len += record.len() as u64;
        self.entries.insert(id.to_owned(), entry);
        self.lines += 1;
        self.compact_if_needed()
    }

    /// Records that `id` is about to touch the equipment. Durable on return; refused when the
    /// journal cannot take it without forgetting a command still inside the retention window.
    pub fn start(&mut self, id: &str) -> Result<(), JournalError> {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(id) {
            self.evict_expired();
            if self.entries.len() >= self.capacity {
                return Err(JournalError::Full { entries: self.entries.len(), retention: self.retention });
            }
        }
        self.append(id, Entry::Started { at: now_micros() })
    }

    /// Records `id`'s result. Durable on return: only then may the result be sent.
    pub fn finish(&mut self, id: &str, result: &CommandResult) -> Result<(), JournalError> {
        self.append(id, Entry::Finished { at: now_micros(), result: result.clone() })
    }

    /// Drops entries older than the retention period, oldest first, down to the capacity.
    fn evict_expired(&mut self) {
        let horizon = now_micros() - i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        let mut old: Vec<(i64, String)> =
            self.entries.iter().filter(|(_, e)| e.at() < horizon).map(|(k, e)| (e.at(), k.clone())).collect();
        old.sort();
        let excess = (self.entries.len() + 1).saturating_sub(self.capacity);
        for (_, id) in old.into_iter().take(excess) {
            self.entries.remove(&id);
        }
    }

    fn compact_if_needed(&mut self) -> Result<(), JournalError> {
        if self.lines <= 2 * self.entries.len().max(1024) {
            return Ok(());
        }
        self.rewrite()
    }

    /// Replaces the file with one record per entry, atomically.
    fn rewrite(&mut self) -> Result<(), JournalError> {
        let mut text = String::new();
        let mut ordered: Vec<(&String, &Entry)> = self.entries.iter().collect();
        ordered.sort_by_key(|(_, e)| e.at());
        for (id, e) in ordered {
            text.push_str(&encode(id, e));
        }
        self.state.write(FILE, text.as_bytes(), 0o600)?;
        self.file = OpenOptions::new().write(true).open(self.state.path(FILE))?;
        self.good_len = text.len() as u64;
        self.lines = self.entries.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    fn result(code: i32) -> CommandResult {
        CommandResult { id: "c".into(), code, message: "done".into(), ..Default::default() }
    }

    fn fresh() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("state");
        (dir, state)
    }

    fn damaged_copies(state: &StateDir) -> usize {
        std::fs::read_dir(state.root())
            .expect("ls")
            .filter(|e| e.as_ref().expect("e").file_name().to_string_lossy().contains(".damaged-"))
            .count()
    }

    /// The byte range of each record in the file, by (id, finished?).
    fn record_spans(bytes: &[u8]) -> Vec<((String, bool), std::ops::Range<usize>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let (id, e) = decode(&line[..line.len() - 1]).expect("whole record");
            out.push(((id, matches!(e, Entry::Finished { .. })), pos..pos + line.len()));
            pos += line.len();
        }
        out
    }

    /// A crash can leave the file cut at any byte of the records appended last. At every such
    /// cut: whatever was durable before the cut is known (so a redelivered command is never run
    /// twice, and a finished result is never lost), nothing is moved aside, and the next append
    /// lands on a line of its own so the following open sees a clean journal.
    #[test]
    fn a_cut_at_every_byte_of_the_last_records_keeps_every_whole_record_and_later_appends() {
        let (_d, state) = fresh();
        {
            let mut j = Journal::open(&state, DAY, 100).expect("open");
            j.start("a").expect("start");
            j.finish("a", &result(1)).expect("finish");
            j.start("b").expect("start");
            j.finish("b", &result(7)).expect("finish");
            j.start("c").expect("start");
        }
        let full = std::fs::read(state.path(FILE)).expect("read");
        let spans = record_spans(&full);
        let from = spans[2].1.start; // every byte of b's records and c's start
        for cut in from..=full.len() {
            let (_d2, s) = fresh();
            std::fs::write(s.path(FILE), &full[..cut]).expect("cut");
            let mut j = Journal::open(&s, DAY, 100).expect("open after a cut");
            assert_eq!(damaged_copies(&s), 0, "cut at {cut}: a torn tail is not damage");
            for ((id, finished), span) in &spans {
                let durable = span.end <= cut;
                match (j.lookup(id), durable, finished) {
                    (Some(Entry::Finished { result, .. }), true, true) => {
                        assert_eq!(result.code, if id == "a" { 1 } else { 7 }, "cut at {cut}: {id}")
                    }
                    (Some(_), true, false) => {}
                    (found, false, true) => {
                        let started = spans.iter().any(|((i, f), s)| i == id && !f && s.end <= cut);
                        assert_eq!(
                            started,
                            matches!(found, Some(Entry::Started { .. })),
                            "cut at {cut}: {id}'s start was durable, so it must be known (outcome unknown), never re-run"
                        )
                    }
                    (None, false, false) => {} // never started: it never touched the equipment
                    (found, durable, finished) => {
                        panic!("cut at {cut}: {id} finished={finished} durable={durable} found {found:?}")
                    }
                }
            }
            j.start("d").expect("start after the cut");
            j.finish("d", &result(3)).expect("finish after the cut");
            drop(j);
            let again = Journal::open(&s, DAY, 100).expect("reopen");
            assert_eq!(again.recovery(), &Recovery::default(), "cut at {cut}: the second open finds a clean journal");
            assert!(matches!(again.lookup("d"), Some(Entry::Finished { .. })), "cut at {cut}");
            assert!(matches!(again.lookup("a"), Some(Entry::Finished { .. })), "cut at {cut}");
        }
    }

    /// A full disk (ENOSPC) after any number of bytes of a start or a finish record: the append
    /// fails, the partial record is cut off at once, later records land whole, and after a
    /// restart a failed start is unknown (the command was refused, never ran) while a failed
    /// finish leaves the command started (answered outcome-unknown, never re-run).
    #[test]
    fn a_full_disk_at_every_byte_of_a_record_leaves_no_torn_line_behind() {
        let record_len = encode("b", &Entry::Finished { at: now_micros(), result: result(1) }).len();
        for step in ["start", "finish"] {
            for n in 0..record_len {
                let (_d, state) = fresh();
                let mut j = Journal::open(&state, DAY, 100).expect("open");
                j.start("a").expect("start");
                j.finish("a", &result(1)).expect("finish");
                if step == "finish" {
                    j.start("b").expect("start");
                }
                j.fail_next_append_after(n);
                let failed = if step == "start" { j.start("b") } else { j.finish("b", &result(1)) };
                assert!(matches!(failed, Err(JournalError::Io(_))), "{step} fails after {n} bytes");
                j.start("c").expect("the journal keeps working once the disk has room");
                j.finish("c", &result(2)).expect("finish c");
                drop(j);
                let j = Journal::open(&state, DAY, 100).expect("reopen");
                assert_eq!(j.recovery(), &Recovery::default(), "{step} failing after {n} bytes left damage");
                assert!(matches!(j.lookup("a"), Some(Entry::Finished { .. })));
                assert!(matches!(j.lookup("c"), Some(Entry::Finished { .. })));
                match step {
                    "start" => assert_eq!(j.lookup("b"), None, "a refused start is not recorded"),
                    _ => assert!(matches!(j.lookup("b"), Some(Entry::Started { .. })), "outcome unknown"),
                }
            }
        }
    }

    #[test]
    fn a_journal_torn_by_an_older_agent_keeps_every_readable_record() {
        let (_d, state) = fresh();
        let a = encode("a", &Entry::Finished { at: 10, result: result(1) });
        let b_start = encode("b", &Entry::Started { at: 11 });
        // An older agent appended `c` onto a torn record, and one line is plain garbage.
        let text = format!("{a}{{\"id\":\"x\",\"a{b_start}garbage\n{}", encode("c", &Entry::Started { at: 12 }));
        std::fs::write(state.path(FILE), text).expect("write");
        let j = Journal::open(&state, DAY, 100).expect("open");
        assert_eq!(j.recovery(), &Recovery { torn_tail_bytes: 0, unreadable_lines: 1, salvaged: 1 });
        assert!(matches!(j.lookup("a"), Some(Entry::Finished { .. })));
        assert!(matches!(j.lookup("b"), Some(Entry::Started { .. })), "salvaged from behind the tear");
        assert!(matches!(j.lookup("c"), Some(Entry::Started { .. })), "records after a bad line are kept");
        assert_eq!(damaged_copies(&state), 1, "the original is kept as evidence");
        drop(j);
        let j = Journal::open(&state, DAY, 100).expect("reopen");
        assert_eq!(j.recovery(), &Recovery::default(), "the journal was rewritten clean");
        assert_eq!(j.len(), 3);
    }

    #[test]
    fn nothing_inside_the_retention_window_is_evicted_new_commands_are_refused_instead() {
        let (_d, state) = fresh();
        let mut j = Journal::open(&state, DAY, 3).expect("open");
        for id in ["a", "b", "c"] {
            j.start(id).expect("start");
            j.finish(id, &result(1)).expect("finish");
        }
        let refused = j.start("d");
        assert!(matches!(refused, Err(JournalError::Full { entries: 3, .. })), "{refused:?}");
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("retention") && message.contains("--journal-capacity"), "{message}");
        for id in ["a", "b", "c"] {
            assert!(j.lookup(id).is_some(), "{id} is still inside the retention window");
        }
        // Finishing a started command is never refused: its record replaces the start.
        drop(j);
        let (_d, state) = fresh();
        let mut j = Journal::open(&state, Duration::ZERO, 3).expect("open");
        for id in ["a", "b", "c", "d"] {
            j.start(id).expect("past the retention window the oldest make room");
            j.finish(id, &result(1)).expect("finish");
        }
        assert_eq!(j.lookup("a"), None);
        assert!(j.lookup("d").is_some());
    }

    #[test]
    fn the_journal_is_compacted() {
        let (_d, state) = fresh();
        let mut j = Journal::open(&state, Duration::ZERO, 50).expect("open");
        for i in 0..2000 {
            let id = format!("cmd-{i}");
            j.start(&id).expect("start");
            j.finish(&id, &result(1)).expect("finish");
        }
        assert!(j.len() <= 50, "{}", j.len());
        assert!(j.lookup("cmd-1999").is_some(), "the newest are kept");
        let lines = std::fs::read_to_string(state.path(FILE)).expect("read").lines().count();
        assert!(lines <= 2 * 1024, "{lines}");
        drop(j);
        assert!(Journal::open(&state, Duration::ZERO, 50).expect("reopen").lookup("cmd-1999").is_some());
    }
}
