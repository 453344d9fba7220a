//! Finding the log files (a file, a directory walked recursively, or a glob) and reading one as a
//! stream of lines, whatever its encoding: gzip or not, UTF-16LE/BE or UTF-8 with a BOM, or ANSI
//! bytes passed through (every signature the scanners look for is ASCII), CRLF or LF.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;

/// A file that could not be read, and why: reported, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Expands each PATH: a file as is, a directory to every file below it (sorted), anything else
/// as a glob. A PATH that matches nothing is reported as skipped.
pub fn expand(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        if path.is_file() {
            files.push(path.clone());
        } else if path.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(path)
                .follow_links(true)
                .into_iter()
                .filter_map(|entry| match entry {
                    Ok(e) if e.file_type().is_file() => Some(e.into_path()),
                    Ok(_) => None,
                    Err(e) => {
                        skipped.push(Skipped {
                            path: e.path().map_or_else(|| path.clone(), Path::to_path_buf),
                            reason: e.to_string(),
                        });
                        None
                    }
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            let pattern = path.to_string_lossy();
            match glob::glob(&pattern) {
                Ok(matches) => {
                    let before = files.len();
                    for m in matches {
                        match m {
                            Ok(p) if p.is_file() => files.push(p),
                            Ok(_) => {}
                            Err(e) => skipped.push(Skipped {
                                path: e.path().to_path_buf(),
                                reason: e.error().to_string(),
                            }),
                        }
                    }
                    if files.len() == before {
                        skipped.push(Skipped {
                            path: path.clone(),
                            reason: "no such file, directory, or matching file".into(),
                        });
                    }
                }
                Err(e) => skipped.push(Skipped {
                    path: path.clone(),
                    reason: format!("not a file, a directory or a valid glob: {e}"),
                }),
            }
        }
    }
    (files, skipped)
}

/// Opens a log for reading as UTF-8-compatible bytes.
pub fn open(path: &Path) -> std::io::Result<Box<dyn BufRead + Send>> {
    let mut file = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let gzip = file.fill_buf()?.starts_with(&[0x1F, 0x8B]);
    let raw: Box<dyn Read + Send> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    // A BOM selects UTF-16LE/BE or UTF-8 (then transcoded to UTF-8); without one, bytes pass
    // through untouched.
    let decoded = encoding_rs_io::DecodeReaderBytesBuilder::new()
        .bom_sniffing(true)
        .strip_bom(true)
        .utf8_passthru(true)
        .build(raw);
    Ok(Box::new(BufReader::with_capacity(256 * 1024, decoded)))
}

/// Calls `f` with each line that contains one of `markers` (without its `\n` or `\r\n`), a
/// truncated last line included. Lines are found from the markers' matches over whole buffers
/// (the way grep tools search), so a line without a marker costs no more than scanning its bytes.
pub fn for_each_matching_line(
    mut reader: impl BufRead,
    markers: &AhoCorasick,
    mut f: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    fn trim(line: &[u8]) -> &[u8] {
        line.strip_suffix(b"\r").unwrap_or(line)
    }
    // The start of a line that began in an earlier buffer.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let buf = reader.fill_buf()?;
        let len = buf.len();
        if len == 0 {
            if markers.is_match(&carry) {
                f(trim(&carry));
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
            if markers.is_match(&carry) {
                f(trim(&carry));
            }
            carry.clear();
            from = first_nl + 1;
        }
        let region = &buf[from..=last_nl];
        let mut next_line = 0;
        for m in markers.find_iter(region) {
            if m.start() < next_line {
                continue;
            }
            let start = memchr::memrchr(b'\n', &region[..m.start()]).map_or(0, |i| i + 1);
            let end =
                memchr::memchr(b'\n', &region[m.start()..]).map_or(region.len(), |i| m.start() + i);
            f(trim(&region[start..end]));
            next_line = end + 1;
        }
        carry.extend_from_slice(&buf[last_nl + 1..]);
        reader.consume(len);
    }
}

/// The name a log stands for, from its path: the file's stem, or its directory's name when the
/// stem is the log's standard name (`hosts/PC-042/WindowsUpdate.log` is `PC-042`).
pub fn name_from_path(path: &Path) -> String {
    let mut stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".gz", ".log", ".txt", ".old", ".bak"] {
        while let Some(s) = stem.strip_suffix(ext) {
            stem = s.to_string();
        }
    }
    let standard = ["windowsupdate", "softwaredistribution"];
    if standard.contains(&stem.to_ascii_lowercase().as_str())
        && let Some(dir) = path.parent().and_then(Path::file_name)
    {
        return dir.to_string_lossy().into_owned();
    }
    stem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_lines_are_found_across_buffer_boundaries_and_a_truncated_last_line_counts() {
        let markers = AhoCorasick::new(["needle"]).unwrap_or_else(|e| panic!("{e}"));
        let text = "hay\r\nsome needle here\r\nhay\nneedle twice needle\nlast needle";
        // A tiny buffer puts boundaries everywhere, inside lines and inside the marker.
        for capacity in [1, 2, 3, 5, 8, 64] {
            let reader = BufReader::with_capacity(capacity, text.as_bytes());
            let mut seen = Vec::new();
            for_each_matching_line(reader, &markers, |l| {
                seen.push(String::from_utf8_lossy(l).into_owned());
            })
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                seen,
                ["some needle here", "needle twice needle", "last needle"],
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
        assert_eq!(
            name_from_path(Path::new("srv/wsus-emea/SoftwareDistribution.log")),
            "wsus-emea"
        );
    }
}
