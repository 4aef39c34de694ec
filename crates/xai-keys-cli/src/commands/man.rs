//! `man` (hidden): the man pages, generated from the clap definitions so they can never drift
//! from `--help`. The Debian package ships them (deploy/deb/build).

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::{Cli, ManArgs};

pub fn man(a: ManArgs) -> Result<bool> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    clap_mangen::generate_to(Cli::command(), &a.out)
        .with_context(|| format!("writing the man pages into {}", a.out.display()))?;
    Ok(true)
}
