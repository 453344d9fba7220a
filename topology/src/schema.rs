//! Topology file version 1: reads the spanned YAML tree into raw, still unchecked values.
//!
//! This layer knows the fields and their types; it reports every unknown field, wrong type and bad
//! value it meets and keeps going, so a file's mistakes are all reported in one run. Whether the
//! values make sense together (names unique, upstreams exist, no cycles) is `validate`'s job.

use std::path::PathBuf;

use crate::diagnostic::Diagnostic;
use crate::model::{Encrypt, Mode, SecretSource, TlsMin, Transport};
use crate::yaml::{self, Node, NodeKind, Span, YamlError};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

#[derive(Debug, Default)]
pub struct RawTopology {
    /// Whether the key was written at all (a bad value is reported once, not also as missing).
    pub has_version: bool,
    pub has_servers: bool,
    pub version: Option<Spanned<u64>>,
    pub update: Option<Spanned<String>>,
    pub defaults: RawSql,
    pub defaults_api: RawApi,
    pub defaults_transport: Option<Spanned<Transport>>,
    pub servers: Option<Spanned<Vec<RawServer>>>,
}

#[derive(Debug)]
pub struct RawServer {
    /// The whole entry, for errors about a missing field.
    pub span: Span,
    pub name: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    pub mode: Option<Spanned<Mode>>,
    /// `span` is `Some` only when the server writes its own `sql`.
    pub sql: RawSql,
    /// `span` is `Some` only when the server writes its own `api`.
    pub api: RawApi,
    pub transport: Option<Spanned<Transport>>,
}

/// A server's or the defaults' `api` section.
#[derive(Debug, Default, Clone)]
pub struct RawApi {
    pub span: Option<Span>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub tls: Option<Spanned<bool>>,
    pub tls_min: Option<Spanned<TlsMin>>,
    pub trust_cert: Option<Spanned<bool>>,
    pub ca_file: Option<Spanned<PathBuf>>,
    pub auth: Option<Spanned<RawAuth>>,
}

