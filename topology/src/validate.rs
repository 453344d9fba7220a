//! Checks that hold across fields and servers, after the schema: required values after the
//! `defaults` merge, unique names, upstreams that exist, no cycles, replicas that have an upstream.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::diagnostic::Diagnostic;
use crate::model::{ApiTarget, Auth, KB954960_UPDATE_ID, Mode, SqlTarget, Transport};
use crate::schema::{
    AuthMethod, RawApi, RawAuth, RawServer, RawSql, RawTopology, SUGGESTIONS_PER_FILE, Spanned,
    suggest,
};
use crate::yaml::Span;

/// A server whose fields are all valid, before the graph is built.
#[derive(Debug)]
pub struct Checked {
    pub name: String,
    pub upstream: Option<usize>,
    pub mode: Mode,
    pub sql: Option<SqlTarget>,
    pub api: Option<ApiTarget>,
    pub transport: Transport,
    pub span: Span,
}

/// What every server inherits.
struct Defaults<'a> {
    sql: &'a RawSql,
    api: &'a RawApi,
    transport: Option<&'a Spanned<Transport>>,
}

#[derive(Debug)]
pub struct CheckedTopology {
    pub update: String,
    /// In file order; `upstream` indexes this list.
    pub servers: Vec<Checked>,
}

/// Validates a raw topology. Returns `None` when anything was pushed onto `diagnostics`.
pub fn check(raw: RawTopology, diagnostics: &mut Vec<Diagnostic>) -> Option<CheckedTopology> {
    let errors_before = diagnostics.len();
    let doc_start = Span::new(0, 0);
    match &raw.version {
        None if raw.has_version => {}
        None => diagnostics.push(
            Diagnostic::new("missing `version`", doc_start, "version")
                .help("add `version: 1` as the first line"),
        ),
        Some(v) if v.value != 1 => diagnostics.push(
            Diagnostic::new(
                format!("unsupported topology version {}", v.value),
                v.span,
                "version",
            )
            .help("this wsus-reset reads `version: 1`"),
        ),
        Some(_) => {}
    }
    let update = match &raw.update {
        None => Some(KB954960_UPDATE_ID.to_string()),
        Some(u) => {
            let guid = normalize_guid(&u.value);
            if guid.is_none() {
                diagnostics.push(
                    Diagnostic::new(format!("`{}` is not a GUID", u.value), u.span, "update").help(
                        format!(
                            "write an UpdateID like {KB954960_UPDATE_ID} (the KB 954960 update), \
                             or remove `update` to use that one"
                        ),
                    ),
                );
            }
            guid
        }
    };
    let servers = match raw.servers {
        None if raw.has_servers => Vec::new(),
        None => {
            diagnostics.push(
                Diagnostic::new("no `servers` list", doc_start, "servers")
                    .help("add `servers:` with one `- name: ...` entry per WSUS server"),
            );
            Vec::new()
        }
        Some(list) if list.value.is_empty() => {
            diagnostics.push(
                Diagnostic::new("the `servers` list is empty", list.span, "servers")
                    .help("add one `- name: ...` entry per WSUS server"),
            );
            Vec::new()
        }
        Some(list) => list.value,
    };

    let defaults = Defaults {
        sql: &raw.defaults,
        api: &raw.defaults_api,
        transport: raw.defaults_transport.as_ref(),
    };
    let checked = check_servers(servers, &defaults, diagnostics);
    (diagnostics.len() == errors_before).then(|| CheckedTopology {
        update: update.unwrap_or_default(),
        servers: checked,
    })
}

