//! Finding the log files (a file, a directory walked recursively, or a glob) and reading one as a
//! stream of lines, whatever its encoding: gzip or not, UTF-16LE/BE or UTF-8 with a BOM, or ANSI
//! bytes passed through (every signature the scanners look for is ASCII), CRLF or LF.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use memchr::memmem::Finder;

/// A file that could not be read, and why: reported, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
    /// The PATH given matched no file at all (a typo in a path or a glob).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub matched_nothing: bool,
}

impl Skipped {
    fn new(path: PathBuf, reason: impl Into<String>) -> Skipped {
        Skipped {
            path,
            reason: reason.into(),
            matched_nothing: false,
        }
    }
}

/// Expands each PATH: a file as is, a directory to every file below it (sorted), anything else
/// as a glob, whose matches are expanded the same way (so `logs/PC-*` walks the directories it
/// matches). A PATH that matches nothing is reported as skipped.
pub fn expand(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let before = files.len();
        if path.is_file() || path.is_dir() {
            expand_one(path, &mut files, &mut skipped);
        } else {
            let pattern = path.to_string_lossy();
            match glob::glob(&pattern) {
                Ok(matches) => {
                    for m in matches {
                        match m {
                            Ok(p) => expand_one(&p, &mut files, &mut skipped),
                            Err(e) => skipped
                                .push(Skipped::new(e.path().to_path_buf(), e.error().to_string())),
                        }
                    }
                }
                Err(e) => skipped.push(Skipped::new(
                    path.clone(),
                    format!("not a file, a directory or a valid glob: {e}"),
                )),
            }
        }
        if files.len() == before && !path.is_dir() {
            skipped.push(Skipped {
                matched_nothing: true,
                ..Skipped::new(path.clone(), "no such file, directory, or matching file")
            });
        }
    }
    (files, skipped)
}

/// A file as is; a directory to every file below it, sorted.
fn expand_one(path: &Path, files: &mut Vec<PathBuf>, skipped: &mut Vec<Skipped>) {
    if path.is_file() {
        files.push(path.to_path_buf());
    } else if path.is_dir() {
        let mut found: Vec<PathBuf> = walkdir::WalkDir::new(path)
            .follow_links(true)
            .into_iter()
            .filter_map(|entry| match entry {
                Ok(e) if e.file_type().is_file() => Some(e.into_path()),
                Ok(_) => None,
                Err(e) => {
                    skipped.push(Skipped::new(
                        e.path()
                            .map_or_else(|| path.to_path_buf(), Path::to_path_buf),
                        e.to_string(),
                    ));
                    None
                }
            })
            .collect();
        found.sort();
        files.extend(found);
    }
}

/// Opens a log for reading as UTF-8-compatible bytes.
pub fn open(path: &Path) -> std::io::Result<Box<dyn BufRead + Send>> {
    const CAPACITY: usize = 256 * 1024;
    let mut file = BufReader::with_capacity(CAPACITY, File::open(path)?);
    let gzip = file.fill_buf()?.starts_with(&[0x1F, 0x8B]);
    let mut reader: Box<dyn BufRead + Send> = if gzip {
        Box::new(BufReader::with_capacity(
            CAPACITY,
            flate2::bufread::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(file)
    };
    // A UTF-16 BOM means transcoding to UTF-8; otherwise (UTF-8 or ANSI) the bytes are read as
    // they are, without a decoding layer in the way.
    let head = reader.fill_buf()?;
    if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
        let decoded = encoding_rs_io::DecodeReaderBytesBuilder::new()
            .bom_sniffing(true)
            .strip_bom(true)
            .build(reader);
        reader = Box::new(BufReader::with_capacity(CAPACITY, decoded));
    }
    Ok(reader)
}

/// Literal markers whose lines a scanner wants.
///
/// Each marker is searched on its own over whole buffers with `memchr::memmem` (SIMD, about
/// 15 GB/s a pass here), and the hits merged: several single-literal passes are far faster than
/// one multi-literal automaton over the same bytes when, as in logs, the markers are rare
/// (BENCHMARKS.md).
#[derive(Debug)]
pub struct Markers {
    finders: Vec<Finder<'static>>,
}

impl Markers {
    pub fn new(markers: &'static [&'static str]) -> Markers {
        Markers {
            finders: markers.iter().map(Finder::new).collect(),
        }
    }

    fn is_match(&self, haystack: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(haystack).is_some())
    }

    /// The start of every hit in `haystack`, in order.
    fn hits(&self, haystack: &[u8], into: &mut Vec<usize>) {
        into.clear();
        for f in &self.finders {
            into.extend(f.find_iter(haystack));
        }
        into.sort_unstable();
    }
}