impl RawApi {
    /// `self` over `defaults`, key by key; `auth` is replaced whole, never merged.
    pub fn merged_over(self, defaults: &RawApi) -> RawApi {
        RawApi {
            span: self.span.or(defaults.span),
            host: self.host.or_else(|| defaults.host.clone()),
            port: self.port.or_else(|| defaults.port.clone()),
            tls: self.tls.or_else(|| defaults.tls.clone()),
            tls_min: self.tls_min.or_else(|| defaults.tls_min.clone()),
            trust_cert: self.trust_cert.or_else(|| defaults.trust_cert.clone()),
            ca_file: self.ca_file.or_else(|| defaults.ca_file.clone()),
            auth: self.auth.or_else(|| defaults.auth.clone()),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct RawSql {
    pub span: Option<Span>,
    pub host: Option<Spanned<String>>,
    pub pipe: Option<Spanned<String>>,
    pub instance: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub database: Option<Spanned<String>>,
    pub encrypt: Option<Spanned<Encrypt>>,
    pub tls_min: Option<Spanned<TlsMin>>,
    pub trust_cert: Option<Spanned<bool>>,
    pub ca_file: Option<Spanned<PathBuf>>,
    pub auth: Option<Spanned<RawAuth>>,
}

impl RawSql {
    /// `self` over `defaults`, key by key; `auth` is replaced whole, never merged.
    pub fn merged_over(self, defaults: &RawSql) -> RawSql {
        RawSql {
            span: self.span.or(defaults.span),
            host: self.host.or_else(|| defaults.host.clone()),
            pipe: self.pipe.or_else(|| defaults.pipe.clone()),
            instance: self.instance.or_else(|| defaults.instance.clone()),
            port: self.port.or_else(|| defaults.port.clone()),
            database: self.database.or_else(|| defaults.database.clone()),
            encrypt: self.encrypt.or_else(|| defaults.encrypt.clone()),
            tls_min: self.tls_min.or_else(|| defaults.tls_min.clone()),
            trust_cert: self.trust_cert.or_else(|| defaults.trust_cert.clone()),
            ca_file: self.ca_file.or_else(|| defaults.ca_file.clone()),
            auth: self.auth.or_else(|| defaults.auth.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Sql,
    Windows,
    Integrated,
}

#[derive(Debug, Clone)]
pub struct RawAuth {
    /// A `password:` key was written (and refused): do not also report the password as missing.
    pub inline_password: bool,
    pub method: Option<Spanned<AuthMethod>>,
    pub user: Option<Spanned<String>>,
    pub password: Option<Spanned<SecretSource>>,
}

const TOP_FIELDS: &[&str] = &["version", "update", "defaults", "servers"];
const DEFAULTS_FIELDS: &[&str] = &["sql", "api", "transport"];
const SERVER_FIELDS: &[&str] = &["name", "upstream", "mode", "sql", "api", "transport"];
const API_FIELDS: &[&str] = &[
    "host",
    "port",
    "tls",
    "tls_min",
    "trust_cert",
    "ca_file",
    "auth",
];
const TLS_VERSIONS: &[(&str, TlsMin)] = &[
    ("1.0", TlsMin::V1_0),
    ("1.1", TlsMin::V1_1),
    ("1.2", TlsMin::V1_2),
];
const TRANSPORTS: &[(&str, Transport)] = &[("sql", Transport::Sql), ("api", Transport::Api)];
const SQL_FIELDS: &[&str] = &[
    "host",
    "pipe",
    "instance",
    "port",
    "database",
    "encrypt",
    "tls_min",
    "trust_cert",
    "ca_file",
    "auth",
];
const AUTH_FIELDS: &[&str] = &["method", "user", "password_env", "password_file"];

/// Parses the text of a topology file into [`RawTopology`], pushing every problem in the
/// values onto `diagnostics`. `Ok(None)`: the file holds no document. `Err`: it is not YAML.
///
/// Servers are read one by one as the parser completes them (see [`yaml::parse_streaming`]):
/// the file is never held as a whole tree.
pub fn parse(
    text: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<Option<RawTopology>, YamlError> {
    let mut r = Reader { diagnostics };
    let mut streamed = Vec::new();
    let root = yaml::parse_streaming(text, "servers", |i, node| {
        if let Some(server) = r.server(&node, &format!("servers[{i}]")) {
            streamed.push(server);
        }
    })?;
    Ok(root.map(|root| r.topology(&root, streamed)))
}

struct Reader<'d> {
    diagnostics: &'d mut Vec<Diagnostic>,
}

/// The entries of a mapping whose keys were all checked against the schema.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    /// The value of `key`, treating an explicit null like an absent key.
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, node)| *node)
            .filter(|node| !node.is_null())
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The closest known name to `word`, if it is close enough to be a likely typo.
///
/// Linear in the candidates, with a cheap length test before the edit distance (optimal string
/// alignment: transpositions count as one edit, without the allocation of the unrestricted
/// Damerau distance), so that a file of tens of thousands of servers stays fast; callers bound
/// how many suggestions one file asks for ([`SUGGESTIONS_PER_FILE`]).
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let limit = (c.len().max(word.len()) / 3).max(2);
        if c.len().abs_diff(word.len()) > limit {
            continue;
        }
        let distance = strsim::osa_distance(&word, &c.to_ascii_lowercase());
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, c));
            if distance == 0 {
                break;
            }
        }
    }
    best.map(|(_, c)| c)
}

/// How many "did you mean" suggestions among all the servers' names one file gets: past that,
/// each further unknown name is still reported, without a suggestion (each costs a pass over
/// every name).
pub const SUGGESTIONS_PER_FILE: usize = 20;

