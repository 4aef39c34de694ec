//! Command-line syntax only (clap types). Resolution into settings lives in `config.rs`,
//! behaviour in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use xai_keys_core::Scope;

/// Key management for XAI nodes: issue, rotate, revoke and audit API keys.
#[derive(Debug, Parser)]
#[command(name = "xai-keys", version, propagate_version = true)]
pub struct Cli {
    /// Key store file [env: XAI_API_KEY_STORE, alias XAI_API_KEY_STORE_PATH]
    /// [default: ./secure_keys/api_keys.json]. The audit log is `<store>.log`. Or a store shared
    /// by a fleet on etcd: etcd://host:port[,host:port…]/prefix (etcds:// for TLS; XAI_ETCD_*).
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub store: Option<PathBuf>,

    /// Output format: a table for people, JSON for automation (auto = table on a terminal).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Auto)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Auto,
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List keys (metadata only, never plaintext).
    List(ListArgs),
    /// Issue a new key; its plaintext is printed once.
    Issue(IssueArgs),
    /// Register a key by its SHA-256 id alone (the plaintext stays in an HSM).
    Import(ImportArgs),
    /// Revoke (delete) a key.
    Revoke(RevokeArgs),
    /// Move the keys configured in the environment (XAI_API_KEYS, XAI_API_ADMIN_KEYS,
    /// XAI_API_ADMIN_TOKEN) into the store as audited, expiring keys, by hash. Keys already in
    /// the store are left alone; keys revoked earlier are never imported again.
    ImportEnv(ImportEnvArgs),
    /// Suspend a key reversibly.
    Disable(KeyArg),
    /// Re-enable a suspended key.
    Enable(KeyArg),
    /// Issue a replacement, then revoke the old key or let it expire after a grace period.
    Rotate(RotateArgs),
    /// Show recent audit events, oldest first.
    Events(EventsArgs),
    /// Replay recent audit events, then follow the log (NDJSON) until SIGINT/SIGTERM.
    WatchEvents(WatchArgs),
    /// Register an admin key from a pre-provisioned secret (idempotent).
    BootstrapAdmin(BootstrapArgs),
    /// Check the store, the audit chain and permissions; exit 1 on any integrity failure.
    Verify(VerifyArgs),
    /// Write a consistent snapshot (store, log, manifest) to a new directory.
    Backup(BackupArgs),
    /// Restore a backup without truncating the live log or reviving revoked keys.
    Restore(RestoreArgs),
    /// Copy a file store and its audit log into an etcd store (chain verified on both sides;
    /// safe to re-run).
    Migrate(MigrateArgs),
    /// Run the authenticating gateway in front of a node's HTTP API.
    Serve(ServeArgs),
    /// Open, close or show the change window in which key changes are planned.
    #[command(subcommand)]
    Window(WindowCommand),
    /// Emergency lockdown (runbook 5.1): while on, every gateway on this store requires a key
    /// on every non-public route and serves /admin/* only to the lockdown's networks (loopback
    /// unless --admin-networks names others). Gateways follow within a second; on and off are
    /// audited, and on is a CRITICAL security event.
    #[command(subcommand)]
    Lockdown(LockdownCommand),
    /// Print the security events that webhooks could not deliver (the dead-letter file), as
    /// NDJSON, decrypting with XAI_SECURITY_WEBHOOK_QUEUE_KEY when the queue is encrypted.
    DeadLetters(DeadLettersArgs),
    /// Peer keys of the validators' gossip: generate one, show fingerprints, sign a request.
    ///
    /// The key ring comes from the environment: XAI_PEER_API_KEY (the current key, which
    /// signs), XAI_PEER_API_KEY_NEXT and XAI_PEER_API_KEY_PREVIOUS (accepted, never used to
    /// sign), or instead the file named by XAI_PEER_KEYRING_FILE (NAME=value lines with the
    /// same three names). Setting both the file and a key variable is an error. No command but
    /// `keygen` ever prints a key.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Write the man pages (xai-keys.1 and one per command), generated from these definitions,
    /// into a directory. For packagers.
    #[command(hide = true)]
    Man(ManArgs),
}

