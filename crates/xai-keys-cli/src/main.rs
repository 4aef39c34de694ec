//! `xai-keys`: the offline key-management CLI (and, later, `serve`).
//!
//! Exit codes: 0 success, 1 refused / not found / integrity failure, 2 usage. Errors go to
//! stderr, as one JSON object with `-o json`.

mod args;
mod commands;
mod config;
mod output;

use std::process::ExitCode;

use clap::Parser;
use xai_keys_core::Error as CoreError;

use crate::args::Cli;
use crate::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_errors = cli.output == args::OutputFormat::Json;
    let env = |k: &str| std::env::var(k).ok();
    let mut store = None;
    let result = Config::resolve(&cli, &env).and_then(|cfg| {
        store = Some(cfg.store_label.clone());
        commands::run(cli.command, &cfg)
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.downcast_ref::<CoreError>().map_or_else(
                || e.downcast_ref::<CliError>().map_or("error", |c| c.code),
                CoreError::code,
            );
            // Errors about a key's presence say which store was searched (a wrong --store or
            // XAI_API_KEY_STORE is the usual cause of a surprising `not_found`).
            let about_keys = matches!(
                code,
                "not_found" | "ambiguous" | "duplicate" | "key_state" | "recently_used" | "retired"
            );
            if json_errors {
                let mut v = serde_json::json!({ "error": code, "message": format!("{e:#}") });
                if let (Some(p), Some(o)) = (&store, v.as_object_mut()) {
                    o.insert("store".into(), p.clone().into());
                }
                eprintln!("{v}");
            } else {
                eprintln!("error: {e:#}");
                if let (true, Some(p)) = (about_keys, &store) {
                    eprintln!("note: store {p}");
                }
            }
            ExitCode::from(1)
        }
    }
}

/// An error raised by the CLI itself (not the core), with a stable code for `-o json`
/// (e.g. `missing_secret`, as the reference prints).
#[derive(Debug)]
pub struct CliError {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
