//! Acknowledgements to senders that ask for them (PROTOCOL.md section 6):
//! after each frame handled, one 16-byte [`Ack`] back on the connection,
//! written without ever blocking the frame path.

use bitmask_wire::{Ack, ACK_LEN};
use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Writes acknowledgements on a connection without blocking: an ack the
/// socket cannot take now is superseded by the next one (each covers every
/// frame before it); one it took only in part is finished first, so the
/// stream of acks stays whole.
pub struct AckWriter {
    sock: TcpStream,
    /// The unwritten rest of an ack whose first bytes went out.
    partial: Vec<u8>,
    /// The newest ack not yet begun (the socket was full).
    unsent: Option<u64>,
    /// The last `next` handed to the socket whole.
    pub sent: Option<u64>,
    gone: bool,
    /// The record the connection follows, as every ack names it.
    record: (u32, bool),
}

impl AckWriter {
    /// Acks on `sock` (a clone of the connection's socket) for a connection
    /// following lineage `l` (`new`: it started it).
    pub fn new(sock: TcpStream, l: &Lineage, new: bool) -> Self {
        AckWriter {
            record: (l.record_id(), new),
            sock,
            partial: Vec::new(),
            unsent: None,
            sent: None,
            gone: false,
        }
    }

    fn encode(&self, next: u64) -> [u8; ACK_LEN] {
        Ack {
            next,
            record: self.record.0,
            new_record: self.record.1,
        }
        .encode()
    }

    /// Acknowledges every frame below `next` (non-blocking).
    pub fn ack(&mut self, next: u64) {
        self.unsent = Some(next);
        self.flush_now();
    }

    /// Writes what it can without blocking.
    fn flush_now(&mut self) {
        while !self.gone {
            if !self.partial.is_empty() {
                let p = std::mem::take(&mut self.partial);
                let n = self.send(&p).unwrap_or(0);
                self.partial = p;
                self.partial.drain(..n);
                if !self.partial.is_empty() {
                    return;
                }
            }
            let Some(next) = self.unsent else { return };
            let b = self.encode(next);
            match self.send(&b) {
                Some(0) | None => return,
                Some(n) => {
                    self.unsent = None;
                    self.sent = Some(next);
                    self.partial.extend_from_slice(&b[n..]);
                }
            }
        }
    }

    /// At the end of the stream: waits up to `limit` for what is left to go
    /// out (the sender is waiting for its last ack).
    pub fn finish(&mut self, limit: Duration) {
        self.flush_now();
        if self.gone || (self.partial.is_empty() && self.unsent.is_none()) {
            return;
        }
        use std::io::Write;
        let _ = self.sock.set_write_timeout(Some(limit));
        let mut rest = std::mem::take(&mut self.partial);
        if let Some(next) = self.unsent.take() {
            rest.extend_from_slice(&self.encode(next));
            self.sent = Some(next);
        }
        if let Err(e) = self.sock.write_all(&rest) {
            log::debug!("last acknowledgement not written: {e}");
        }
    }

