//! Letting go of the pages that only start-up used.
//!
//! `probe serve`'s resident size at rest is mostly its own code, mapped
//! from the executable: starting up (arguments, configuration, logging,
//! the first run of each path) touches far more of it than steady running
//! does, and the kernel maps file pages in 64 KB windows around each fault
//! and keeps them mapped. Once started, those mappings are dropped from the
//! process (`madvise(MADV_DONTNEED)`): the pages stay in the page cache, so
//! code used again comes back with a minor fault (no disk read), and what
//! only start-up ran stops counting in the process's RSS.
//!
//! Only file-backed private mappings that are read-only and hold no page
//! of their own (`Anonymous: 0 kB` in `/proc/self/smaps`) are dropped:
//! their pages are exactly the file's, which the kernel may drop and read
//! again at any time anyway. A mapping written to (relocations, data) is
//! never touched, since dropping it would lose what was written.
//!
//! Written by hand: no maintained crate parses smaps for this.

/// What [`let_go`] did: the resident size of the mappings it dropped, before
/// and right after, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LetGo {
    pub mappings: usize,
    pub before_kib: u64,
    pub after_kib: u64,
}

/// One mapping of `/proc/self/smaps`.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    rss_kib: u64,
    /// `None` when smaps did not say: never dropped.
    anonymous_kib: Option<u64>,
}

impl Mapping {
    /// Read-only code or data of a file, privately mapped, with no page
    /// that differs from the file.
    fn droppable(&self) -> bool {
        matches!(self.perms.as_str(), "r-xp" | "r--p")
            && self.path.starts_with('/')
            && !self.path.ends_with(" (deleted)")
            && self.anonymous_kib == Some(0)
            && self.rss_kib > 0
    }
}

/// Parses the text of `/proc/PID/smaps`.
fn parse(smaps: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or_default().to_string();
            // offset, device, inode, then the path (it may hold spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            mappings.push(Mapping {
                start,
                end,
                perms,
                path,
                rss_kib: 0,
                anonymous_kib: None,
            });
            continue;
        }
        let Some(current) = mappings.last_mut() else {
            continue;
        };
        let kib = || fields.clone().next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => current.rss_kib = kib().unwrap_or(0),
            "Anonymous:" => current.anonymous_kib = kib(),
            _ => {}
        }
    }
    mappings
}

/// How much of the mappings [`let_go`] drops is resident, in KiB, in the
/// text of a `/proc/PID/smaps`.
pub fn droppable_resident_kib(smaps: &str) -> u64 {
    parse(smaps)
        .iter()
        .filter(|m| m.droppable())
        .map(|m| m.rss_kib)
        .sum()
}

/// Drops the process's read-only file mappings from its page tables (see
/// the module's comment). `None` where this cannot be done (not Linux,
/// no `/proc`, or `madvise` refused a mapping).
pub fn let_go() -> Option<LetGo> {
    let before = parse(&std::fs::read_to_string("/proc/self/smaps").ok()?);
    let droppable: Vec<&Mapping> = before.iter().filter(|m| m.droppable()).collect();
    for m in &droppable {
        if !drop_mapping(m.start, m.end - m.start) {
            return None;
        }
    }
    let after = parse(&std::fs::read_to_string("/proc/self/smaps").ok()?);
    let resident_after = |m: &Mapping| {
        after
            .iter()
            .find(|a| a.start == m.start && a.end == m.end)
            .map_or(0, |a| a.rss_kib)
    };
    Some(LetGo {
        mappings: droppable.len(),
        before_kib: droppable.iter().map(|m| m.rss_kib).sum(),
        after_kib: droppable.iter().map(|m| resident_after(m)).sum(),
    })
}

#[cfg(target_os = "linux")]
fn drop_mapping(start: usize, len: usize) -> bool {
    // SAFETY: the range is one whole mapping of this process, read-only,
    // privately mapped from a file, with no page of its own: after
    // MADV_DONTNEED its contents read back from the file unchanged, so no
    // reference into it sees different bytes.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn drop_mapping(_start: usize, _len: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 123 /usr/bin/probe
Size:               1024 kB
Rss:                 300 kB
Anonymous:             0 kB
55d0a0100000-55d0a0900000 r-xp 00100000 fd:01 123 /usr/bin/probe
Size:               8192 kB
Rss:                7000 kB
Anonymous:             0 kB
55d0a0900000-55d0a0a00000 r--p 00900000 fd:01 123 /usr/bin/probe
Size:               1024 kB
Rss:                1024 kB
Anonymous:           200 kB
55d0a0a00000-55d0a0a10000 rw-p 00a00000 fd:01 123 /usr/bin/probe
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 9 /opt/my lib/libx.so (deleted)
Rss:                 100 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 rw-p 00000000 00:00 0
Rss:                 500 kB
Anonymous:           500 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_unwritten_read_only_file_mappings_are_dropped() {
        let mappings = parse(SMAPS);
        assert_eq!(mappings.len(), 7);
        assert_eq!(mappings[1].start, 0x55d0a0100000);
        assert_eq!(mappings[1].rss_kib, 7000);
        assert_eq!(mappings[4].path, "/opt/my lib/libx.so (deleted)");
        let dropped: Vec<usize> = (0..mappings.len())
            .filter(|i| mappings[*i].droppable())
            .collect();
        // Not the relocated read-only data (written to at start), not
        // writable data, not a replaced file, not the vDSO.
        assert_eq!(dropped, vec![0, 1]);
    }

    #[test]
    fn a_mapping_whose_own_pages_are_unknown_is_kept() {
        let mappings = parse(
            "7f0000000000-7f0000100000 r-xp 00000000 fd:01 9 /lib/libc.so.6\nRss: 10 kB\nAnonymous: ? kB\n",
        );
        assert!(!mappings[0].droppable());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_lets_go_of_its_code_and_keeps_running() {
        let done = let_go().expect("Linux has /proc/self/smaps");
        assert!(done.mappings > 0, "{done:?}");
        assert!(
            done.after_kib < done.before_kib,
            "nothing was let go: {done:?}"
        );
        // The code dropped comes back when it runs again.
        let again = parse(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        assert!(again.iter().any(|m| m.perms == "r-xp" && m.rss_kib > 0));
    }
}
