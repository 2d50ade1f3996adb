//! The durable journal: an append-only file of checksummed records, written with group commit
//! (every entry pushed while one write+fdatasync runs goes into the next one), truncated only
//! to roll back entries a new leader does not have, and repaired on open when its last record
//! is torn.
//!
//! File layout: an 8-byte header `DATOMJ1\n`, then records `[len u32 LE][crc32 u32 LE][payload]`
//! where the payload is JSON `{"t":term,"i":index,"c":commit,"d":data}`. `c` is the commit point
//! known when the record was written: after a crash it tells which entries are known committed.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::types::{Entry, EntryId};

const HEADER: &[u8; 8] = b"DATOMJ1\n";
const MAX_RECORD: u32 = 64 * 1024 * 1024;
/// Entries kept in memory for replication; older ones are read back from the file.
const CACHE: usize = 100_000;

#[derive(Serialize)]
struct RecOut<'a> {
    t: u64,
    i: u64,
    c: u64,
    d: &'a str,
}

#[derive(Deserialize)]
struct RecIn {
    t: u64,
    i: u64,
    c: u64,
    d: String,
}

/// What [`Journal::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries recovered.
    pub entries: u64,
    /// Highest commit point recorded in the journal.
    pub commit_hint: u64,
    /// A torn or corrupt tail that was cut off.
    pub truncated: Option<TruncatedTail>,
}

/// A cut-off journal tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    /// File offset the journal was truncated to.
    pub offset: u64,
    /// Bytes removed.
    pub removed_bytes: u64,
    /// What was wrong with the first bad record.
    pub reason: String,
}

struct Mem {
    terms: Vec<u64>,
    /// Byte offset of each durable record (u64::MAX until written).
    offsets: Vec<u64>,
    cache: VecDeque<Arc<Entry>>,
    /// Index of `cache[0]`.
    cache_first: u64,
    /// Commit point to record with each pushed entry.
    hints: VecDeque<u64>,
    durable: u64,
    commit_hint: u64,
}

impl Mem {
    fn last(&self) -> u64 {
        self.terms.len() as u64
    }
}

struct FileState {
    file: File,
    end: u64,
}