fn check_servers(
    servers: Vec<RawServer>,
    defaults: &Defaults<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Checked> {
    // Paths are formatted only for an error: a valid 100,000-server file formats none.
    let path = |i: usize, field: &str| format!("servers[{i}].{field}");
    // Names first: everything after refers to servers by name.
    let mut by_name: HashMap<String, usize> = HashMap::with_capacity(servers.len());
    for (i, server) in servers.iter().enumerate() {
        let Some(name) = &server.name else {
            diagnostics.push(
                Diagnostic::new("server has no `name`", server.span, path(i, "name"))
                    .help("add `name: <the WSUS server's DNS name>`"),
            );
            continue;
        };
        if !is_server_name(&name.value) {
            diagnostics.push(
                Diagnostic::new(
                    format!("`{}` is not a valid server name", name.value),
                    name.span,
                    path(i, "name"),
                )
                .help(
                    "a server name is a DNS name: letters, digits, `-`, `.` and `_`, \
                     starting with a letter or digit, at most 253 characters",
                ),
            );
        }
        match by_name.entry(crate::graph::name_key(&name.value)) {
            Entry::Occupied(first) => {
                let first_span = servers[*first.get()]
                    .name
                    .as_ref()
                    .map_or(Span::default(), |n| n.span);
                diagnostics.push(
                    Diagnostic::new(
                        format!("duplicate server name `{}`", name.value),
                        name.span,
                        path(i, "name"),
                    )
                    .related(first_span, "first defined here")
                    .help("server names are DNS names, unique ignoring case and a trailing dot: rename or remove one"),
                );
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
    }

    let mut upstream_of: Vec<Option<usize>> = vec![None; servers.len()];
    for (i, server) in servers.iter().enumerate() {
        let upstream = server
            .upstream
            .as_ref()
            .and_then(|up| resolve_upstream(i, up, &servers, &by_name, diagnostics));
        upstream_of[i] = upstream;
        if let (Some(mode), None) = (&server.mode, &server.upstream)
            && mode.value == Mode::Replica
        {
            diagnostics.push(
                Diagnostic::new(
                    "a top server cannot be a replica",
                    mode.span,
                    path(i, "mode"),
                )
                .help(
                    "a replica copies approvals from its upstream: add `upstream: <server>` \
                         or set `mode: autonomous`",
                ),
            );
        }
    }
    report_cycles(&servers, &upstream_of, diagnostics);

    let mut checked = Vec::with_capacity(servers.len());
    for ((i, server), upstream) in servers.into_iter().enumerate().zip(upstream_of) {
        // A server is reached the way(s) it writes; one that writes neither, through its SUSDB
        // (version 1 before `api` existed). `defaults` only fill in keys.
        let wrote_api = server.api.span.is_some();
        let has_sql = server.sql.span.is_some() || !wrote_api;
        let transport = check_transport(&server, has_sql, wrote_api, defaults, i, diagnostics);
        let sql = has_sql.then(|| {
            check_sql(
                server.sql.merged_over(defaults.sql),
                server.span,
                i,
                diagnostics,
            )
        });
        let api =
            wrote_api.then(|| check_api(server.api.merged_over(defaults.api), i, diagnostics));
        if sql.as_ref().is_some_and(Option::is_none) || api.as_ref().is_some_and(Option::is_none) {
            continue;
        }
        if let (Some(name), Some(transport)) = (server.name, transport) {
            checked.push(Checked {
                name: name.value,
                upstream,
                mode: server.mode.map_or(Mode::Autonomous, |m| m.value),
                sql: sql.flatten(),
                api: api.flatten(),
                transport,
                span: server.span,
            });
        }
    }
    checked
}

/// The way a server is reached: the only one it gives, or `transport` (its own, else the
/// defaults') when it gives both.
fn check_transport(
    server: &RawServer,
    has_sql: bool,
    has_api: bool,
    defaults: &Defaults<'_>,
    index: usize,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Transport> {
    let path = format!("servers[{index}].transport");
    let given = server.transport.as_ref();
    let only = match (has_sql, has_api) {
        (true, true) => {
            return match given.or(defaults.transport) {
                Some(t) => Some(t.value),
                None => {
                    let at = server.api.span.unwrap_or(server.span);
                    diagnostics.push(
                        Diagnostic::new(
                            "both `sql` and `api` are given, and no `transport` chooses one",
                            at,
                            path,
                        )
                        .help(
                            "add `transport: api` (the administration web service) or \
                             `transport: sql` (the SUSDB), here or under `defaults`",
                        ),
                    );
                    None
                }
            };
        }
        (false, true) => Transport::Api,
        _ => Transport::Sql,
    };
    match given {
        Some(t) if t.value != only => {
            diagnostics.push(
                Diagnostic::new(
                    format!(
                        "`transport: {}`, but the server has no `{}`",
                        t.value, t.value
                    ),
                    t.span,
                    path,
                )
                .help(format!(
                    "add `{}: {{ host: ... }}` to this server, or write `transport: {only}`",
                    t.value
                )),
            );
            None
        }
        _ => Some(only),
    }
}

fn check_api(api: RawApi, index: usize, diagnostics: &mut Vec<Diagnostic>) -> Option<ApiTarget> {
    let path = &format!("servers[{index}].api");
    let at = api.span.unwrap_or_default();
    let Some(host) = api.host else {
        diagnostics.push(
            Diagnostic::new("missing `api.host`", at, format!("{path}.host")).help(
                "add `api: { host: <the WSUS server's DNS name> }`: the host its \
                 administration web service answers on",
            ),
        );
        return None;
    };
    let auth = match api.auth {
        None => Auth::Integrated,
        Some(auth) => {
            if let Some(method) = &auth.value.method
                && method.value == AuthMethod::Sql
            {
                diagnostics.push(
                    Diagnostic::new(
                        "the web service does not take a SQL login",
                        method.span,
                        format!("{path}.auth.method"),
                    )
                    .help(
                        "the administration web service uses Windows authentication: \
                         `method: windows` with `user: 'DOMAIN\\user'` and a password source, \
                         or `method: integrated`",
                    ),
                );
                return None;
            }
            check_auth(auth, &format!("{path}.auth"), diagnostics)?
        }
    };
    let tls = api.tls.is_none_or(|t| t.value);
    Some(ApiTarget {
        host: host.value,
        port: api.port.map_or(if tls { 443 } else { 80 }, |p| p.value),
        tls,
        tls_min: api.tls_min.map(|t| t.value).unwrap_or_default(),
        trust_cert: api.trust_cert.is_some_and(|t| t.value),
        ca_file: api.ca_file.map(|c| c.value),
        auth,
    })
}

fn resolve_upstream(
    i: usize,
    up: &Spanned<String>,
    servers: &[RawServer],
    by_name: &HashMap<String, usize>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<usize> {
    let field = || format!("servers[{i}].upstream");
    match by_name.get(&crate::graph::name_key(&up.value)) {
        Some(&j) if j == i => {
            diagnostics.push(
                Diagnostic::new(
                    format!("server `{}` is its own upstream", up.value),
                    up.span,
                    field(),
                )
                .help(
                    "name the server it synchronizes from, or remove `upstream` for a top server",
                ),
            );
            None
        }
        Some(&j) => Some(j),
        None => {
            let names = servers
                .iter()
                .filter_map(|s| s.name.as_ref().map(|n| n.value.as_str()));
            let near = (diagnostics.len() < SUGGESTIONS_PER_FILE)
                .then(|| suggest(&up.value, names))
                .flatten();
            let help = match near {
                Some(near) => format!("did you mean `{near}`?"),
                None => "add that server to `servers`, or fix the name".to_string(),
            };
            diagnostics.push(
                Diagnostic::new(
                    format!("upstream `{}` is not a server in this file", up.value),
                    up.span,
                    field(),
                )
                .help(help),
            );
            None
        }
    }
}

fn check_sql(
    sql: RawSql,
    server_span: Span,
    index: usize,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<SqlTarget> {
    let path = &format!("servers[{index}]");
    let at = sql.span.unwrap_or(server_span);
    let mut ok = true;
    match (&sql.host, &sql.pipe) {
        (None, None) => {
            diagnostics.push(
                Diagnostic::new("missing `sql.host`", at, format!("{path}.sql.host")).help(
                    "add `sql: { host: <SQL Server of this WSUS server> }`, \
                     or a `host` under `defaults.sql`",
                ),
            );
            ok = false;
        }
        (Some(_), Some(pipe)) => {
            diagnostics.push(
                Diagnostic::new("both `host` and `pipe` are given", pipe.span, format!("{path}.sql.pipe"))
                    .help("a server is reached either over TCP (`host`) or through a local named pipe (`pipe`)"),
            );
            ok = false;
        }
        _ => {}
    }
    let auth = match sql.auth {
        None => Some(Auth::Integrated),
        Some(auth) => check_auth(auth, &format!("{path}.sql.auth"), diagnostics),
    };
    let auth = auth.filter(|_| ok)?;
    Some(SqlTarget {
        host: sql.host.map(|h| h.value),
        pipe: sql.pipe.map(|p| p.value),
        instance: sql.instance.map(|v| v.value),
        port: sql.port.map(|p| p.value),
        database: sql
            .database
            .map_or_else(|| "SUSDB".to_string(), |d| d.value),
        encrypt: sql
            .encrypt
            .map_or(crate::model::Encrypt::Required, |e| e.value),
        tls_min: sql.tls_min.map(|t| t.value).unwrap_or_default(),
        trust_cert: sql.trust_cert.is_some_and(|t| t.value),
        ca_file: sql.ca_file.map(|c| c.value),
        auth,
    })
}

fn check_auth(
    auth: Spanned<RawAuth>,
    path: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Auth> {
    let RawAuth {
        inline_password,
        method,
        user,
        password,
    } = auth.value;
    // A missing or bad `method` was reported by the schema.
    let method = method?;
    match method.value {
        AuthMethod::Sql | AuthMethod::Windows => {
            let what = if method.value == AuthMethod::Sql {
                "a SQL login"
            } else {
                "a Windows account"
            };
            if user.is_none() {
                diagnostics.push(
                    Diagnostic::new("missing `user`", auth.span, format!("{path}.user"))
                        .help(format!("add `user: <{what}>`")),
                );
            }
            if password.is_none() && !inline_password {
                diagnostics.push(
                    Diagnostic::new(
                        "missing password source",
                        auth.span,
                        format!("{path}.password_env"),
                    )
                    .help("add `password_env: VARIABLE` or `password_file: PATH`"),
                );
            }
            let (user, password) = (user?.value, password?.value);
            Some(if method.value == AuthMethod::Sql {
                Auth::Sql { user, password }
            } else {
                Auth::Windows { user, password }
            })
        }
        AuthMethod::Integrated => {
            let extra = user
                .map(|u| ("user", u.span))
                .or(password.map(|p| ("password", p.span)));
            if let Some((what, span)) = extra {
                diagnostics.push(
                    Diagnostic::new(
                        format!("`method: integrated` takes no {what}"),
                        span,
                        path.to_string(),
                    )
                    .help("integrated authentication uses the identity of the process: remove the line, or use `method: windows`"),
                );
                return None;
            }
            Some(Auth::Integrated)
        }
    }
}

/// Reports each cycle once, as `a -> b -> c -> a` in upstream-to-downstream direction.
fn report_cycles(
    servers: &[RawServer],
    upstream_of: &[Option<usize>],
    diagnostics: &mut Vec<Diagnostic>,
) {
    const UNSEEN: usize = usize::MAX;
    // The walk that first reached each server; the walk is iterative so a long chain cannot
    // overflow the stack.
    let mut walk_of = vec![UNSEEN; servers.len()];
    for start in 0..servers.len() {
        let mut at = start;
        while walk_of[at] == UNSEEN {
            walk_of[at] = start;
            match upstream_of[at] {
                Some(up) => at = up,
                None => break,
            }
        }
        if walk_of[at] != start || upstream_of[at].is_none() {
            continue;
        }
        // `at` is on a cycle met for the first time: collect it by following upstreams.
        let mut cycle = vec![at];
        let mut next = upstream_of[at];
        while let Some(n) = next.filter(|&n| n != at) {
            cycle.push(n);
            next = upstream_of[n];
        }
        let name = |i: usize| servers[i].name.as_ref().map_or("?", |n| n.value.as_str());
        // Upstream-to-downstream is the reverse of the upstream chain; start from the least name.
        cycle.reverse();
        let first = (0..cycle.len())
            .min_by_key(|&k| name(cycle[k]))
            .unwrap_or(0);
        cycle.rotate_left(first);
        let mut text: Vec<&str> = cycle.iter().map(|&i| name(i)).collect();
        text.push(name(cycle[0]));
        let anchor = cycle[0];
        let span = servers[anchor]
            .upstream
            .as_ref()
            .map_or(servers[anchor].span, |u| u.span);
        diagnostics.push(
            Diagnostic::new(
                format!("upstream cycle: {}", text.join(" -> ")),
                span,
                format!("servers[{anchor}].upstream"),
            )
            .help("every chain of upstreams must end at a top server (one without `upstream`): break the cycle"),
        );
    }
}

/// `{d359f493-…}` or `d359f493-…` to the canonical upper-case form; `None` if not a GUID.
pub fn normalize_guid(text: &str) -> Option<String> {
    let bare = text.trim();
    let bare = bare
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(bare);
    let groups: Vec<&str> = bare.split('-').collect();
    let lengths = groups.iter().map(|g| g.len()).collect::<Vec<_>>();
    let hex = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    (lengths == [8, 4, 4, 4, 12] && hex).then(|| bare.to_ascii_uppercase())
}

fn is_server_name(name: &str) -> bool {
    name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

#[cfg(test)]
mod tests {
    use crate::Topology;

    #[test]
    fn unknown_upstreams_are_all_reported_and_suggestions_are_bounded() {
        let mut yaml = String::from("version: 1\nservers:\n");
        for i in 0..200 {
            yaml.push_str(&format!(
                "  - name: wsus-{i:04}\n    sql: {{ host: h{i} }}\n"
            ));
            if i > 0 {
                yaml.push_str(&format!("    upstream: wsux-{:04}\n", i - 1));
            }
        }
        let Err(crate::LoadError::Invalid(invalid)) =
            Topology::from_bytes("t.yaml", yaml.as_bytes())
        else {
            panic!("199 unknown upstreams must be refused");
        };
        let text = invalid.render();
        assert_eq!(text.matches("is not a server in this file").count(), 199);
        let suggested = text.matches("did you mean `wsus-").count();
        assert_eq!(suggested, crate::schema::SUGGESTIONS_PER_FILE, "{text}");
    }

    use super::*;
    use crate::TlsMin;

    #[test]
    fn a_name_and_its_absolute_form_are_one_server() {
        let yaml = "version: 1\nservers:\n  - name: wsus-a\n    sql: { host: a }\n  - name: WSUS-A.\n    sql: { host: b }\n";
        let Err(crate::LoadError::Invalid(invalid)) =
            Topology::from_bytes("t.yaml", yaml.as_bytes())
        else {
            panic!("`wsus-a` and `WSUS-A.` are one server");
        };
        assert!(invalid.render().contains("duplicate server name `WSUS-A.`"));
        let yaml = "version: 1\nservers:\n  - name: wsus-a\n    sql: { host: a }\n  - name: b\n    upstream: wsus-a.\n    sql: { host: b }\n";
        let topology =
            Topology::from_bytes("t.yaml", yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(topology.find("WSUS-A."), topology.find("wsus-a"));
        assert!(topology.find("wsus-a").is_some());
    }

    #[test]
    fn guids_are_normalized_to_upper_case() {
        assert_eq!(
            normalize_guid("{d359f493-0aad-43fa-af5c-6763326cd98f}").as_deref(),
            Some(KB954960_UPDATE_ID)
        );
        assert_eq!(normalize_guid("D359F493-0AAD-43FA-AF5C-6763326CD98"), None);
        assert_eq!(normalize_guid("not-a-guid"), None);
        assert_eq!(normalize_guid("g359f493-0aad-43fa-af5c-6763326cd98f"), None);
    }

    #[test]
    fn each_server_is_reached_the_way_it_says_and_both_ways_need_a_transport() {
        let yaml = "version: 1
defaults:
  api: { port: 8530, tls: false, auth: { method: windows, user: 'CORP\\op', password_env: PW } }
  transport: api
servers:
  - name: old-style
    sql: { host: sql-a }
  - name: web
    upstream: old-style
    api: { host: web.corp.example }
  - name: both
    upstream: old-style
    sql: { host: sql-b }
    api: { host: both.corp.example, tls: true }
  - name: both-sql
    upstream: old-style
    transport: sql
    sql: { host: sql-c }
    api: { host: c.corp.example }
";
        let t = Topology::from_bytes("t.yaml", yaml.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        let find = |name: &str| {
            t.servers()
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(find("old-style").transport, Transport::Sql);
        assert!(find("old-style").api.is_none());
        let web = find("web")
            .via_api()
            .unwrap_or_else(|| panic!("web is api"));
        assert_eq!((web.port, web.tls), (8530, false));
        assert!(matches!(&web.auth, Auth::Windows { user, .. } if user == "CORP\\op"));
        assert!(find("web").sql.is_none());
        // Both given: the defaults' transport, the server's own keys over the defaults'.
        let both = find("both")
            .via_api()
            .unwrap_or_else(|| panic!("both is api"));
        assert_eq!((both.port, both.tls), (8530, true));
        assert!(find("both").sql.is_some());
        assert_eq!(find("both-sql").transport, Transport::Sql);
        // Without a transport, both given is an error.
        let ambiguous = yaml.replace("  transport: api\n", "");
        let Err(crate::LoadError::Invalid(invalid)) =
            Topology::from_bytes("t.yaml", ambiguous.as_bytes())
        else {
            panic!("both without a transport must be refused");
        };
        assert!(invalid.render().contains("no `transport` chooses one"));
    }

    #[test]
    fn an_api_port_defaults_to_the_schemes() {
        let t = Topology::from_bytes(
            "t.yaml",
            b"version: 1\nservers:\n  - name: a\n    api: { host: a }\n  - name: b\n    api: { host: b, tls: false }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let ports: Vec<u16> = t
            .servers()
            .iter()
            .filter_map(|s| s.api.as_ref())
            .map(|a| a.port)
            .collect();
        assert_eq!(ports, [443, 80]);
    }

    #[test]
    fn tls_min_is_1_2_unless_a_server_or_the_defaults_allow_older() {
        let t = Topology::from_bytes(
            "t.yaml",
            b"version: 1\ndefaults:\n  sql: { tls_min: \"1.0\" }\nservers:\n  - name: a\n    sql: { host: a }\n  - name: b\n    sql: { host: b, tls_min: 1.1 }\n  - name: c\n    api: { host: c }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let sql: Vec<TlsMin> = t
            .servers()
            .iter()
            .filter_map(|s| s.sql.as_ref())
            .map(|s| s.tls_min)
            .collect();
        assert_eq!(sql, [TlsMin::V1_0, TlsMin::V1_1]);
        assert_eq!(
            t.servers()[2].api.as_ref().map(|a| a.tls_min),
            Some(TlsMin::V1_2)
        );
        let e = Topology::from_bytes(
            "t.yaml",
            b"version: 1\nservers:\n  - name: a\n    api: { host: a, tls_min: \"1.3\" }\n",
        )
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
        assert!(e.contains("`1.3` is not a valid `tls_min`"), "{e}");
        assert!(e.contains("1.0 | 1.1 | 1.2"), "{e}");
    }

    #[test]
    fn server_names_are_dns_names() {
        assert!(is_server_name("wsus-hq.corp.example"));
        assert!(is_server_name("WSUS_01"));
        assert!(!is_server_name("-wsus"));
        assert!(!is_server_name("wsus hq"));
        assert!(!is_server_name("wsus\"hq"));
    }
}
