//! Command bodies: each one resolves its arguments, calls one library operation and renders
//! the result. No store logic lives here (cargo's thin commands over library operations).

use anyhow::Result;

use crate::args::Command;
use crate::config::Config;

mod backup;
mod dead_letters;
mod events;
mod keys;
mod lockdown;
mod man;
mod migrate;
mod peer;
mod serve;
mod verify;
mod window;

/// Runs a parsed command; `Ok(false)` means "completed, but exit 1" (verify failures).
pub fn run(cmd: Command, cfg: &Config) -> Result<bool> {
    match cmd {
        Command::List(a) => keys::list(a, cfg),
        Command::Issue(a) => keys::issue(a, cfg),
        Command::Import(a) => keys::import(a, cfg),
        Command::Revoke(a) => keys::revoke(a, cfg),
        Command::ImportEnv(a) => keys::import_env(a, cfg),
        Command::Disable(a) => keys::set_disabled(a, true, cfg),
        Command::Enable(a) => keys::set_disabled(a, false, cfg),
        Command::Rotate(a) => keys::rotate(a, cfg),
        Command::BootstrapAdmin(a) => keys::bootstrap(a, cfg),
        Command::Events(a) => events::events(a, cfg),
        Command::WatchEvents(a) => events::watch(a, cfg),
        Command::Man(a) => man::man(a),
        Command::Lockdown(c) => lockdown::lockdown(c, cfg),
        Command::Verify(a) => verify::verify(a, cfg),
        Command::Backup(a) => backup::backup(a, cfg),
        Command::Restore(a) => backup::restore(a, cfg),
        Command::Migrate(a) => migrate::migrate(a, cfg),
        Command::Serve(a) => serve::serve(a, cfg),
        Command::Window(w) => window::window(w, cfg),
        Command::DeadLetters(a) => dead_letters::dead_letters(a, cfg),
        Command::Peer(p) => peer::peer(p, cfg),
    }
}
