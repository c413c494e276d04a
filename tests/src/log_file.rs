//! Process log files: segment markers and bounded tails.
//!
//! A child's stdout and stderr are the same append-only file, so the log is
//! complete and correctly interleaved even if the test process dies; tails
//! for printing are read back from the end of the file with a bounded
//! buffer, so memory stays bounded however much a node logs.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// At most this many bytes are read from the end of a log for a tail.
const TAIL_BYTES: u64 = 512 * 1024;

/// Opens `path` for appending, creating it and its directory.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Appends one harness line (`==== [tern-tests HH:MM:SS.mmm] text`).
pub(crate) fn write_marker(path: &Path, text: &str) -> io::Result<()> {
    let mut file = open_append(path)?;
    writeln!(file, "==== [tern-tests {}] {text}", utc_now())
}

/// The whole log (lossy UTF-8); empty if it does not exist yet.
pub(crate) fn read_all(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of the log (read with a bounded buffer).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(cannot read log at {})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        // The first line read is probably cut in the middle.
        all.remove(0);
    }
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 || skip > 0 {
        out.push_str("... (earlier lines omitted)\n");
    }
    for line in &all[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Wall-clock `HH:MM:SS.mmm` UTC, to line harness markers up with node logs.
fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}