/// Calls `f` with each line that contains one of `markers` (without its `\n` or `\r\n`), a
/// truncated last line included, in file order. `f` returns how many of the following lines it
/// also wants whatever they hold (the lines that belong to a record, such as a fault's `ID:` or a
/// stack): looking at a few lines after a rare hit is cheaper than one more pass for their markers.
/// Lines are found from the markers' hits over whole buffers (the way grep tools search), so a
/// line nobody wants costs only its scan.
pub fn for_each_matching_line(
    mut reader: impl BufRead,
    markers: &Markers,
    mut f: impl FnMut(&[u8]) -> usize,
) -> std::io::Result<()> {
    fn trim(line: &[u8]) -> &[u8] {
        line.strip_suffix(b"\r").unwrap_or(line)
    }
    // The start of a line that began in an earlier buffer.
    let mut carry: Vec<u8> = Vec::new();
    let mut hits = Vec::new();
    // Lines still wanted after the last one given.
    let mut follow = 0usize;
    let mut give = |line: &[u8], follow: &mut usize, wanted: bool| {
        if wanted || *follow > 0 {
            let more = f(trim(line));
            *follow = follow.saturating_sub(1).max(more);
        }
    };
    loop {
        let buf = reader.fill_buf()?;
        let len = buf.len();
        if len == 0 {
            if !carry.is_empty() {
                give(&carry, &mut follow, markers.is_match(&carry));
            }
            return Ok(());
        }
        let Some(last_nl) = memchr::memrchr(b'\n', buf) else {
            carry.extend_from_slice(buf);
            reader.consume(len);
            continue;
        };
        let mut from = 0;
        if !carry.is_empty() {
            let first_nl = memchr::memchr(b'\n', buf).unwrap_or(last_nl);
            carry.extend_from_slice(&buf[..first_nl]);
            give(&carry, &mut follow, markers.is_match(&carry));
            carry.clear();
            from = first_nl + 1;
        }
        let region = &buf[from..=last_nl];
        // `pos`: the start of the first line not yet looked at.
        let mut pos = 0;
        follow_lines(region, &mut pos, &mut follow, &mut give);
        markers.hits(region, &mut hits);
        for &hit in &hits {
            if hit < pos {
                continue;
            }
            let start = memchr::memrchr(b'\n', &region[..hit]).map_or(0, |i| i + 1);
            let end = memchr::memchr(b'\n', &region[hit..]).map_or(region.len(), |i| hit + i);
            give(&region[start..end], &mut follow, true);
            pos = end + 1;
            follow_lines(region, &mut pos, &mut follow, &mut give);
        }
        carry.extend_from_slice(&buf[last_nl + 1..]);
        reader.consume(len);
    }
}

/// Gives the lines from `pos` on while some are still wanted.
fn follow_lines(
    region: &[u8],
    pos: &mut usize,
    follow: &mut usize,
    give: &mut impl FnMut(&[u8], &mut usize, bool),
) {
    while *follow > 0 && *pos < region.len() {
        let end = memchr::memchr(b'\n', &region[*pos..]).map_or(region.len(), |i| *pos + i);
        give(&region[*pos..end], follow, false);
        *pos = end + 1;
    }
}