    /// One non-blocking send: bytes taken, or `None` when the socket is full
    /// or gone (a sender that went away: nothing more is tried).
    fn send(&mut self, b: &[u8]) -> Option<usize> {
        debug_assert!(b.len() <= ACK_LEN);
        match socket2::SockRef::from(&self.sock)
            .send_with_flags(b, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        {
            Ok(n) => Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
            Err(e) => {
                log::debug!("acknowledgements stop: {e}");
                self.gone = true;
                None
            }
        }
    }
}

/// Per sender name, one past the last frame handled, for connections that
/// resume an earlier one (`HELLO_RESUME`): the frames they send again that
/// were already handled are skipped. A record belongs to one lineage (a
/// sender process: its first connection and those that resume it), so a
/// frame handled late by a connection of an earlier process cannot make a
/// later one's frames look handled. Bounded: past [`RECORDS`] names the
/// least recently used are forgotten (a resumed sender then sends
/// everything unconfirmed again: frames whose files the output directory
/// holds as they are are skipped, as after a restart, the rest written
/// again: at least once, never lost).
///
/// Each record also holds the name's writer lock: one connection of a name
/// handles a frame at a time, so the check "handled before?" and the write
/// cannot interleave with an older connection of the same sender still
/// writing.
#[derive(Default)]
pub struct Handled {
    next: HashMap<String, Record>,
    clock: u64,
    lineages: u64,
}

struct Record {
    next: u64,
    lineage: u64,
    used: u64,
    writer: Arc<Mutex<()>>,
    /// Frames the lineage's connections may still look for in the output
    /// directory (a lineage that a resuming sender started after a
    /// restart): kept here, so a reconnect goes on where the last left.
    on_disk: u32,
}

/// The key of a sender's record: its name and its host's address. Two
/// senders that share a name (Pis cloned from one SD card keep one host
/// name, the default `--name`) then keep records of their own: else one's
/// resumed connection would find the other's, and its frames below it
/// would be skipped as handled. (A sender whose address changes resumes
/// with no record: it sends its unconfirmed frames again, and frames found
/// in the output directory are not written twice.)
pub fn record_key(name: &str, ip: std::net::IpAddr) -> String {
    format!("{name}@{}", ip.to_canonical())
}

/// Names whose record is kept.
pub const RECORDS: usize = 1024;

/// A connection's place in [`Handled`].
#[derive(Clone)]
pub struct Lineage {
    /// The record's key ([`record_key`]).
    pub key: String,
    /// The lineage's number.
    pub id: u64,
    /// Serialises the handling of this name's frames.
    pub writer: Arc<Mutex<()>>,
}

impl Lineage {
    /// The id acknowledgements give the lineage's record (1..=
    /// [`bitmask_wire::MAX_RECORD_ID`], wrapping).
    pub fn record_id(&self) -> u32 {
        (self.id.saturating_sub(1) % bitmask_wire::MAX_RECORD_ID as u64) as u32 + 1
    }
}

impl Handled {
    /// A new connection of `name`: its lineage (the earlier one if it
    /// resumes and the record is still kept, else a new one), where the
    /// record ends (what it may skip), and whether the lineage is new.
    pub fn open(&mut self, name: &str, resumes: bool) -> (Lineage, u64, bool) {
        self.clock += 1;
        let clock = self.clock;
        if resumes {
            if let Some(r) = self.next.get_mut(name) {
                r.used = clock;
                let l = Lineage {
                    key: name.to_owned(),
                    id: r.lineage,
                    writer: r.writer.clone(),
                };
                return (l, r.next, false);
            }
        }
        self.lineages += 1;
        // a fresh start (or a record forgotten): a new lineage from 0; the
        // writer lock stays the name's, shared with older connections
        let writer = self
            .next
            .get(name)
            .map(|r| r.writer.clone())
            .unwrap_or_default();
        if !self.next.contains_key(name) && self.next.len() >= RECORDS {
            self.evict();
        }
        self.next.insert(
            name.to_owned(),
            Record {
                next: 0,
                lineage: self.lineages,
                used: clock,
                writer: writer.clone(),
                on_disk: 0,
            },
        );
        (
            Lineage {
                key: name.to_owned(),
                id: self.lineages,
                writer,
            },
            0,
            true,
        )
    }

    /// Where lineage `l` of `name` has handled frames up to (0 when its
    /// record is gone or belongs to another lineage now).
    pub fn next(&self, name: &str, l: u64) -> u64 {
        self.next
            .get(name)
            .filter(|r| r.lineage == l)
            .map_or(0, |r| r.next)
    }

    /// How many frames lineage `l` of `name` may still look for in the
    /// output directory (0 when its record is gone or another's).
    pub fn on_disk(&self, name: &str, l: u64) -> u32 {
        self.next
            .get(name)
            .filter(|r| r.lineage == l)
            .map_or(0, |r| r.on_disk)
    }

    /// Sets [`Handled::on_disk`] of lineage `l` of `name`.
    pub fn set_on_disk(&mut self, name: &str, l: u64, n: u32) {
        if let Some(r) = self.next.get_mut(name).filter(|r| r.lineage == l) {
            r.on_disk = n;
        }
    }

    /// Frame `sequence` of `name`, lineage `l`, was handled.
    pub fn done(&mut self, name: &str, l: u64, sequence: u64) {
        self.clock += 1;
        if let Some(r) = self.next.get_mut(name).filter(|r| r.lineage == l) {
            // frames sent again (below the record) must not lower it
            r.next = r.next.max(sequence.saturating_add(1));
            r.used = self.clock;
        }
    }