impl Reader<'_> {
    fn error(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        self.error(
            Diagnostic::new(
                format!("expected {expected}, found {}", node.describe()),
                node.span,
                path,
            )
            .help(format!("write {expected} here")),
        );
    }

    /// Checks that `node` is a mapping whose keys are all in `allowed`, reporting the others.
    fn fields<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.type_error(node, path, "a mapping of `key: value` lines");
            return None;
        };
        let mut fields = Fields {
            entries: Vec::with_capacity(entries.len()),
        };
        for (key, value) in entries {
            let NodeKind::Scalar { value: name, .. } = &key.kind else {
                self.type_error(key, path, "a plain key");
                continue;
            };
            if allowed.contains(&name.as_str()) {
                fields.entries.push((name.as_str(), value));
                continue;
            }
            let field_path = join(path, name);
            if name.eq_ignore_ascii_case("password") {
                self.error(
                    Diagnostic::new("inline passwords are refused", key.span, field_path).help(
                        "remove the password from this file; name where to read it with \
                         `password_env: VARIABLE` or `password_file: PATH`",
                    ),
                );
                continue;
            }
            let help = match suggest(name, allowed.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("the fields allowed here are: {}", allowed.join(", ")),
            };
            self.error(
                Diagnostic::new(format!("unknown field `{name}`"), key.span, field_path).help(help),
            );
        }
        Some(fields)
    }

    fn string(&mut self, fields: &Fields<'_>, key: &str, path: &str) -> Option<Spanned<String>> {
        let node = fields.get(key)?;
        match &node.kind {
            NodeKind::Scalar { value, .. } if !value.trim().is_empty() => Some(Spanned {
                value: value.clone(),
                span: node.span,
            }),
            NodeKind::Scalar { .. } => {
                self.error(
                    Diagnostic::new(format!("`{key}` is empty"), node.span, join(path, key))
                        .help(format!("give `{key}` a value, or remove the line")),
                );
                None
            }
            _ => {
                self.type_error(node, &join(path, key), "a string");
                None
            }
        }
    }

    fn unsigned(&mut self, fields: &Fields<'_>, key: &str, path: &str) -> Option<Spanned<u64>> {
        let node = fields.get(key)?;
        if let NodeKind::Scalar { value, plain: true } = &node.kind
            && let Ok(n) = value.parse::<u64>()
        {
            return Some(Spanned {
                value: n,
                span: node.span,
            });
        }
        self.type_error(node, &join(path, key), "a whole number");
        None
    }

    fn bool(&mut self, fields: &Fields<'_>, key: &str, path: &str) -> Option<Spanned<bool>> {
        let node = fields.get(key)?;
        let value = match &node.kind {
            NodeKind::Scalar { value, plain: true } => match value.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if value.is_none() {
            self.type_error(node, &join(path, key), "`true` or `false`");
        }
        value.map(|value| Spanned {
            value,
            span: node.span,
        })
    }

    /// A value that must be one of `choices` (matched exactly: `Replica` is not `replica`).
    fn choice<T: Copy>(
        &mut self,
        fields: &Fields<'_>,
        key: &str,
        path: &str,
        choices: &[(&str, T)],
    ) -> Option<Spanned<T>> {
        let node = fields.get(key)?;
        let names = || choices.iter().map(|(name, _)| *name);
        if let NodeKind::Scalar { value, .. } = &node.kind {
            if let Some((_, v)) = choices.iter().find(|(name, _)| name == value) {
                return Some(Spanned {
                    value: *v,
                    span: node.span,
                });
            }
            let allowed = names().collect::<Vec<_>>().join(" | ");
            let help = match suggest(value, names()) {
                Some(near) => format!("did you mean `{near}`? (one of: {allowed})"),
                None => format!("write one of: {allowed}"),
            };
            self.error(
                Diagnostic::new(
                    format!("`{value}` is not a valid `{key}`"),
                    node.span,
                    join(path, key),
                )
                .help(help),
            );
        } else {
            self.type_error(node, &join(path, key), "one of the listed words");
        }
        None
    }

    /// `streamed`: the servers already read while parsing (the `servers` list is empty in the tree).
    fn topology(&mut self, root: &Node, streamed: Vec<RawServer>) -> RawTopology {
        let mut raw = RawTopology::default();
        let Some(fields) = self.fields(root, "", TOP_FIELDS) else {
            return raw;
        };
        raw.has_version = fields.get("version").is_some();
        raw.has_servers = fields.get("servers").is_some();
        raw.version = self.unsigned(&fields, "version", "");
        raw.update = self.string(&fields, "update", "");
        if let Some(defaults) = fields.get("defaults")
            && let Some(d) = self.fields(defaults, "defaults", DEFAULTS_FIELDS)
        {
            if let Some(sql) = d.get("sql") {
                raw.defaults = self.sql(sql, "defaults.sql");
            }
            if let Some(api) = d.get("api") {
                raw.defaults_api = self.api(api, "defaults.api");
            }
            raw.defaults_transport = self.choice(&d, "transport", "defaults", TRANSPORTS);
        }
        if let Some(servers) = fields.get("servers") {
            if let NodeKind::Seq(items) = &servers.kind {
                // Items are streamed unless the list was empty; a nested list is never streamed.
                debug_assert!(items.is_empty());
                raw.servers = Some(Spanned {
                    value: streamed,
                    span: servers.span,
                });
            } else {
                self.type_error(
                    servers,
                    "servers",
                    "a list of servers (lines starting with `- `)",
                );
            }
        }
        raw
    }

    fn server(&mut self, node: &Node, path: &str) -> Option<RawServer> {
        let fields = self.fields(node, path, SERVER_FIELDS)?;
        let name = self.string(&fields, "name", path);
        let upstream = self.string(&fields, "upstream", path);
        let mode = self.choice(
            &fields,
            "mode",
            path,
            &[("replica", Mode::Replica), ("autonomous", Mode::Autonomous)],
        );
        let sql = match fields.get("sql") {
            Some(sql) => self.sql(sql, &join(path, "sql")),
            None => RawSql::default(),
        };
        let api = match fields.get("api") {
            Some(api) => self.api(api, &join(path, "api")),
            None => RawApi::default(),
        };
        let transport = self.choice(&fields, "transport", path, TRANSPORTS);
        Some(RawServer {
            span: node.span,
            name,
            upstream,
            mode,
            sql,
            api,
            transport,
        })
    }

    /// A TCP port, 1 to 65535.
    fn port(&mut self, fields: &Fields<'_>, path: &str, usual: &str) -> Option<Spanned<u16>> {
        self.unsigned(fields, "port", path).and_then(|p| {
            match u16::try_from(p.value).ok().filter(|&n| n > 0) {
                Some(value) => Some(Spanned {
                    value,
                    span: p.span,
                }),
                None => {
                    self.error(
                        Diagnostic::new(
                            format!("port {} is out of range", p.value),
                            p.span,
                            join(path, "port"),
                        )
                        .help(format!("a TCP port is between 1 and 65535; {usual}")),
                    );
                    None
                }
            }
        })
    }

    fn api(&mut self, node: &Node, path: &str) -> RawApi {
        let Some(fields) = self.fields(node, path, API_FIELDS) else {
            return RawApi {
                span: Some(node.span),
                ..RawApi::default()
            };
        };
        RawApi {
            span: Some(node.span),
            host: self.string(&fields, "host", path),
            port: self.port(
                &fields,
                path,
                "WSUS 3.0 serves its web services on 80/443 (default web site) or 8530/8531",
            ),
            tls: self.bool(&fields, "tls", path),
            tls_min: self.choice(&fields, "tls_min", path, TLS_VERSIONS),
            trust_cert: self.bool(&fields, "trust_cert", path),
            ca_file: self.string(&fields, "ca_file", path).map(|s| Spanned {
                value: PathBuf::from(s.value),
                span: s.span,
            }),
            auth: fields.get("auth").and_then(|auth| {
                Some(Spanned {
                    value: self.auth(auth, &join(path, "auth"))?,
                    span: auth.span,
                })
            }),
        }
    }

    fn sql(&mut self, node: &Node, path: &str) -> RawSql {
        let Some(fields) = self.fields(node, path, SQL_FIELDS) else {
            return RawSql::default();
        };
        let port = self.port(&fields, path, "SQL Server listens on 1433");
        RawSql {
            span: Some(node.span),
            host: self.string(&fields, "host", path),
            pipe: self.string(&fields, "pipe", path),
            instance: self.string(&fields, "instance", path),
            port,
            database: self.string(&fields, "database", path),
            encrypt: self.choice(
                &fields,
                "encrypt",
                path,
                &[
                    ("required", Encrypt::Required),
                    ("strict", Encrypt::Strict),
                    ("off", Encrypt::Off),
                    ("danger-plaintext", Encrypt::DangerPlaintext),
                ],
            ),
            tls_min: self.choice(&fields, "tls_min", path, TLS_VERSIONS),
            trust_cert: self.bool(&fields, "trust_cert", path),
            ca_file: self.string(&fields, "ca_file", path).map(|s| Spanned {
                value: PathBuf::from(s.value),
                span: s.span,
            }),
            auth: fields.get("auth").and_then(|auth| {
                Some(Spanned {
                    value: self.auth(auth, &join(path, "auth"))?,
                    span: auth.span,
                })
            }),
        }
    }

    fn auth(&mut self, node: &Node, path: &str) -> Option<RawAuth> {
        let fields = self.fields(node, path, AUTH_FIELDS)?;
        let method = self.choice(
            &fields,
            "method",
            path,
            &[
                ("sql", AuthMethod::Sql),
                ("windows", AuthMethod::Windows),
                ("integrated", AuthMethod::Integrated),
            ],
        );
        let user = self.string(&fields, "user", path);
        let env = self.string(&fields, "password_env", path);
        let file = self.string(&fields, "password_file", path);
        let password = match (env, file) {
            (Some(env), Some(file)) => {
                self.error(
                    Diagnostic::new(
                        "both `password_env` and `password_file` are given",
                        file.span,
                        join(path, "password_file"),
                    )
                    .related(env.span, "`password_env` is here")
                    .help("keep only one source for the password"),
                );
                Some(Spanned {
                    value: SecretSource::Env(env.value),
                    span: env.span,
                })
            }
            (Some(env), None) => {
                if !is_env_name(&env.value) {
                    self.error(
                        Diagnostic::new(
                            // The value is not echoed: it may be the password itself.
                            "the value of `password_env` is not an environment variable name (not shown: it may be the password itself)",
                            env.span,
                            join(path, "password_env"),
                        )
                        .help("name the variable, e.g. `password_env: WSUS_SQL_PASSWORD`; never the password itself"),
                    );
                }
                Some(Spanned {
                    value: SecretSource::Env(env.value),
                    span: env.span,
                })
            }
            (None, Some(file)) => Some(Spanned {
                value: SecretSource::File(PathBuf::from(file.value)),
                span: file.span,
            }),
            (None, None) => None,
        };
        if method.is_none() && fields.get("method").is_none() {
            self.error(
                Diagnostic::new("missing `method`", node.span, join(path, "method"))
                    .help("add `method: sql`, `method: windows` or `method: integrated`"),
            );
        }
        Some(RawAuth {
            inline_password: node_has_key(node, "password"),
            method,
            user,
            password,
        })
    }
}

fn node_has_key(node: &Node, key: &str) -> bool {
    matches!(&node.kind, NodeKind::Map(entries) if entries.iter().any(|(k, _)| {
        matches!(&k.kind, NodeKind::Scalar { value, .. } if value.eq_ignore_ascii_case(key))
    }))
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_but_not_unrelated_words() {
        assert_eq!(
            suggest("upstrem", SERVER_FIELDS.iter().copied()),
            Some("upstream")
        );
        assert_eq!(suggest("Nmae", SERVER_FIELDS.iter().copied()), Some("name"));
        assert_eq!(suggest("colour", SERVER_FIELDS.iter().copied()), None);
    }

    #[test]
    fn environment_variable_names() {
        assert!(is_env_name("WSUS_SQL_PASSWORD"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("hunter 2"));
    }
}
