//! qcow2 → raw while the image arrives, so that importing a qcow2 image costs its transfer
//! and not a transfer followed by a conversion.
//!
//! The importer keeps writing its scratch file as before; this decoder sees the same bytes in
//! the same order and writes each guest cluster to the raw staging file as soon as it knows
//! where that cluster belongs: the header says where the L1 table is, the L1 table where the
//! L2 tables are, an L2 table where its data clusters are. `qemu-img` (and most tools) write
//! the tables before the data they map, so nearly everything is placed as it passes; a table
//! or cluster that lies behind the stream is read back from the scratch file, which holds
//! every byte seen so far.
//!
//! A data cluster placed straight from the stream is not kept in the scratch file (the caller
//! leaves a hole there): the scratch then holds the image's tables and what the decoder has
//! not placed, which is all `qemu-img info` and `check` read. Should the decoder stand aside
//! later, it first copies those clusters back from the raw file, and the scratch is whole
//! again for `qemu-img convert`. Keeping the import's page cache small matters here: on this
//! host, writing 2.5 GiB of fresh page cache (a whole scratch and a whole raw file) took 1.5–6 s
//! where the same bytes through a recycled window of pages took 0.6 s.
//!
//! Anything outside the shape handled here — a backing file, encryption, an external data
//! file, extended L2 entries, zstd compression, clusters under 64 KiB, a dirty or corrupt
//! image, reserved bits, tables beyond the end of the data — makes the decoder stand aside,
//! and the importer converts the whole scratch with `qemu-img` as it always did. `qemu-img`
//! stays the judge of the image either way: its `info` and `check` run on the complete scratch
//! before the streamed file is taken.
//!
//! Every number here comes from the tenant's image, so each is bounded before it is used: the
//! virtual size by the volume, the L1 table by QEMU's own limit, the entries waiting for their
//! bytes by a count, every offset arithmetic by the 56-bit offset fields.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// The header fields read here end at byte 105 (v3's compression type); every image is at
/// least a cluster long, so these bytes always exist in a whole image.
const HEADER_BYTES: u64 = 112;
/// Smaller clusters mean many more entries to follow per byte of data; they are rare, and
/// left to `qemu-img`.
const MIN_CLUSTER_BITS: u32 = 16;
const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU refuses larger L1 tables (`QCOW_MAX_L1_SIZE`).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Entries seen but whose bytes have not arrived yet. A well-ordered image has a few dozen;
/// an image that maps everything ahead of itself stands the decoder aside.
const MAX_PENDING: usize = 1 << 20;
/// Written bytes after which the previous window's writeback is waited for and its pages
/// dropped, and this window's writeback started: the raw file occupies about two windows of
/// page cache, and the final fsync waits for the tail rather than for the whole image.
const WRITEBACK_EVERY: u64 = 32 << 20;
/// Ranges of placed clusters left out of the scratch (adjacent ones merge, so an image written
/// in order has a handful); past this many, placed clusters are kept in the scratch too.
const MAX_LEFT_OUT: usize = 1 << 16;
/// Raw output skips all-zero blocks of this size, keeping the volume sparse as `qemu-img
/// convert`'s default `-S 4k` does.
const SPARSE_BLOCK: usize = 4096;

/// Bits 9–55 of an L1 or standard L2 entry: a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// v3: the cluster reads as zeros.
const ZERO: u64 = 1;

/// v3 incompatible feature bits.
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;