    /// Forgets the least recently used quarter of the records, but never
    /// one a connection holds (its writer lock must stay the name's).
    fn evict(&mut self) {
        let mut ages: Vec<u64> = self.next.values().map(|r| r.used).collect();
        ages.sort_unstable();
        let cut = ages[RECORDS / 4];
        self.next
            .retain(|_, r| r.used > cut || Arc::strong_count(&r.writer) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitmask_wire::AckReader;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn senders_of_one_name_on_two_hosts_keep_records_of_their_own() {
        // two Pis cloned from one SD card, both "raspberrypi", started
        // together: their sequence numbers overlap
        let mut h = Handled::default();
        let (one, two) = (
            record_key("raspberrypi", [10, 0, 0, 2].into()),
            record_key("raspberrypi", [10, 0, 0, 3].into()),
        );
        let (a, _, _) = h.open(&one, false);
        for q in 0..100 {
            h.done(&a.key, a.id, q);
        }
        let (b, _, _) = h.open(&two, false);
        h.done(&b.key, b.id, 40);
        // the second's resumed connection finds its own record (41), not
        // the first's (100), so its frames 41..100 are not skipped
        let (b2, next, _) = h.open(&two, true);
        assert_eq!((b2.id, next), (b.id, 41));
        assert_eq!(h.open(&one, true).1, 100);
    }

    #[test]
    fn records_follow_a_lineage_and_a_fresh_start_begins_another() {
        let mut h = Handled::default();
        let (a, skip, _) = h.open("cam", false);
        assert_eq!(skip, 0);
        h.done("cam", a.id, 0);
        h.done("cam", a.id, 1);
        let (a2, skip, _) = h.open("cam", true);
        assert_eq!((a2.id, skip), (a.id, 2));
        assert!(Arc::ptr_eq(&a.writer, &a2.writer));
        h.done("cam", a.id, 0); // sent again: the record stays
        assert_eq!(h.next("cam", a.id), 2);
        assert_eq!(h.open("other", true).1, 0);
        // the sender restarts: a new lineage; the old one's late frames
        // no longer count, and the writer lock stays the name's
        let (b, skip, _) = h.open("cam", false);
        assert_eq!(skip, 0);
        assert_ne!(b.id, a.id);
        assert!(Arc::ptr_eq(&a.writer, &b.writer));
        h.done("cam", a.id, 50);
        assert_eq!(h.next("cam", b.id), 0);
        assert_eq!(h.next("cam", a.id), 0);
        h.done("cam", b.id, 3);
        assert_eq!(h.open("cam", true).1, 4);
        for i in 0..RECORDS as u64 + 10 {
            let (l, _, _) = h.open(&format!("s{i}"), false);
            h.done(&format!("s{i}"), l.id, i);
        }
        assert!(h.next.len() <= RECORDS, "{}", h.next.len());
        let last = format!("s{}", RECORDS + 9);
        assert_eq!(h.open(&last, true).1, RECORDS as u64 + 10);
        // a record whose writer lock a connection holds is never forgotten
        let held = a.writer.clone();
        for i in 0..3 * RECORDS as u64 {
            h.open(&format!("t{i}"), false);
        }
        let (again, _, _) = h.open("cam", true);
        assert!(Arc::ptr_eq(&held, &again.writer));
    }

    #[test]
    fn acks_arrive_whole_and_the_newest_last() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let (lin, _, _) = Handled::default().open("cam", false);
        let mut w = AckWriter::new(s, &lin, true);
        // far more than the socket buffers hold while nobody reads
        for n in 1..=200_000u64 {
            w.ack(n);
        }
        w.finish(Duration::from_secs(5));
        drop(w);
        let mut bytes = Vec::new();
        peer.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() % ACK_LEN, 0);
        let mut r = AckReader::default();
        let mut last = 0;
        for c in bytes.chunks(ACK_LEN) {
            let a = r.push(c).unwrap().unwrap();
            assert!(a.next > last, "acks go forward: {} after {last}", a.next);
            last = a.next;
        }
        assert_eq!(last, 200_000);
    }
}
