//! The WSUS hierarchy: from the operator's YAML file to a validated graph.
//!
//! A tour, in the order data flows:
//! - [`yaml`] reads the text into a tree whose nodes remember their byte span;
//! - [`schema`] reads that tree into raw fields, reporting unknown fields, wrong types, bad values;
//! - [`validate`] checks what holds across servers (names, upstreams, cycles, required values);
//! - [`Topology`] is the result: a petgraph graph in execution order, with selection
//!   ([`Topology::select`]) and drawings ([`Topology::render_tree`] and friends).
//!
//! Every problem in the file becomes a [`Diagnostic`] pointing at its spot; all of a file's problems
//! are reported together. This crate does no network I/O and reads only the file it is given.

mod diagnostic;
mod graph;
mod model;
mod render;
pub mod schema;
mod select;
pub mod validate;
pub mod yaml;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use diagnostic::{Diagnostic, redact_passwords};
pub use graph::{Stats, Topology};
pub use model::{
    ApiTarget, Auth, Encrypt, KB954960_UPDATE_ID, Mode, SecretSource, Server, ServerId, SqlTarget,
    TlsMin, Transport,
};
pub use select::{SelectError, SelectOptions, Selection};

/// Why a topology could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not text: save it as UTF-8 (or UTF-16 with a byte order mark)")]
    NotText { path: String },
    #[error("{path} is not a regular file ({kind}): give the path of a topology file")]
    NotAFile { path: String, kind: &'static str },
    #[error(
        "{path} is larger than {limit} MiB, far more than any hierarchy needs (100,000 servers take about 7 MiB): is it the right file?",
        limit = MAX_FILE_BYTES >> 20
    )]
    TooLarge { path: String },
    #[error("{}", .0.summary())]
    Invalid(InvalidTopology),
}

/// A file that was read but holds mistakes.
#[derive(Debug)]
pub struct InvalidTopology {
    pub file: String,
    /// The text with inline password values masked: safe to print.
    pub redacted_source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl InvalidTopology {
    pub fn summary(&self) -> String {
        match self.diagnostics.len() {
            1 => format!("1 error in {}", self.file),
            n => format!("{n} errors in {}", self.file),
        }
    }

    /// Every diagnostic with its source line and caret.
    pub fn render(&self) -> String {
        diagnostic::render(&self.file, &self.redacted_source, &self.diagnostics)
    }
}

/// The largest topology file read (64 MiB): far above any real hierarchy, small enough that a
/// wrong path (a disk image, `/dev/zero`) is refused at once instead of read.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads a file the tool takes as input: a regular file of at most `limit` bytes, read with a
/// bound (so a file growing meanwhile cannot exceed it). The error says what to fix in words.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let io = |source| InputError::Read {
        path: shown.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a device, pipe or socket"
        };
        return Err(InputError::NotAFile { path: shown, kind });
    }
    if meta.len() > limit {
        return Err(InputError::TooLarge { path: shown, limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge { path: shown, limit });
    }
    Ok(bytes)
}

/// Why an input file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file ({kind}): give the path of a file")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path} is larger than {} MiB, far more than such a file needs: is it the right file?", .limit >> 20)]
    TooLarge { path: String, limit: u64 },
}

impl Topology {
    /// Reads and validates a topology file (a regular file of at most [`MAX_FILE_BYTES`]).
    /// Relative `password_file` and `ca_file` paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Topology, LoadError> {
        let shown = path.display().to_string();
        let bytes = match read_input(path, MAX_FILE_BYTES) {
            Ok(bytes) => bytes,
            Err(InputError::Read { source, .. }) => {
                return Err(LoadError::Read {
                    path: shown,
                    source,
                });
            }
            Err(InputError::NotAFile { kind, .. }) => {
                return Err(LoadError::NotAFile { path: shown, kind });
            }
            Err(InputError::TooLarge { .. }) => return Err(LoadError::TooLarge { path: shown }),
        };
        let mut topology = Topology::from_bytes(&shown, &bytes)?;
        let canonical = std::fs::canonicalize(path).map_err(|source| LoadError::Read {
            path: shown.clone(),
            source,
        })?;
        topology.locate(plain_path(canonical));
        Ok(topology)
    }

    /// Validates a topology given as bytes; `file` is the name used in messages and the plan.
    pub fn from_bytes(file: &str, bytes: &[u8]) -> Result<Topology, LoadError> {
        let text = decode_text(bytes).ok_or_else(|| LoadError::NotText {
            path: file.to_string(),
        })?;
        let fingerprint = fingerprint(bytes);
        let invalid = |diagnostics| {
            LoadError::Invalid(InvalidTopology {
                file: file.to_string(),
                redacted_source: redact_passwords(&text),
                diagnostics,
            })
        };
        let mut diagnostics = Vec::new();
        let raw = match schema::parse(&text, &mut diagnostics) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return Err(invalid(vec![
                    Diagnostic::new("the file is empty", yaml::Span::default(), "").help(
                        "describe the hierarchy: `version: 1` and a `servers:` list (see the README)",
                    ),
                ]));
            }
            Err(e) => {
                let mut d = Diagnostic::new(e.message, e.span, "");
                d.help = e.help;
                if let Some(first) = e.first {
                    d = d.related(first, "first set here");
                }
                return Err(invalid(vec![d]));
            }
        };
        let checked = validate::check(raw, &mut diagnostics);
        match checked {
            Some(checked) if diagnostics.is_empty() => {
                let line_starts = line_starts(&text);
                let line_of = |byte: usize| line_starts.partition_point(|&s| s <= byte);
                Ok(Topology::build(
                    file.to_string(),
                    fingerprint,
                    checked,
                    line_of,
                ))
            }
            _ => {
                diagnostics.sort_by_key(|d| d.span.start);
                Err(invalid(diagnostics))
            }
        }
    }
}

