//! `reveille manpage`: the man pages, generated from the command line's definition by clap_mangen, so they
//! never drift from `--help`. Without `--dir`, the main page (reveille.1) on stdout; with it, one page per
//! command and subcommand in that directory: reveille.1, reveille-serve.1, reveille-route.1,
//! reveille-route-set.1, ... (the main page's SUBCOMMANDS section names them).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

use super::{print_out, Cli};

/// Why a page was not written.
#[derive(Debug, thiserror::Error)]
enum ManpageError {
    #[error("cannot create {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot render the man page: {0}")]
    Render(std::io::Error),
}

/// Prints the main page, or writes every page into `dir` (created if missing) and lists the files written.
pub(super) fn manpage(dir: Option<PathBuf>) -> ExitCode {
    let result = match dir {
        None => render_main().map(|page| print_out(&page)),
        Some(dir) => write_all(&dir).map(|written| {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }),
    };
    result.unwrap_or_else(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

fn render_main() -> Result<Vec<u8>, ManpageError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command()).render(&mut page).map_err(ManpageError::Render)?;
    Ok(page)
}

/// The command line as the pages show it: without clap's `help` subcommand, which is no command of reveille's
/// (the main page would list a reveille-help(1) that is not written). Built once at the top, so that each
/// subcommand's display name is its full name (reveille-route-set).
fn command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

/// The pages of the command and all its subcommands, as `clap_mangen::generate_to` writes them, but saying which
/// file failed and which were written.
fn write_all(dir: &Path) -> Result<Vec<PathBuf>, ManpageError> {
    std::fs::create_dir_all(dir).map_err(|source| ManpageError::Dir { dir: dir.to_path_buf(), source })?;
    let command = command();
    // Every page's footer names reveille and its version, as the main page's does (a subcommand has no version
    // of its own: its page would say "serve").
    let source = format!("reveille {}", command.get_version().unwrap_or_default());
    let mut written = Vec::new();
    write_tree(command, &source, dir, &mut written)?;
    Ok(written)
}

fn write_tree(
    command: clap::Command,
    source: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), ManpageError> {
    let man = clap_mangen::Man::new(command.clone()).source(source);
    let path = dir.join(man.get_filename());
    man.generate_to(dir).map_err(|source| ManpageError::Write { path: path.clone(), source })?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub.clone(), source, dir, written)?;
    }
    Ok(())
}