/// The journal of one replica. Cheap to share (`Arc`); all methods take `&self`.
pub struct Journal {
    path: PathBuf,
    mem: Mutex<Mem>,
    file: Arc<Mutex<FileState>>,
    reader: Arc<File>,
    flush_lock: tokio::sync::Mutex<()>,
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Journal {
    /// Opens (or creates) the journal at `path`, checking every record. A torn or corrupt tail
    /// is cut off (and fsync'd) and reported; everything before it is kept.
    pub fn open(path: &Path) -> io::Result<(Journal, OpenReport)> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut report = OpenReport::default();
        if data.is_empty() {
            file.write_all(HEADER)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            data.extend_from_slice(HEADER);
        } else if data.len() < HEADER.len() || &data[..HEADER.len()] != HEADER {
            return Err(other(format!(
                "{} is not a datom journal (bad header); move it away or point --data-dir elsewhere",
                path.display()
            )));
        }
        let mut terms = Vec::new();
        let mut offsets = Vec::new();
        let mut cache: VecDeque<Arc<Entry>> = VecDeque::new();
        let mut pos = HEADER.len();
        let mut bad: Option<String> = None;
        while pos < data.len() {
            let rest = &data[pos..];
            if rest.len() < 8 {
                bad = Some(format!("record header is {} of 8 bytes", rest.len()));
                break;
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().unwrap());
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
            if len > MAX_RECORD {
                bad = Some(format!("record length {len} is implausible"));
                break;
            }
            if rest.len() < 8 + len as usize {
                bad = Some(format!("record is {} of {} bytes", rest.len() - 8, len));
                break;
            }
            let payload = &rest[8..8 + len as usize];
            if crc32fast::hash(payload) != crc {
                bad = Some("checksum mismatch".into());
                break;
            }
            let rec: RecIn = match serde_json::from_slice(payload) {
                Ok(r) => r,
                Err(e) => {
                    bad = Some(format!("undecodable record: {e}"));
                    break;
                }
            };
            let expected = terms.len() as u64 + 1;
            if rec.i != expected || terms.last().is_some_and(|t| rec.t < *t) {
                bad = Some(format!("record {}.{} out of sequence (expected index {expected})", rec.t, rec.i));
                break;
            }
            terms.push(rec.t);
            offsets.push(pos as u64);
            report.commit_hint = report.commit_hint.max(rec.c.min(rec.i));
            cache.push_back(Arc::new(Entry { term: rec.t, index: rec.i, data: rec.d }));
            if cache.len() > CACHE {
                cache.pop_front();
            }
            pos += 8 + len as usize;
        }
        if let Some(reason) = bad {
            let removed = (data.len() - pos) as u64;
            file.set_len(pos as u64)?;
            file.sync_all()?;
            tracing::warn!(
                journal = %path.display(),
                offset = pos,
                removed_bytes = removed,
                %reason,
                "journal tail is torn or corrupt: truncated it after the last good record (entry {})",
                terms.len()
            );
            report.truncated = Some(TruncatedTail { offset: pos as u64, removed_bytes: removed, reason });
        }
        file.seek(SeekFrom::Start(pos as u64))?;
        report.entries = terms.len() as u64;
        let cache_first = terms.len() as u64 - cache.len() as u64 + 1;
        let durable = terms.len() as u64;
        let reader = File::open(path)?;
        let journal = Journal {
            path: path.to_path_buf(),
            mem: Mutex::new(Mem {
                terms,
                offsets,
                cache,
                cache_first,
                hints: VecDeque::new(),
                durable,
                commit_hint: report.commit_hint,
            }),
            file: Arc::new(Mutex::new(FileState { file, end: pos as u64 })),
            reader: Arc::new(reader),
            flush_lock: tokio::sync::Mutex::new(()),
        };
        Ok((journal, report))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Last entry (durable or not).
    pub fn last(&self) -> EntryId {
        let m = self.mem.lock().unwrap();
        EntryId { term: m.terms.last().copied().unwrap_or(0), index: m.last() }
    }

    /// Last durable entry.
    pub fn durable(&self) -> EntryId {
        let m = self.mem.lock().unwrap();
        let i = m.durable;
        EntryId { term: if i == 0 { 0 } else { m.terms[i as usize - 1] }, index: i }
    }

    /// Highest commit point recorded in the journal.
    pub fn commit_hint(&self) -> u64 {
        self.mem.lock().unwrap().commit_hint
    }

    /// Term of the entry at `index` (`Some(0)` for index 0).
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        self.mem.lock().unwrap().terms.get(index as usize - 1).copied()
    }

    /// First index of the run of `term` entries ending at `upto`.
    pub fn first_index_of_term(&self, term: u64, upto: u64) -> u64 {
        let m = self.mem.lock().unwrap();
        let mut first = upto.min(m.last());
        while first > 1 && m.terms[first as usize - 2] == term {
            first -= 1;
        }
        first
    }