/// A field of a log line as text: lossy UTF-8, trimmed.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

/// The name a log stands for, from its path: the file's stem, or its directory's name when the
/// stem is the log's standard name (`hosts/PC-042/WindowsUpdate.log` is `PC-042`), or the
/// server of a UNC path when that directory is WSUS's own `LogFiles`: a server's log read over
/// its administrative share, `\\wsus-hq\c$\Program Files\Update Services\LogFiles`, is
/// `wsus-hq`'s.
pub fn name_from_path(path: &Path) -> String {
    // Split as text on both separators, so that a Windows path means the same wherever it is
    // read (on Linux a backslash is part of a file name, and such a path names no folder).
    let text = path.to_string_lossy();
    let mut parts = text.rsplit(['/', '\\']).filter(|p| !p.is_empty());
    let mut stem = parts.next().unwrap_or_default().to_string();
    for ext in [".gz", ".log", ".txt", ".old", ".bak"] {
        while let Some(s) = stem.strip_suffix(ext) {
            stem = s.to_string();
        }
    }
    let standard = ["windowsupdate", "softwaredistribution"];
    if standard.contains(&stem.to_ascii_lowercase().as_str())
        && let Some(dir) = parts.next()
    {
        if dir.eq_ignore_ascii_case("LogFiles")
            && let Some(server) = unc_server(&text)
        {
            return server;
        }
        return dir.to_string();
    }
    stem
}

/// The server of a UNC path (`\\server\share\...`, `\\?\UNC\server\share\...`), read as
/// text so that it means the same on every platform; `None` for a local or device path.
fn unc_server(text: &str) -> Option<String> {
    let rest = text.strip_prefix(r"\\?\UNC\").or_else(|| {
        text.strip_prefix(r"\\")
            .filter(|r| !r.starts_with(['?', '.']))
    })?;
    let server = rest.split(['\\', '/']).next()?;
    (!server.is_empty()).then(|| server.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_lines_are_found_across_buffer_boundaries_and_a_truncated_last_line_counts() {
        let markers = Markers::new(&["needle", "twice"]);
        let text = "hay\r\nsome needle here\r\nhay\nneedle twice needle\nlast needle";
        // A tiny buffer puts boundaries everywhere, inside lines and inside the marker.
        for capacity in [1, 2, 3, 5, 8, 64] {
            let reader = BufReader::with_capacity(capacity, text.as_bytes());
            let mut seen = Vec::new();
            for_each_matching_line(reader, &markers, |l| {
                seen.push(String::from_utf8_lossy(l).into_owned());
                // The line after "some needle here" is wanted too.
                usize::from(l.starts_with(b"some"))
            })
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                seen,
                [
                    "some needle here",
                    "hay",
                    "needle twice needle",
                    "last needle"
                ],
                "capacity {capacity}"
            );
        }
    }

    #[test]
    fn a_log_is_named_after_its_directory_when_it_has_the_standard_name() {
        assert_eq!(
            name_from_path(Path::new("x/PC-042/WindowsUpdate.log")),
            "PC-042"
        );
        assert_eq!(name_from_path(Path::new("x/PC-043.log.gz")), "PC-043");
        let unc = r"\\wsus-hq\c$\Program Files\Update Services\LogFiles\SoftwareDistribution.log";
        assert_eq!(name_from_path(Path::new(unc)), "wsus-hq");
        let verbatim = r"\\?\UNC\wsus-emea\d$\WSUS\LogFiles\SoftwareDistribution.log";
        assert_eq!(name_from_path(Path::new(verbatim)), "wsus-emea");
        // Copies gathered on a file server keep their folder's name, as anywhere else.
        let gathered = r"\\files\logs\wsus-paris\SoftwareDistribution.log";
        assert_eq!(name_from_path(Path::new(gathered)), "wsus-paris");
        assert_eq!(
            name_from_path(Path::new("srv/wsus-emea/SoftwareDistribution.log")),
            "wsus-emea"
        );
    }
}