/// Something whose bytes the decoder waits for.
#[derive(Debug, Clone, Copy)]
enum Item {
    Header,
    L1 { entries: u64 },
    L2 { guest: u64 },
    Data { guest: u64 },
    Compressed { guest: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    cluster_bits: u32,
    virtual_size: u64,
    v3: bool,
}

impl Geometry {
    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Guest bytes one L1 entry (one L2 table) maps.
    fn l2_covers(&self) -> u64 {
        1 << (2 * self.cluster_bits - 3)
    }
}

/// Decodes a qcow2 stream into a raw file while the stream is being written to `scratch`.
pub struct Qcow2Stream {
    staging: PathBuf,
    out: File,
    /// The scratch file, for bytes that lie behind the stream, and to restore it.
    scratch: File,
    /// How much volume the image may fill.
    capacity: u64,
    /// Stream bytes seen.
    pos: u64,
    geometry: Option<Geometry>,
    /// Keyed by (end offset, sequence): an item's bytes are all there once the stream passes
    /// its end; the value is (start offset, item).
    pending: BTreeMap<(u64, u64), (u64, Item)>,
    seq: u64,
    written_since_writeback: u64,
    /// Scratch ranges the caller left out because their cluster was placed: start → (end,
    /// guest offset).
    left_out: BTreeMap<u64, (u64, u64)>,
    /// Where the current chunk starts, and the parts of it placed as data.
    chunk_start: u64,
    chunk_placed: Vec<Range<usize>>,
    /// Restoring the scratch failed: the import can't go on.
    restore_error: Option<std::io::Error>,
    /// Where the table being read lies, and how many items its tables mapped behind
    /// themselves (such bytes are read back from the scratch unless still in the chunk).
    placing_at: u64,
    behind: u64,
    gave_up: Option<String>,
}

impl Qcow2Stream {
    /// A decoder writing `staging` (created, or emptied) from a stream that is also being
    /// written to `scratch`, which must exist.
    pub fn create(staging: &Path, scratch: &Path, capacity: u64) -> std::io::Result<Self> {
        let read_write = || {
            let mut o = File::options();
            o.read(true).write(true);
            o
        };
        let out = read_write().create(true).truncate(true).open(staging)?;
        let scratch = read_write().open(scratch)?;
        let mut stream = Qcow2Stream {
            staging: staging.to_path_buf(),
            out,
            scratch,
            capacity,
            pos: 0,
            geometry: None,
            pending: BTreeMap::new(),
            seq: 0,
            written_since_writeback: 0,
            left_out: BTreeMap::new(),
            chunk_start: 0,
            chunk_placed: Vec::new(),
            restore_error: None,
            placing_at: 0,
            behind: 0,
            gave_up: None,
        };
        stream.expect(0, HEADER_BYTES, Item::Header).map_err(std::io::Error::other)?;
        Ok(stream)
    }

    /// The next bytes of the stream. Returns the parts of `chunk` (as ranges within it) that
    /// were placed as data and need not be written to the scratch; the caller writes the rest
    /// there, at the chunk's offset, before the next call.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Range<usize>> {
        let start = self.pos;
        self.pos += chunk.len() as u64;
        self.chunk_start = start;
        if self.gave_up.is_some() {
            return Vec::new();
        }
        if let Err(why) = self.place_ready(start, chunk) {
            self.give_up(why);
            return Vec::new();
        }
        std::mem::take(&mut self.chunk_placed)
    }

    /// At the end of the stream, once the caller has written all it was to write: the raw file
    /// when every cluster found its place (not yet synced), or why not — the scratch then whole
    /// again. An error: the scratch could not be restored. A cluster the last bytes of the file
    /// cut short reads as zeros past the end, as QEMU reads a short file; a table cut short
    /// stands the decoder aside.
    pub fn finish(mut self) -> std::io::Result<Result<PathBuf, String>> {
        self.chunk_start = self.pos;
        if self.gave_up.is_none() {
            if let Err(why) = self.place_remaining() {
                self.give_up(why);
            }
        }
        if let Some(e) = self.restore_error.take() {
            return Err(e);
        }
        if let Some(why) = self.gave_up.take() {
            return Ok(Err(why));
        }
        tracing::debug!(
            mapped_behind = self.behind,
            left_out = self.left_out.len(),
            "qcow2 decoded during the transfer"
        );
        Ok(Ok(self.staging))
    }

    fn place_remaining(&mut self) -> Result<(), String> {
        if self.geometry.is_none() {
            return Err("the stream ended inside the qcow2 header".into());
        }
        while let Some(((end, _), (at, item))) = self.pending.pop_first() {
            match item {
                Item::Data { .. } | Item::Compressed { .. } if at < self.pos => {
                    let bytes = self.read_back(at, end).map_err(|e| format!("reading back: {e}"))?;
                    self.place(at, item, &bytes)?;
                }
                _ => return Err(format!("a table or cluster at byte {at} lies past the end of the image")),
            }
        }
        Ok(())
    }

