//! `rehearse FILE`: the whole repair against an in-process lab copy of the hierarchy.

use super::*;

/// `rehearse`: the lab in-process on a free loopback port, then plan --online, apply, verify
/// through tiberius, and a report of before and after.
pub(crate) fn run(
    file: &Path,
    options: crate::cli::RehearseArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let crate::cli::RehearseArgs {
        seed: lab_seed,
        parallel,
        latency,
        state_dir,
        json,
        platform,
    } = options;
    let topology = Arc::new(Topology::load(file)?);
    let platforms = super::lab::known_platforms(&topology, platform.platforms.clone())?;
    // The lab checks one made-up SQL login and one made-up Windows account (for the web
    // service, over NTLM), and every server logs in with them.
    let login = (
        "wsus_rehearsal".to_string(),
        format!("rehearsal-{:016x}", fastrand::u64(..)),
    );
    let windows_login = (format!("REHEARSAL\\{}", login.0), login.1.clone());
    let temp = tempfile::tempdir()
        .map_err(|e| Failure::BadInput(format!("error: temporary directory: {e}")))?;
    // Encrypted as each server's `encrypt` says, its certificate validated against its host
    // name: the production TLS path, with a throwaway authority in place of the real one.
    let (identity, ca) = generate_identity(&topology, temp.path())?;
    let lab = Lab::new(
        &topology,
        LabConfig {
            seed: seed(lab_seed),
            latency: Duration::from_millis(latency),
            credentials: Some(login.clone()),
            windows_login: Some(windows_login.clone()),
            tls: Some(identity),
            sql_version: platform.sql_version,
            windows: platform.windows,
            platforms,
            wsus_version: super::lab::wsus_version(&platform),
            wsus_versions: super::lab::known_wsus_versions(&topology, &platform)?,
            ..LabConfig::default()
        },
    )
    .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    // Without --state-dir the journal lives (and dies) in the temporary directory: not named.
    let keep_journal = state_dir.is_some();
    let state_dir = state_dir.unwrap_or_else(|| temp.path().join("state"));
    let rt = runtime()?;
    let (addr, api_addr, stop) = rt.block_on(async {
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (listener, addr) = bind(loopback, false).await?;
        let (api_listener, api_addr) = bind(loopback, false).await?;
        let stop = CancellationToken::new();
        let (serving, token) = (lab.clone(), stop.clone());
        tokio::spawn(async move { serving.serve(listener, token).await });
        let (serving, token) = (lab.clone(), stop.clone());
        tokio::spawn(async move { serving.serve_api(api_listener, token).await });
        Ok::<_, Failure>((addr, api_addr, stop))
    })?;
    let options = ConnectOptions {
        connect_via: Some(addr),
        connect_via_ca: Some(ca),
        lab_login: Some(login),
        api_via: Some(api_addr),
        lab_windows_login: Some(windows_login),
        ..ConnectOptions::default()
    };
    let selection = select_all(&topology)?;
    let before_lab = lab.snapshot();
    let before = rt.block_on(survey(&topology, &selection, &options, 16));
    let plan = Plan::online(&topology, &selection, &before, false);
    if !json {
        crate::emit(
            out,
            &format!(
                "Rehearsal: lab on {addr} (SQL Server {} on Windows Server {}{}, TLS as each server's `encrypt` says) and {api_addr} (the web service, HTTPS as each server's `api.tls` says, NTLM), certificates from a throwaway authority, seed {}, {} servers\n\n== Online plan (read-only probe) ==\n{}\n== Apply ==\n",
                platform.sql_version.product_version(),
                platform.windows,
                if platform.platforms.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} server(s) on their own --platform",
                        platform.platforms.len()
                    )
                },
                lab_seed.name(),
                topology.servers().len(),
                plan.render_text()
            ),
        )?;
    }
    let run = RunArgs {
        parallel,
        max_failures: None,
        state_dir,
        json,
        new_run: false,
        accept_eula: false,
        lock_check_ms: 30_000,
    };
    let report = rt.block_on(run_engine(
        Arc::clone(&topology),
        selection.clone(),
        &run,
        options.clone(),
        false,
        "wsus-reset rehearse (the lab is gone with this process)".into(),
    ))?;
    let after = rt.block_on(survey(&topology, &selection, &options, 16));
    // The clients' side, after the repair: a synthetic client scans each server with `api`.
    let clients = super::verify::run_clients(
        &topology,
        &selection,
        &options,
        None,
        &run.state_dir,
        16,
        &rt,
    )?;
    let after_lab = lab.snapshot();
    stop.cancel();
    if !json {
        crate::emit(out, &report::summary_table(&report, keep_journal))?;
        crate::emit(
            out,
            &format!(
                "\n== Verify ==\n{}",
                report::rehearsal_table(&before, &after, &before_lab, &after_lab)
            ),
        )?;
        crate::emit(out, &super::verify::client_table(&clients))?;
    }
    let verified = after.iter().all(|s| s.ok) && clients.ok();
    Ok(match (report.outcome, verified) {
        (RunOutcome::Succeeded, true) => exit::OK,
        (RunOutcome::Unfinished, _) => exit::UNFINISHED,
        _ => exit::FAILED,
    })
}