/// `peer`: the shared peer key ring (issue 5).
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Generate a new 256-bit peer key and print it once; it is stored nowhere.
    ///
    /// The key goes to standard output, its fingerprint to standard error (with -o json, both in
    /// one object: {"peer_key", "fingerprint"}; output to a pipe is JSON unless -o table). To rotate without failed gossip, first put the
    /// new key into XAI_PEER_API_KEY_NEXT on every node; then switch the nodes to it as
    /// XAI_PEER_API_KEY one by one (the old key becoming XAI_PEER_API_KEY_PREVIOUS); drop the old
    /// key once no node uses it.
    Keygen,
    /// Print the fingerprint (the non-secret name) of each key of the ring, never a key.
    ///
    /// One line `ROLE FINGERPRINT` per key (roles current, next, previous; with --stdin, the
    /// role is `stdin`); with -o json an array of {"role", "fingerprint"}. Compare the output of
    /// two nodes to check that they hold the same keys. Exit 1 when no ring is configured.
    Fingerprint(PeerFingerprintArgs),
    /// Show, per key fingerprint, which peers last used it and when (phase 3 of a rotation:
    /// drop the old key once nothing uses it).
    ///
    /// Read from `<store>.peer-usage`, which the gateway on this store writes with its
    /// last-use data (every few seconds). Keys of the ring configured in this environment are
    /// listed with their role even when unused; others as `not in this ring`.
    Status,
    /// Sign a request with the ring's current key and print the X-XAI-Peer-* headers.
    ///
    /// One `Name: value` line per header, for `curl -H` (use -o table in scripts: output to a pipe
    /// is JSON by default), or one JSON object {name: value} with -o json. The signature covers
    /// the method, the path and query, the body, the node id and the time: send exactly these,
    /// within XAI_PEER_MAX_SKEW_SECONDS (60 s by default) and only once (the nonce is single-use).
    #[command(after_long_help = PEER_SIGN_EXAMPLE)]
    Sign(PeerSignArgs),
}

const PEER_SIGN_EXAMPLE: &str = "\
Example (bash):
  mapfile -t H < <(xai-keys -o table peer sign --method POST \\
      --path /block/receive --body-file block.json)
  args=(); for h in \"${H[@]}\"; do args+=(-H \"$h\"); done
  curl \"${args[@]}\" -H 'Content-Type: application/json' \\
      --data-binary @block.json http://peer:8080/block/receive

