//! `completions SHELL` and `man`: made from the same clap definitions as `--help`.

use clap::CommandFactory;

use super::*;
use crate::cli::Cli;

pub(crate) fn completions(
    shell: clap_complete::Shell,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "wsus-reset", &mut script);
    emit(out, &String::from_utf8_lossy(&script))?;
    Ok(exit::OK)
}

pub(crate) fn man(
    command: Option<String>,
    dir: Option<PathBuf>,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let render = |cmd: clap::Command, title: String| {
        let mut page = Vec::new();
        // clap names a command with a `'static` string; the process prints and exits.
        let named: &'static str = Box::leak(title.clone().into_boxed_str());
        clap_mangen::Man::new(cmd.name(named))
            .title(title)
            .render(&mut page)
            .map(|()| page)
            .map_err(|e| Failure::BadInput(format!("error: cannot render the manual: {e}")))
    };
    let cli = Cli::command();
    let sub = |name: &str| {
        cli.find_subcommand(name).cloned().ok_or_else(|| {
            Failure::BadInput(format!(
                "error: no command `{name}`: one of {}",
                cli.get_subcommands()
                    .map(|c| c.get_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    match (command, dir) {
        (Some(name), _) => {
            let page = render(sub(&name)?, format!("wsus-reset-{name}"))?;
            emit(out, &String::from_utf8_lossy(&page))?;
        }
        (None, Some(dir)) => {
            let mut pages = vec![(
                "wsus-reset".to_string(),
                render(cli.clone(), "wsus-reset".into())?,
            )];
            for c in cli.get_subcommands() {
                let title = format!("wsus-reset-{}", c.get_name());
                pages.push((title.clone(), render(c.clone(), title)?));
            }
            std::fs::create_dir_all(&dir).map_err(|e| {
                Failure::BadInput(format!("error: cannot create {}: {e}", dir.display()))
            })?;
            for (title, page) in &pages {
                crate::write_atomically(
                    &dir.join(format!("{title}.1")),
                    &String::from_utf8_lossy(page),
                )?;
            }
            emit(
                out,
                &format!("wrote {} pages to {}\n", pages.len(), dir.display()),
            )?;
        }
        (None, None) => {
            let page = render(cli.clone(), "wsus-reset".into())?;
            emit(out, &String::from_utf8_lossy(&page))?;
        }
    }
    Ok(exit::OK)
}