/// `sha256:<hex>` of the exact bytes.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest.iter() {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    out
}

/// A canonical Windows path as an operator writes it: `canonicalize` returns verbatim paths
/// (`\\?\C:\wsus\hierarchy.yaml`, `\\?\UNC\server\share\...`), which the plan, messages and
/// relative `password_file`s would otherwise carry. The prefix is kept where it is needed: a
/// path longer than MAX_PATH (260) or whose meaning it changes (`.`, `..`, `/`, a trailing
/// space or dot, which Win32 paths reinterpret).
pub fn plain_path(path: std::path::PathBuf) -> std::path::PathBuf {
    let Some(text) = path.to_str() else {
        return path;
    };
    let plain = match text.strip_prefix(r"\\?\") {
        Some(rest) if rest.len() >= 3 && rest.as_bytes()[1] == b':' => rest.to_string(),
        Some(rest)
            if rest
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case(r"UNC\")) =>
        {
            format!(r"\\{}", &rest[4..])
        }
        _ => return path,
    };
    let reinterpreted = plain.contains('/')
        || plain
            .split('\\')
            .any(|part| part == "." || part == ".." || part.ends_with([' ', '.']));
    if plain.len() >= 260 || reinterpreted {
        return path;
    }
    std::path::PathBuf::from(plain)
}

/// UTF-8 (with or without a BOM) or UTF-16 with a BOM, as Windows editors save (PowerShell 5's
/// `>` and `Out-File` write UTF-16LE with a BOM); `None` for anything else.
pub fn decode_text(bytes: &[u8]) -> Option<String> {
    let utf16 = |bom_le: bool| {
        let units: Vec<u16> = bytes[2..]
            .chunks(2)
            .map(|c| {
                let pair = [c[0], c.get(1).copied().unwrap_or(0)];
                if bom_le {
                    u16::from_le_bytes(pair)
                } else {
                    u16::from_be_bytes(pair)
                }
            })
            .collect();
        String::from_utf16(&units).ok()
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8(rest.to_vec()).ok(),
        [0xFF, 0xFE, ..] => utf16(true),
        [0xFE, 0xFF, ..] => utf16(false),
        _ => String::from_utf8(bytes.to_vec()).ok(),
    }
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::plain_path;
    use std::path::PathBuf;

    #[test]
    fn a_verbatim_windows_path_is_shown_as_an_operator_writes_it() {
        let plain = |p: &str| plain_path(PathBuf::from(p)).to_string_lossy().into_owned();
        assert_eq!(
            plain(r"\\?\C:\wsus\hierarchy.yaml"),
            r"C:\wsus\hierarchy.yaml"
        );
        assert_eq!(
            plain(r"\\?\UNC\wsus-hq\c$\wsus\h.yaml"),
            r"\\wsus-hq\c$\wsus\h.yaml"
        );
        // Kept where the prefix matters: past MAX_PATH, or a name Win32 would reinterpret.
        let long = format!(r"\\?\C:\{}\h.yaml", "d".repeat(300));
        assert_eq!(plain(&long), long);
        assert_eq!(
            plain(r"\\?\C:\wsus\odd. \h.yaml"),
            r"\\?\C:\wsus\odd. \h.yaml"
        );
        assert_eq!(
            plain(r"\\?\Volume{1234}\h.yaml"),
            r"\\?\Volume{1234}\h.yaml"
        );
        assert_eq!(
            plain("/srv/wsus/hierarchy.yaml"),
            "/srv/wsus/hierarchy.yaml"
        );
    }
}