    /// Stands aside: forgets what it waited for and makes the scratch whole again (up to the
    /// current chunk, which the caller writes whole from now on).
    fn give_up(&mut self, why: String) {
        tracing::debug!(why = %why, at = self.pos, "qcow2 decoded after the transfer instead of during it");
        self.gave_up = Some(why);
        self.pending.clear();
        self.chunk_placed.clear();
        let left_out = std::mem::take(&mut self.left_out);
        for (host, (end, guest)) in left_out {
            let end = end.min(self.chunk_start);
            if host < end {
                if let Err(e) = copy_range(&self.out, guest, &self.scratch, host, end - host) {
                    self.restore_error = Some(e);
                    return;
                }
            }
        }
    }

    /// Bytes `at..end` of the stream, all of them behind the current chunk or running into
    /// it: from the scratch, with the ranges left out of it taken from the raw file. The part
    /// in the current chunk (not yet in the scratch) is the caller's to add.
    fn read_back(&self, at: u64, end: u64) -> std::io::Result<Vec<u8>> {
        let behind = end.min(self.chunk_start);
        let mut bytes = read_padded(&self.scratch, at, behind - at)?;
        // Left-out ranges don't overlap, so their ends rise with their starts.
        for (&host, &(host_end, guest)) in self.left_out.range(..behind).rev() {
            if host_end <= at {
                break;
            }
            let (from, to) = (host.max(at), host_end.min(behind));
            let part = &mut bytes[(from - at) as usize..(to - at) as usize];
            part.copy_from_slice(&read_padded(&self.out, guest + (from - host), to - from)?);
        }
        Ok(bytes)
    }