    /// Last index holding an entry of `term`, if any.
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        let m = self.mem.lock().unwrap();
        let p = m.terms.partition_point(|t| *t <= term);
        (p > 0 && m.terms[p - 1] == term).then_some(p as u64)
    }

    /// Appends entries in memory (they must continue the journal); [`Journal::flush`] makes
    /// them durable. `commit` is recorded with them.
    pub fn push(&self, entries: &[Entry], commit: u64) -> io::Result<()> {
        let mut m = self.mem.lock().unwrap();
        for e in entries {
            if e.index != m.last() + 1 || m.terms.last().is_some_and(|t| e.term < *t) {
                return Err(other(format!(
                    "journal {}: entry {}.{} does not continue the journal (last {})",
                    self.path.display(),
                    e.term,
                    e.index,
                    m.last()
                )));
            }
            m.terms.push(e.term);
            m.offsets.push(u64::MAX);
            m.cache.push_back(Arc::new(e.clone()));
            m.hints.push_back(commit);
        }
        Ok(())
    }

    /// Writes every pushed entry and fdatasyncs: one write and one sync for all of them (group
    /// commit). Returns the durable last index.
    pub async fn flush(&self) -> io::Result<u64> {
        let _serial = self.flush_lock.lock().await;
        let (batch, hints) = {
            let m = self.mem.lock().unwrap();
            if m.durable == m.last() {
                return Ok(m.durable);
            }
            let from = m.durable + 1;
            let batch: Vec<Arc<Entry>> =
                (from..=m.last()).map(|i| m.cache[(i - m.cache_first) as usize].clone()).collect();
            let hints: Vec<u64> = m.hints.iter().copied().collect();
            (batch, hints)
        };
        let file = self.file.clone();
        let written = batch.len();
        let offsets = tokio::task::spawn_blocking(move || -> io::Result<Vec<u64>> {
            let mut fs = file.lock().unwrap();
            let mut buf = Vec::with_capacity(batch.len() * 96);
            let mut offsets = Vec::with_capacity(batch.len());
            for (e, c) in batch.iter().zip(hints.iter()) {
                let payload = serde_json::to_vec(&RecOut { t: e.term, i: e.index, c: *c, d: &e.data })
                    .expect("records serialise");
                offsets.push(fs.end + buf.len() as u64);
                buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
                buf.extend_from_slice(&payload);
            }
            let end = fs.end;
            fs.file.write_all_at(&buf, end)?;
            fs.file.sync_data()?;
            fs.end += buf.len() as u64;
            Ok(offsets)
        })
        .await
        .map_err(|e| other(format!("journal writer task failed: {e}")))??;
        let mut m = self.mem.lock().unwrap();
        let from = m.durable as usize;
        for (k, off) in offsets.into_iter().enumerate() {
            m.offsets[from + k] = off;
        }
        for _ in 0..written {
            if let Some(c) = m.hints.pop_front() {
                m.commit_hint = m.commit_hint.max(c);
            }
        }
        m.durable += written as u64;
        let durable = m.durable;
        // Keep the cache bounded, dropping only durable entries.
        while m.cache.len() > CACHE && m.cache_first <= m.durable {
            m.cache.pop_front();
            m.cache_first += 1;
        }
        Ok(durable)
    }

    /// Pushes and flushes: the follower's path.
    pub async fn append(&self, entries: &[Entry], commit: u64) -> io::Result<u64> {
        self.push(entries, commit)?;
        self.flush().await
    }

    /// Removes entries from `index` on (durable ones too) and fsyncs: the rollback of entries a
    /// new leader does not have. Pending (unflushed) entries must have been flushed first.
    pub async fn truncate_from(&self, index: u64) -> io::Result<()> {
        let _serial = self.flush_lock.lock().await;
        let offset = {
            let mut m = self.mem.lock().unwrap();
            if index == 0 || index > m.last() {
                return Ok(());
            }
            if m.durable != m.last() {
                return Err(other("journal truncate with unflushed entries".into()));
            }
            let offset = m.offsets[index as usize - 1];
            let keep = index as usize - 1;
            m.terms.truncate(keep);
            m.offsets.truncate(keep);
            m.durable = keep as u64;
            m.hints.clear();
            if index < m.cache_first {
                m.cache.clear();
                m.cache_first = index;
            } else {
                let k = (index - m.cache_first) as usize;
                m.cache.truncate(k);
            }
            offset
        };
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut fs = file.lock().unwrap();
            fs.file.set_len(offset)?;
            fs.file.sync_all()?;
            fs.end = offset;
            Ok(())
        })
        .await
        .map_err(|e| other(format!("journal truncate task failed: {e}")))?
    }

    /// Entries `from..=to` (capped at `max` entries), from memory or read back from the file.
    pub fn entries(&self, from: u64, to: u64, max: usize) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        if from == 0 || from > to {
            return Ok(out);
        }
        let m = self.mem.lock().unwrap();
        let to = to.min(m.last()).min(from + max as u64 - 1);
        let mut i = from;
        // Old entries come from the file (only durable entries ever leave the cache).
        let mut reads = Vec::new();
        while i <= to && i < m.cache_first {
            let start = m.offsets[i as usize - 1];
            let end = if (i as usize) < m.offsets.len() && m.offsets[i as usize] != u64::MAX {
                m.offsets[i as usize]
            } else {
                u64::MAX
            };
            reads.push((i, start, end));
            i += 1;
        }
        let cached: Vec<Entry> = (i..=to).map(|k| (*m.cache[(k - m.cache_first) as usize]).clone()).collect();
        drop(m);
        for (idx, start, end) in reads {
            out.push(self.read_record(idx, start, end)?);
        }
        out.extend(cached);
        Ok(out)
    }

    fn read_record(&self, index: u64, start: u64, end: u64) -> io::Result<Entry> {
        let mut head = [0u8; 8];
        self.reader.read_exact_at(&mut head, start)?;
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap()) as u64;
        if end != u64::MAX && start + 8 + len != end {
            return Err(other(format!("journal {}: record {index} has a bad length", self.path.display())));
        }
        let mut payload = vec![0u8; len as usize];
        self.reader.read_exact_at(&mut payload, start + 8)?;
        let rec: RecIn = serde_json::from_slice(&payload)
            .map_err(|e| other(format!("journal {}: record {index}: {e}", self.path.display())))?;
        Ok(Entry { term: rec.t, index: rec.i, data: rec.d })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(t: u64, i: u64) -> Entry {
        Entry { term: t, index: i, data: format!("op-{i}") }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_truncation_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.log");
        {
            let (j, r) = Journal::open(&p).unwrap();
            assert_eq!(r, OpenReport::default());
            j.append(&[e(1, 1), e(1, 2), e(1, 3)], 2).await.unwrap();
            j.push(&[e(2, 4)], 3).unwrap();
            assert_eq!(j.last(), EntryId::new(2, 4));
            assert_eq!(j.durable(), EntryId::new(1, 3));
            assert_eq!(j.flush().await.unwrap(), 4);
            assert!(j.push(&[e(1, 6)], 0).is_err(), "gaps are refused");
            assert!(j.push(&[e(1, 5)], 0).is_err(), "terms never go down");
        }
        let (j, r) = Journal::open(&p).unwrap();
        assert_eq!(r.entries, 4);
        assert_eq!(r.commit_hint, 3);
        assert!(r.truncated.is_none());
        assert_eq!(j.entries(1, 10, 100).unwrap(), vec![e(1, 1), e(1, 2), e(1, 3), e(2, 4)]);
        assert_eq!(j.last_index_of_term(1), Some(3));
        assert_eq!(j.first_index_of_term(1, 3), 1);
        j.truncate_from(3).await.unwrap();
        assert_eq!(j.last(), EntryId::new(1, 2));
        j.append(&[e(3, 3)], 0).await.unwrap();
        drop(j);
        let (j, _) = Journal::open(&p).unwrap();
        assert_eq!(j.entries(1, 10, 100).unwrap(), vec![e(1, 1), e(1, 2), e(3, 3)]);
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_off_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.log");
        {
            let (j, _) = Journal::open(&p).unwrap();
            j.append(&[e(1, 1), e(1, 2), e(1, 3)], 0).await.unwrap();
        }
        let len = std::fs::metadata(&p).unwrap().len();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 5).unwrap();
        let (j, r) = Journal::open(&p).unwrap();
        let t = r.truncated.expect("truncation reported");
        assert!(t.reason.contains("bytes"), "{}", t.reason);
        assert_eq!(j.last(), EntryId::new(1, 2));
        // The file was cut at the last good record: appending continues cleanly.
        j.append(&[e(1, 3)], 0).await.unwrap();
        drop(j);
        let (j, r) = Journal::open(&p).unwrap();
        assert!(r.truncated.is_none());
        assert_eq!(j.last(), EntryId::new(1, 3));
    }

    #[tokio::test]
    async fn a_flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.log");
        {
            let (j, _) = Journal::open(&p).unwrap();
            j.append(&[e(1, 1), e(1, 2)], 0).await.unwrap();
        }
        let mut data = std::fs::read(&p).unwrap();
        let n = data.len();
        data[n - 3] ^= 0xff;
        std::fs::write(&p, &data).unwrap();
        let (j, r) = Journal::open(&p).unwrap();
        assert_eq!(r.truncated.unwrap().reason, "checksum mismatch");
        assert_eq!(j.last(), EntryId::new(1, 1));
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.log");
        std::fs::write(&p, b"hello world").unwrap();
        let err = Journal::open(&p).err().unwrap();
        assert!(err.to_string().contains("not a datom journal"), "{err}");
    }
}
