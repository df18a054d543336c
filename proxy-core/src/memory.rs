//! Giving back the executable's pages that only start-up needed.
//!
//! A proxy runs much code once — argument parsing, certificate issuing,
//! decoding and compiling its first xDS config — and then a small, hot
//! set per request. The kernel maps file pages around every fault (64 KiB
//! at a time), so after start-up 7.5 of the sidecar's 8.7 MiB of code are
//! in its resident set and stay there: about half of its RSS. Once the
//! proxy is serving, [`release_executable_pages`] drops every read-only
//! page of the executable that is still the file's from the resident set
//! (`madvise(MADV_DONTNEED)`); the page cache keeps them, so what runs
//! again comes back with a minor fault and only the hot code stays
//! resident (measured: sidecar RSS 15.5 → 13.0 MiB, `docs/benchmarks/sidecar.md`).

use std::io;
use std::path::Path;

/// What [`release_executable_pages`] gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Mappings of the executable advised.
    pub mappings: usize,
    /// Their resident bytes just before.
    pub resident_bytes: u64,
    /// Whether the allocator gave free heap pages back too (glibc's
    /// `malloc_trim`).
    pub heap_trimmed: bool,
}

/// One mapping of `/proc/self/smaps` with what decides whether it may be
/// released.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    path: String,
    rss_kib: u64,
    /// Private copies of file pages (relocated RELRO data, breakpoints).
    /// Not `Private_Dirty`, which also counts page-cache pages not yet
    /// written back (a freshly installed binary): those are the file's.
    anonymous_kib: u64,
}

impl Mapping {
    /// Only the file's own pages: dropping them loses nothing.
    fn releasable(&self, exe: &str) -> bool {
        self.path == exe && !self.writable && self.anonymous_kib == 0 && self.rss_kib > 0
    }
}

/// Parses `/proc/<pid>/smaps`.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or_default();
            // offset, device, inode, then the path (which may hold spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                writable: perms.as_bytes().get(1) == Some(&b'w'),
                path,
                rss_kib: 0,
                // Unknown until read: a mapping without it is left alone.
                anonymous_kib: u64::MAX,
            });
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        let kib = || fields.clone().next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => current.rss_kib = kib().unwrap_or(0),
            // An unreadable count stays unknown: the mapping is left alone.
            "Anonymous:" => current.anonymous_kib = kib().unwrap_or(u64::MAX),
            _ => {}
        }
    }
    out
}

/// Drops the executable's read-only file pages (code, constants, unwind
/// tables) from this process's resident set, and trims the heap. Safe to call at any time; the
/// pages come back from the page cache when they run again. Linux only
/// (elsewhere: nothing released).
pub fn release_executable_pages() -> io::Result<Released> {
    if !cfg!(target_os = "linux") {
        return Ok(Released::default());
    }
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = release(&smaps, &exe)?;
    released.heap_trimmed = trim_heap();
    Ok(released)
}

/// Gives the heap's free pages back (what a config build freed stays
/// resident otherwise: glibc keeps what its arenas touched).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and only returns free memory
    // to the system; glibc's allocator (which Rust's global allocator
    // calls) stays consistent, whatever other threads are doing.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

fn release(smaps: &str, exe: &Path) -> io::Result<Released> {
    let exe = exe.to_string_lossy();
    let mut released = Released::default();
    for m in parse_smaps(smaps).iter().filter(|m| m.releasable(&exe)) {
        advise_dont_need(m.start, m.end - m.start)?;
        released.mappings += 1;
        released.resident_bytes += m.rss_kib * 1024;
    }
    Ok(released)
}

/// `madvise(MADV_DONTNEED)` on one mapping of ours.
///
/// With [`trim_heap`], the only `unsafe` in the workspace (STYLE.md:
/// "unless a measured need says otherwise"): libc's `madvise` takes a raw
/// address range.
#[allow(unsafe_code)]
fn advise_dont_need(start: usize, len: usize) -> io::Result<()> {
    // SAFETY: `start..start + len` is a whole mapping of this process's
    // executable that smaps just listed as read-only and without anonymous
    // (privately copied) pages: every page is the file's own page, so
    // dropping it from the page tables changes no value the program can
    // observe — the next access maps the same bytes again from the page
    // cache. No Rust reference is invalidated (the memory stays mapped
    // with the same contents). A mapping that changed meanwhile (unmapped
    // and reused) is not possible: the executable stays mapped for the
    // life of the process.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d000000000-55d000100000 r--p 00000000 fd:01 42 /usr/bin/isthmus sidecar
Rss:                 400 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d000100000-55d000900000 r-xp 00100000 fd:01 42 /usr/bin/isthmus sidecar
Rss:                7000 kB
Private_Dirty:      7000 kB
Anonymous:             0 kB
55d000900000-55d000940000 r--p 00900000 fd:01 42 /usr/bin/isthmus sidecar
Rss:                 256 kB
Private_Dirty:       256 kB
Anonymous:           256 kB
55d000940000-55d000944000 rw-p 00940000 fd:01 42 /usr/bin/isthmus sidecar
Rss:                  16 kB
Private_Dirty:        16 kB
Anonymous:            16 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1024 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 fd:01 42 /usr/bin/isthmus sidecar
Rss:                   0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000300000-7f0000400000 r-xp 00000000 fd:01 42 /usr/bin/isthmus sidecar
Rss:                  12 kB
";

    /// Only read-only, resident mappings of the executable itself without
    /// private copies: not RELRO data (relocated), not writable data, not
    /// libraries, not one whose anonymous count is unknown. Page-cache pages
    /// not yet written back (`Private_Dirty` of a new binary) are the file's.
    #[test]
    fn only_read_only_file_pages_of_the_executable_are_releasable() {
        let exe = "/usr/bin/isthmus sidecar";
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 7);
        let picked: Vec<(usize, u64)> = maps
            .iter()
            .filter(|m| m.releasable(exe))
            .map(|m| (m.start, m.rss_kib))
            .collect();
        assert_eq!(picked, [(0x55d0_0000_0000, 400), (0x55d0_0010_0000, 7000)]);
    }

    /// The real thing, on this test process: its resident executable pages
    /// go down, and it keeps running (the code it runs next comes back).
    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_shrinks_the_resident_executable_and_the_process_runs_on() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let resident = || -> u64 {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            parse_smaps(&smaps)
                .iter()
                .filter(|m| m.releasable(&exe.to_string_lossy()))
                .map(|m| m.rss_kib)
                .sum()
        };
        let before = resident();
        let released = release_executable_pages().expect("madvise");
        assert!(released.mappings >= 1, "{released:?}");
        assert!(
            released.resident_bytes >= before * 1024 / 2,
            "{released:?} vs {before} KiB"
        );
        // `resident` runs again the code it ran before (its pages fault
        // back in) and finds fewer resident pages.
        let after = resident();
        assert!(
            after < before,
            "resident executable {before} KiB -> {after} KiB"
        );
    }
}