    /// Places every item whose bytes are complete now that `chunk` (at `start`) has passed.
    fn place_ready(&mut self, start: u64, chunk: &[u8]) -> Result<(), String> {
        let end = self.pos;
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((item_end, _), (at, item)) = entry.remove_entry();
            if at >= start {
                let (from, to) = ((at - start) as usize, (item_end - start) as usize);
                self.place(at, item, &chunk[from..to])?;
                if let Item::Data { guest } = item {
                    self.leave_out(at, item_end, guest, from..to);
                }
            } else {
                let mut bytes = self.read_back(at, item_end).map_err(|e| format!("reading back: {e}"))?;
                if item_end > start {
                    bytes.extend_from_slice(&chunk[..(item_end - start) as usize]);
                }
                self.place(at, item, &bytes)?;
            }
        }
        Ok(())
    }

    /// Notes that a placed cluster's bytes (`within` the chunk) need not go to the scratch.
    /// Only in rising order: a cluster mapped twice, or out of order (a hostile image's), is
    /// simply kept, so the ranges stay sorted and apart.
    fn leave_out(&mut self, host: u64, host_end: u64, guest: u64, within: Range<usize>) {
        if self.left_out.last_key_value().is_some_and(|(_, (end, _))| *end > host) {
            return;
        }
        let merged = self.left_out.last_entry().is_some_and(|mut last| {
            let start = *last.key();
            let (end, last_guest) = last.get_mut();
            let adjacent = *end == host && *last_guest + (host - start) == guest;
            if adjacent {
                *end = host_end;
            }
            adjacent
        });
        if !merged {
            if self.left_out.len() >= MAX_LEFT_OUT {
                return;
            }
            self.left_out.insert(host, (host_end, guest));
        }
        match self.chunk_placed.last_mut() {
            Some(last) if last.end == within.start => last.end = within.end,
            _ => self.chunk_placed.push(within),
        }
    }

    fn expect(&mut self, at: u64, len: u64, item: Item) -> Result<(), String> {
        if self.pending.len() >= MAX_PENDING {
            return Err(format!("more than {MAX_PENDING} clusters mapped ahead of the data"));
        }
        // Offsets are at most 56 bits and lengths at most 32 MiB: no overflow.
        self.seq += 1;
        if at < self.placing_at {
            self.behind += 1;
        }
        self.pending.insert((at + len, self.seq), (at, item));
        Ok(())
    }

    fn place(&mut self, at: u64, item: Item, bytes: &[u8]) -> Result<(), String> {
        self.placing_at = at;
        match item {
            Item::Header => self.header(bytes),
            Item::L1 { entries } => self.l1(bytes, entries),
            Item::L2 { guest } => self.l2(bytes, guest),
            Item::Data { guest } => self.write(guest, bytes),
            Item::Compressed { guest } => {
                let g = self.geometry.ok_or("a cluster before the header")?;
                let mut cluster = vec![0u8; g.cluster() as usize];
                let mut inflate = flate2::Decompress::new(false);
                let inflated = inflate.decompress(bytes, &mut cluster, flate2::FlushDecompress::Finish);
                if inflated.is_err() || inflate.total_out() != g.cluster() {
                    return Err(format!("the compressed cluster at byte {at} does not inflate to a cluster"));
                }
                self.write(guest, &cluster)
            }
        }
    }

    fn header(&mut self, h: &[u8]) -> Result<(), String> {
        let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
        if &h[..4] != MAGIC {
            return Err("not a qcow2 header".into());
        }
        let version = be32(4);
        if !(2..=3).contains(&version) {
            return Err(format!("qcow2 version {version}"));
        }
        if be64(8) != 0 {
            return Err("a backing file".into());
        }
        let cluster_bits = be32(20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(format!("{cluster_bits} cluster bits"));
        }
        let virtual_size = be64(24);
        if virtual_size > self.capacity {
            return Err(format!("a virtual size of {virtual_size} bytes, more than the volume"));
        }
        if be32(32) != 0 {
            return Err("encryption".into());
        }
        let (l1_size, l1_offset) = (u64::from(be32(36)), be64(40));
        if version == 3 {
            let incompatible = be64(72);
            let header_length = be32(100);
            let compression_type = if header_length > 104 { h[104] } else { 0 };
            if incompatible & !INCOMPAT_COMPRESSION_TYPE != 0 || compression_type != 0 {
                return Err(format!("incompatible features {incompatible:#x}, compression type {compression_type}"));
            }
        }
        let g = Geometry { cluster_bits, virtual_size, v3: version == 3 };
        let needed = virtual_size.div_ceil(g.l2_covers());
        if l1_size < needed || l1_size * 8 > MAX_L1_BYTES {
            return Err(format!("an L1 table of {l1_size} entries for {needed}"));
        }
        if l1_offset == 0 || l1_offset & (g.cluster() - 1) != 0 || l1_offset & !OFFSET_MASK != 0 {
            return Err(format!("an L1 table at byte {l1_offset}"));
        }
        self.out.set_len(virtual_size).map_err(|e| format!("sizing the raw file: {e}"))?;
        self.geometry = Some(g);
        if needed > 0 {
            self.expect(l1_offset, needed * 8, Item::L1 { entries: needed })?;
        }
        Ok(())
    }

    fn l1(&mut self, table: &[u8], entries: u64) -> Result<(), String> {
        let g = self.geometry.ok_or("an L1 table before the header")?;
        for (i, raw) in table.chunks_exact(8).take(entries as usize).enumerate() {
            let entry = u64::from_be_bytes(raw.try_into().map_err(|_| "a short L1 entry")?);
            if entry & !(OFFSET_MASK | COPIED) != 0 {
                return Err(format!("reserved bits in L1 entry {i}"));
            }
            let l2 = entry & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if l2 & (g.cluster() - 1) != 0 {
                return Err(format!("an unaligned L2 table at byte {l2}"));
            }
            self.expect(l2, g.cluster(), Item::L2 { guest: i as u64 * g.l2_covers() })?;
        }
        Ok(())
    }

    fn l2(&mut self, table: &[u8], first_guest: u64) -> Result<(), String> {
        let g = self.geometry.ok_or("an L2 table before the header")?;
        // Compressed entries: the offset's width and the sector count's depend on the cluster.
        let csize_shift = 62 - (g.cluster_bits - 8);
        let csize_mask = (1u64 << (g.cluster_bits - 8)) - 1;
        let coffset_mask = (1u64 << csize_shift) - 1;
        for (j, raw) in table.chunks_exact(8).enumerate() {
            let guest = first_guest + ((j as u64) << g.cluster_bits);
            if guest >= g.virtual_size {
                break;
            }
            let entry = u64::from_be_bytes(raw.try_into().map_err(|_| "a short L2 entry")?);
            if entry & COMPRESSED != 0 {
                let host = entry & coffset_mask;
                let sectors = ((entry >> csize_shift) & csize_mask) + 1;
                let len = sectors * 512 - (host & 511);
                if host == 0 {
                    return Err(format!("a compressed cluster at byte 0 for guest byte {guest}"));
                }
                self.expect(host, len, Item::Compressed { guest })?;
                continue;
            }
            if entry & !(OFFSET_MASK | COPIED | ZERO) != 0 {
                return Err(format!("reserved bits in the L2 entry for guest byte {guest}"));
            }
            if entry & ZERO != 0 {
                if !g.v3 {
                    return Err("a zero flag in a version 2 image".into());
                }
                continue;
            }
            let host = entry & OFFSET_MASK;
            if host == 0 {
                continue;
            }
            if host & (g.cluster() - 1) != 0 {
                return Err(format!("an unaligned cluster at byte {host}"));
            }
            self.expect(host, g.cluster(), Item::Data { guest })?;
        }
        Ok(())
    }

    /// Writes a guest cluster's bytes, cut at the virtual size, leaving all-zero blocks as
    /// holes.
    fn write(&mut self, guest: u64, data: &[u8]) -> Result<(), String> {
        let g = self.geometry.ok_or("a cluster before the header")?;
        let len = data.len().min((g.virtual_size - guest) as usize);
        let data = &data[..len];
        let mut run_start = None;
        for (k, block) in data.chunks(SPARSE_BLOCK).enumerate() {
            let zero = is_zero(block);
            match (zero, run_start) {
                (false, None) => run_start = Some(k * SPARSE_BLOCK),
                (true, Some(s)) => {
                    self.write_run(guest, s, &data[s..k * SPARSE_BLOCK])?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            self.write_run(guest, s, &data[s..])?;
        }
        Ok(())
    }

    fn write_run(&mut self, guest: u64, offset: usize, run: &[u8]) -> Result<(), String> {
        self.out.write_all_at(run, guest + offset as u64).map_err(|e| format!("writing the raw file: {e}"))?;
        self.written_since_writeback += run.len() as u64;
        if self.written_since_writeback >= WRITEBACK_EVERY {
            self.written_since_writeback = 0;
            let fd = self.out.as_raw_fd();
            // SAFETY: plain system calls on a descriptor this struct owns, reading no memory
            // of ours. Wait for the last window's writeback, drop its now clean pages, start
            // this window's. A refusal (a filesystem without them) only means more page cache
            // and a longer final fsync.
            unsafe {
                libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WAIT_BEFORE);
                libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
                libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }
}

/// Whether a block is all zeros: the first bytes decide for data, a branch-free pass for the
/// rest.
fn is_zero(block: &[u8]) -> bool {
    let (head, rest) = block.split_at(block.len().min(16));
    head.iter().all(|b| *b == 0) && rest.iter().fold(0u8, |acc, b| acc | b) == 0
}

/// Writes `chunk` (the stream's bytes at `offset`) to the scratch, all but the `placed` ranges
/// `Qcow2Stream::feed` returned for it.
pub fn write_unplaced(scratch: &File, offset: u64, chunk: &[u8], placed: &[Range<usize>]) -> std::io::Result<()> {
    let mut at = 0;
    for range in placed.iter().chain(std::iter::once(&(chunk.len()..chunk.len()))) {
        if range.start > at {
            scratch.write_all_at(&chunk[at..range.start], offset + at as u64)?;
        }
        at = range.end;
    }
    Ok(())
}

/// Copies `len` bytes at `from_at` of `from` to `to_at` of `to`.
fn copy_range(from: &File, from_at: u64, to: &File, to_at: u64, len: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(1 << 20);
        let piece = read_padded(from, from_at + done, n)?;
        to.write_all_at(&piece, to_at + done)?;
        done += n;
    }
    Ok(())
}

/// `len` bytes at `at`, zeros past the end of the file (a chunk of zeros is skipped over in
/// the scratch, not written, and a short file reads as zeros in QEMU too).
fn read_padded(file: &File, at: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], at + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

#[cfg(test)]
#[path = "qcow2_stream_tests.rs"]
mod tests;