Use --data-binary (curl's -d drops newlines, and the body would no longer match its signature).";

#[derive(Debug, Args)]
pub struct PeerFingerprintArgs {
    /// Read one key from standard input (its first line) instead of the configured ring.
    /// Standard input must not be a terminal (the key would show on screen): pipe it in.
    #[arg(long)]
    pub stdin: bool,
}

#[derive(Debug, Args)]
pub struct PeerSignArgs {
    /// The HTTP method, such as POST.
    #[arg(long)]
    pub method: String,
    /// The path and query exactly as sent, such as `/block/receive` or `/sync?from=10` (not a
    /// URL: no scheme or host).
    #[arg(long, value_name = "PATH_AND_QUERY")]
    pub path: String,
    /// File holding the request body, sent byte for byte; `-` reads standard input. Without it
    /// the body is empty.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// This node's id, as its peers know it: 1 to 128 letters, digits, '-', '_', '.', ':'
    /// [env: XAI_PEER_NODE_ID] [default: the host name, other characters replaced by '-'].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// The webhook queue [env: XAI_SECURITY_WEBHOOK_QUEUE] [default: <store>.webhook-queue];
    /// its dead letters are `<queue>.dead`.
    #[arg(long, value_name = "PATH")]
    pub queue: Option<PathBuf>,
}

/// `window`: change windows (runbook 4.1). Audited; never blocks a change.
#[derive(Debug, Subcommand)]
pub enum WindowCommand {
    /// Open a change window for a fixed time (actions inside it carry its ticket).
    Open(WindowOpenArgs),
    /// Close the open change window early.
    Close(WindowCloseArgs),
    /// Show whether a change window is open.
    Status,
}

/// `lockdown`: the emergency switch.
#[derive(Debug, Subcommand)]
pub enum LockdownCommand {
    /// Turn lockdown on (again: replace the reason, ticket and networks of the one in force).
    On(LockdownOnArgs),
    /// Turn lockdown off.
    Off(LockdownOffArgs),
    /// Show whether lockdown is on, since when, why and for which networks.
    Status,
}

#[derive(Debug, Args)]
pub struct LockdownOnArgs {
    /// What the incident is (recorded in the audit log and the event).
    #[arg(long)]
    pub reason: String,
    /// The incident ticket, such as INC-42.
    #[arg(long, default_value = "")]
    pub ticket: String,
    /// Client networks that keep /admin/* (CIDR, comma-separated, IPv4 and IPv6), such as the
    /// VPN: 10.8.0.0/16,fd00:8::/48. Default: loopback only.
    #[arg(long, value_name = "CIDR,…", value_delimiter = ',')]
    pub admin_networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LockdownOffArgs {
    /// Why it is over (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct WindowOpenArgs {
    /// How long the window stays open: a duration such as 30m, 2h, 1d (1 minute to 7 days).
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: String,
    /// The change ticket the work belongs to, such as CHG-123.
    #[arg(long)]
    pub ticket: String,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct WindowCloseArgs {
    /// Why the window closes early (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `serve`: flags win over the environment. Every other setting is an `XAI_*` variable
/// (see the README's gateway section).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [env: XAI_LISTEN] [default: 127.0.0.1:8080]. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The node's HTTP API, e.g. http://127.0.0.1:8545 [env: XAI_UPSTREAM_URL]. Without it the
    /// gateway serves the admin API, /health and /metrics, and answers other routes with 503.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Route policy file (TOML) [env: XAI_ROUTE_POLICY] [default: the built-in policy].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Print the built-in route policy (a starting point for --policy) and exit.
    #[arg(long)]
    pub print_default_policy: bool,
    /// Do not generate a first admin key on a brand-new store.
    #[arg(long)]
    pub no_auto_bootstrap: bool,
    /// Also serve the peer egress proxy on ADDR [env: XAI_PEER_EGRESS]: a node with
    /// HTTP_PROXY=http://ADDR has its gossip to XAI_PEER_ALLOWLIST destinations signed with the
    /// current peer key.
    #[arg(long, value_name = "ADDR")]
    pub peer_egress: Option<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Lifetime flags shared by `issue`, `import`, `rotate`, `bootstrap-admin`.
#[derive(Debug, Args, Default)]
pub struct TtlArgs {
    /// Lifetime as a duration: `36h`, `90d`, `2w` (default XAI_API_KEY_DEFAULT_TTL_DAYS, 90 days).
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["ttl_days", "ttl_hours", "permanent"])]
    pub ttl: Option<String>,
    /// Lifetime in days (may be fractional); wins over --ttl-hours, as in manage_api_keys.py.
    #[arg(
        long,
        value_name = "DAYS",
        conflicts_with = "permanent",
        allow_negative_numbers = true
    )]
    pub ttl_days: Option<f64>,
    /// Lifetime in hours (may be fractional).
    #[arg(
        long,
        value_name = "HOURS",
        conflicts_with = "permanent",
        allow_negative_numbers = true
    )]
    pub ttl_hours: Option<f64>,
    /// Never expires (needs XAI_API_KEY_ALLOW_PERMANENT=1).
    #[arg(long)]
    pub permanent: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys of this scope: user, operator, auditor or admin.
    #[arg(long, value_parser = parse_scope)]
    pub scope: Option<Scope>,
    /// active, expired or disabled.
    #[arg(long)]
    pub state: Option<String>,
    /// Only active keys expiring within this duration (`7d`).
    #[arg(long, value_name = "DURATION")]
    pub expiring_within: Option<String>,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// user, operator, auditor or admin.
    #[arg(long, value_parser = parse_scope, default_value = "user")]
    pub scope: Scope,
    /// Free text naming the key's owner or purpose (at most 256 characters).
    #[arg(long, default_value = "")]
    pub label: String,
    #[command(flatten)]
    pub ttl: TtlArgs,
    /// Persist the hash of a secret read from standard input instead of generating one.
    #[arg(long)]
    pub plaintext_stdin: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// SHA-256 (64 hex characters) of the key held elsewhere.
    #[arg(long)]
    pub key_id: String,
    /// user, operator, auditor or admin.
    #[arg(long, value_parser = parse_scope, default_value = "user")]
    pub scope: Scope,
    /// Free text naming the key's owner or purpose (at most 256 characters).
    #[arg(long, default_value = "")]
    pub label: String,
    #[command(flatten)]
    pub ttl: TtlArgs,
}

#[derive(Debug, Args)]
pub struct ImportEnvArgs {
    /// Show what would be imported without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub ttl: TtlArgs,
}

#[derive(Debug, Args)]
pub struct KeyArg {
    /// Full key id or a unique prefix of at least 12 hex characters.
    pub key_id: String,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Full key id or a unique prefix of at least 12 hex characters.
    pub key_id: String,
    /// Why (recorded in the audit log), e.g. `compromised-INC-1234`.
    #[arg(long)]
    pub reason: Option<String>,
    /// Refuse if the key was used within this duration (`15m`), according to the gateway's
    /// last-use statistics (`<store>.usage`), e.g. to check that a client switched keys.
    #[arg(long, value_name = "DURATION")]
    pub if_idle: Option<String>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Full key id or a unique prefix of at least 12 hex characters.
    pub key_id: String,
    /// Keep the old key working for this long (`24h`); 0 revokes it at once.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub grace: String,
    /// Scope of the replacement (default: the old key's).
    #[arg(long, value_parser = parse_scope)]
    pub scope: Option<Scope>,
    /// Label of the replacement (default: the old key's).
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub ttl: TtlArgs,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// How many of the most recent matching events (1–10000).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only this action: issue, revoke, rotate, expire, disable, enable, restore, adopt,
    /// recover, window_open, window_close.
    #[arg(long)]
    pub action: Option<String>,
    /// Full key id or prefix (also matches `replaced`).
    #[arg(long)]
    pub key_id: Option<String>,
    /// RFC 3339 time, epoch seconds, or a duration ago (`2h`).
    #[arg(long)]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Replay this many recent events first.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Multi-line JSON for people instead of NDJSON.
    #[arg(long)]
    pub pretty: bool,
    /// Poll interval: a duration (`250ms`) or seconds (`0.5`, as the reference).
    #[arg(long, default_value = "250ms", value_name = "DURATION")]
    pub interval: String,
    /// Resume file for a supervised shipper: where the last emitted line ended. When it
    /// exists, watching resumes right after that line (no replay), so a restart loses nothing
    /// and repeats at most the batch being written when it stopped; it is saved (atomically,
    /// 0600) after every batch is written.
    #[arg(long, value_name = "PATH")]
    pub cursor: Option<PathBuf>,
    /// Append the NDJSON to this file (created 0600, fsynced after every batch, before the
    /// cursor moves) instead of standard output.
    #[arg(long, value_name = "PATH", conflicts_with = "pretty")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The secret (visible to other users in the process list: prefer --secret-stdin or
    /// XAI_BOOTSTRAP_ADMIN_KEY).
    #[arg(long, conflicts_with = "secret_stdin")]
    pub secret: Option<String>,
    /// Read the secret from standard input.
    #[arg(long)]
    pub secret_stdin: bool,
    #[arg(long, default_value = "bootstrap-admin")]
    pub label: String,
    #[command(flatten)]
    pub ttl: TtlArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Accept the current store file as the audited state (records an `adopt` event). Use only
    /// after reviewing an out-of-band change that verify reported.
    #[arg(long)]
    pub adopt: bool,
    /// Fail unless the store is on encrypted storage (dm-crypt/LUKS, a memory filesystem such
    /// as a Vault Agent's tmpfs, or an encrypting stacked filesystem). Without it, storage that
    /// is not, or cannot be shown to be, encrypted is a warning.
    #[arg(long)]
    pub require_encrypted: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The file store to copy (its audit log is `<FILE>.log`).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The etcd store to copy into: etcd://host:port[,host:port…]/prefix (etcds:// for TLS).
    /// An empty prefix, or one holding an interrupted or finished migration of the same store.
    #[arg(long, value_name = "URL")]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// New directory to write the backup into.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup directory written by `xai-keys backup`.
    pub path: PathBuf,
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse().map_err(|e: xai_keys_core::Error| e.to_string())
}
