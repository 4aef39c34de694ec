//! Where the store lives: the filesystem and block device under a path, and whether that
//! storage is encrypted at rest.
//!
//! The runbook (§1) says the store "MUST reside on an encrypted volume". This module turns that
//! sentence into a check `verify` can run: it finds the mount holding the path in
//! `/proc/self/mountinfo`, then walks the block device under it through sysfs
//! (`/sys/dev/block/MAJ:MIN`, its `slaves/` and, for a partition, its parent) looking for a
//! device-mapper `crypt` target (`dm/uuid` starting with `CRYPT-`; `CRYPT-LUKS…` for LUKS).
//! That covers plain dm-crypt, LUKS, LVM on LUKS and LUKS on RAID. A memory filesystem (tmpfs,
//! ramfs: what a Vault Agent renders into) never reaches a disk, and a stacked encrypting
//! filesystem (eCryptfs, gocryptfs, …) encrypts above the disk; both count as encrypted.
//!
//! Two kinds of storage need more than the kernel's tables:
//!
//! * **overlay** (containers, live and "overlayroot" systems): files written through an overlay
//!   land in its upper layer, and files never written are read from its lower layers. The
//!   layers' paths are in the mount's options; when they are visible from this mount namespace
//!   (on the host, or where the runtime's storage is visible) each layer's volume is inspected
//!   in turn, and the overlay counts as encrypted only if the upper layer **and every lower
//!   layer** are (an image may have baked the store into a lower layer). Inside a container the
//!   paths are the host's and are not visible: `Unknown`. Before trusting a path, the check
//!   confirms it is this overlay's upper layer (see `confirm_upper`).
//! * **ZFS** native encryption is not shown in `/proc` or sysfs: the dataset's `encryption` and
//!   `keystatus` properties are asked of a [`ZfsProperties`] lookup, which the CLI wires to the
//!   `zfs` binary and tests to canned output, so this module never starts a process.
//!
//! Anything else the kernel does not show from here (fscrypt directory policies, a network
//! filesystem, overlay layers that are not visible) is reported as unknown, never guessed to
//! be safe; fscrypt is not detected at all (it needs an ioctl, and this crate has no `unsafe`).
//!
//! Everything is read from the two roots passed in, so tests inspect fixtures instead of the
//! machine they run on.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What protects the data at rest on a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encryption {
    /// A device-mapper crypt target sits under the filesystem (`device` is its name, `dm-N`
    /// or the mapper name).
    DmCrypt { device: String, luks: bool },
    /// A memory filesystem: the data never reaches a disk (lost at reboot, by design).
    Memory,
    /// A stacked filesystem that encrypts file contents itself.
    StackedFilesystem,
    /// A block device chain with no crypt target, or a ZFS dataset with `encryption=off`: the
    /// data is on disk in the clear (as far as this host shows).
    Plain,
    /// Cannot be told from this host (the reason says why and what to check instead).
    Unknown { reason: String },
    /// ZFS native encryption with its key loaded: `cipher` as `zfs get encryption` names it
    /// (`aes-256-gcm`, …), `encryption_root` the dataset whose key unlocks this one.
    ZfsNative {
        dataset: String,
        cipher: String,
        encryption_root: String,
    },
}

impl Encryption {
    /// Whether this satisfies "the store MUST reside on an encrypted volume".
    pub fn is_encrypted(&self) -> bool {
        matches!(
            self,
            Encryption::DmCrypt { .. }
                | Encryption::Memory
                | Encryption::StackedFilesystem
                | Encryption::ZfsNative { .. }
        )
    }

    /// One phrase for people.
    pub fn describe(&self) -> String {
        match self {
            Encryption::DmCrypt { device, luks: true } => format!("LUKS (dm-crypt) on {device}"),
            Encryption::DmCrypt {
                device,
                luks: false,
            } => format!("dm-crypt on {device}"),
            Encryption::Memory => "memory filesystem (never written to disk)".to_string(),
            Encryption::StackedFilesystem => "stacked encrypting filesystem".to_string(),
            Encryption::Plain => "NOT encrypted".to_string(),
            Encryption::Unknown { reason } => format!("unknown: {reason}"),
            Encryption::ZfsNative {
                dataset,
                cipher,
                encryption_root,
            } if encryption_root == dataset => {
                format!("ZFS native encryption ({cipher}) on {dataset}")
            }
            Encryption::ZfsNative {
                dataset,
                cipher,
                encryption_root,
            } => {
                format!("ZFS native encryption ({cipher}) on {dataset} (key of {encryption_root})")
            }
        }
    }
}

/// The storage under one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeReport {
    /// The path inspected (the store file, or its directory before the file exists).
    pub path: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// The mount's source as the kernel shows it (`/dev/mapper/…`, `tmpfs`, a dataset name).
    pub source: String,
    /// `MAJ:MIN` of the block device holding the filesystem, when there is one.
    pub device: Option<String>,
    /// The block devices from the filesystem's down to the disks (`dm-1 > dm-0 > sda2`); for
    /// an overlay, one line per layer (`overlay upper layer /var/…/diff: …`).
    pub chain: Vec<String>,
    pub encryption: Encryption,
    /// For an overlay whose layers could be followed: each layer's own report, upper first.
    /// Absent from the JSON otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
}

/// One layer of an overlay and the storage under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// `upper` or `lower`.
    pub role: String,
    /// The layer's directory, as the overlay's mount options name it.
    pub dir: PathBuf,
    pub volume: VolumeReport,
}

impl VolumeReport {
    /// One line for `verify`'s table.
    pub fn summary(&self) -> String {
        let dev = if self.chain.is_empty() {
            self.source.clone()
        } else if self.layers.is_empty() {
            format!("{} ({})", self.source, self.chain.join(" > "))
        } else {
            format!("{} [{}]", self.source, self.chain.join("; "))
        };
        format!(
            "{}: {} on {} mounted at {}",
            self.encryption.describe(),
            self.fs_type,
            dev,
            self.mount_point.display()
        )
    }
}

/// Why a path could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot inspect {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the mount table {path}: {source}")]
    MountTable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no mount in {table} holds {path}")]
    NoMount { table: PathBuf, path: PathBuf },
}

/// ZFS dataset properties, looked up outside this module: the CLI runs the `zfs` binary, tests
/// give canned output. Any `Fn(&str) -> Result<String, String>` is one.
pub trait ZfsProperties {
    /// What `zfs` prints for [`ZFS_GET_ARGS`] followed by `dataset`, or why it could not be
    /// had, as a phrase naming the cause ("`zfs` not found in PATH", "`zfs get` failed: …").
    fn get(&self, dataset: &str) -> Result<String, String>;
}

impl<F: Fn(&str) -> Result<String, String>> ZfsProperties for F {
    fn get(&self, dataset: &str) -> Result<String, String> {
        self(dataset)
    }
}

/// A lookup that has no way to ask ZFS (every ZFS dataset is then `Unknown`).
pub struct NoZfs;

impl ZfsProperties for NoZfs {
    fn get(&self, _dataset: &str) -> Result<String, String> {
        Err("no way to run `zfs` was given to this check".to_string())
    }
}

/// The arguments of the `zfs` command whose output [`parse_zfs_encryption`] reads, before the
/// dataset name: scripted (`-H`: no header, tab-separated), exact values (`-p`), two columns.
pub const ZFS_GET_ARGS: [&str; 6] = [
    "get",
    "-H",
    "-p",
    "-o",
    "property,value",
    "encryption,keystatus,encryptionroot",
];

const MEMORY_FS: &[&str] = &["tmpfs", "ramfs"];
const STACKED_CRYPT_FS: &[&str] = &[
    "ecryptfs",
    "fuse.gocryptfs",
    "fuse.encfs",
    "fuse.cryfs",
    "fuse.securefs",
    "fuse.rclone-crypt",
];
/// How deep a device stack may go before the walk gives up (real stacks are 2–4 deep).
const MAX_DEPTH: usize = 16;
/// How many overlays may sit on one another before the check gives up (real ones: 1, rarely
/// 2 with a container runtime inside a container).
const MAX_OVERLAY_DEPTH: usize = 4;
const OVERLAY_ADVICE: &str = "check the volume the container runtime keeps its layers on, or \
                              mount the store directory from an encrypted volume";

/// Inspects the storage under `path` on this machine, asking `zfs` about ZFS datasets.
pub fn inspect(path: &Path, zfs: &dyn ZfsProperties) -> Result<VolumeReport, VolumeError> {
    inspect_with(
        path,
        Path::new("/proc/self/mountinfo"),
        Path::new("/sys/dev/block"),
        zfs,
    )
}

/// [`inspect`] with the mount table and the sysfs block-device directory given.
pub fn inspect_with(
    path: &Path,
    mountinfo: &Path,
    sys_dev_block: &Path,
    zfs: &dyn ZfsProperties,
) -> Result<VolumeReport, VolumeError> {
    let table = std::fs::read_to_string(mountinfo).map_err(|source| VolumeError::MountTable {
        path: mountinfo.to_path_buf(),
        source,
    })?;
    let inspector = Inspector {
        mounts: parse_mountinfo(&table),
        mountinfo,
        sys_dev_block,
        zfs,
    };
    inspector.inspect(path, &mut Vec::new())
}

struct Inspector<'a> {
    mounts: Vec<Mount>,
    mountinfo: &'a Path,
    sys_dev_block: &'a Path,
    zfs: &'a dyn ZfsProperties,
}

impl Inspector<'_> {
    /// The report for `path`; `overlays` holds the overlay mounts (indexes in the table) whose
    /// layers are being followed, outermost first, so layers cannot loop back onto themselves.
    fn inspect(&self, path: &Path, overlays: &mut Vec<usize>) -> Result<VolumeReport, VolumeError> {
        // The file itself when it exists (a Vault Agent may bind-mount just the file), else the
        // nearest existing directory above it, where it will be created.
        let target = path
            .ancestors()
            .find(|p| !p.as_os_str().is_empty() && p.exists())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let meta = std::fs::metadata(&target).map_err(|source| VolumeError::Stat {
            path: target.clone(),
            source,
        })?;
        let canonical = std::fs::canonicalize(&target).unwrap_or_else(|_| target.clone());
        let dev = meta.dev();
        let (maj, min) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        let index = pick_mount(&self.mounts, (maj, min), &canonical).ok_or_else(|| {
            VolumeError::NoMount {
                table: self.mountinfo.to_path_buf(),
                path: canonical.clone(),
            }
        })?;
        let m = &self.mounts[index];

        let mut report = VolumeReport {
            path: target,
            mount_point: m.mount_point.clone(),
            fs_type: m.fs_type.clone(),
            source: m.source.clone(),
            device: None,
            chain: Vec::new(),
            encryption: Encryption::Plain,
            layers: Vec::new(),
        };
        if MEMORY_FS.contains(&m.fs_type.as_str()) {
            report.encryption = Encryption::Memory;
            return Ok(report);
        }
        if STACKED_CRYPT_FS.contains(&m.fs_type.as_str()) {
            report.encryption = Encryption::StackedFilesystem;
            return Ok(report);
        }
        if m.fs_type == "zfs" {
            report.encryption = self.zfs_encryption(&m.source);
            return Ok(report);
        }
        if m.fs_type == "overlay" {
            if overlays.contains(&index) {
                report.encryption = unknown(format!(
                    "the layers of the overlay at {} lead back to itself",
                    m.mount_point.display()
                ));
            } else if overlays.len() >= MAX_OVERLAY_DEPTH {
                report.encryption =
                    unknown("overlays are stacked deeper than the check follows".to_string());
            } else {
                overlays.push(index);
                self.overlay(&mut report, m, overlays);
                overlays.pop();
            }
            return Ok(report);
        }
        // The block device: the mount's own numbers, or (btrfs and others report an anonymous
        // device) the device node named as the mount's source.
        let block = if m.dev.0 != 0 {
            Some(m.dev)
        } else if m.source.starts_with("/dev/") {
            std::fs::metadata(&m.source)
                .ok()
                .map(|s| (rustix::fs::major(s.rdev()), rustix::fs::minor(s.rdev())))
                .filter(|d| d.0 != 0)
        } else {
            None
        };
        let Some(block) = block else {
            report.encryption = unknown(no_block_reason(&m.fs_type));
            return Ok(report);
        };
        report.device = Some(format!("{}:{}", block.0, block.1));
        let start = self.sys_dev_block.join(format!("{}:{}", block.0, block.1));
        if !start.exists() {
            report.encryption = unknown(format!(
                "block device {}:{} is not in {} (sysfs not mounted here?); check the host",
                block.0,
                block.1,
                self.sys_dev_block.display()
            ));
            return Ok(report);
        }
        let mut walk = Walk::default();
        walk.visit(&start, 0);
        report.chain = walk.chain;
        report.encryption = match walk.crypt {
            Some((device, luks)) => Encryption::DmCrypt { device, luks },
            None if walk.truncated => {
                unknown("the device stack is deeper than the check follows".to_string())
            }
            None => Encryption::Plain,
        };
        Ok(report)
    }

    /// Judges an overlay by its layers: encrypted only if the upper layer and every lower
    /// layer are; `Plain` if any layer is plain; otherwise `Unknown` naming the first layer
    /// that could not be judged.
    fn overlay(&self, report: &mut VolumeReport, m: &Mount, overlays: &mut Vec<usize>) {
        let layers = match overlay_layers(&m.super_options) {
            Ok(l) => l,
            Err(why) => {
                report.encryption = unknown(format!(
                    "an overlay filesystem whose layers {why}; {OVERLAY_ADVICE}"
                ));
                return;
            }
        };
        let Some(upper) = layers.upper.clone() else {
            report.encryption = unknown(format!(
                "a read-only overlay (no upper layer); check the volumes of its lower layers ({})",
                join_paths(&layers.lowers)
            ));
            return;
        };
        if let Err(why) = confirm_upper(m, &upper, layers.work.as_deref()) {
            report.encryption = unknown(format!(
                "an overlay filesystem (a container?) whose upper layer {} {why}; \
                 {OVERLAY_ADVICE}",
                upper.display()
            ));
            return;
        }
        let mut verdicts = Vec::new();
        let all = std::iter::once(("upper", upper))
            .chain(layers.lowers.into_iter().map(|l| ("lower", l)));
        for (role, dir) in all {
            // A layer that is not a directory here would make `inspect` judge its parent.
            let volume = if dir.is_dir() {
                self.inspect(&dir, overlays).map_err(|e| e.to_string())
            } else {
                Err("is not visible from here".to_string())
            };
            match volume {
                Ok(volume) => {
                    report.chain.push(format!(
                        "overlay {role} layer {}: {}",
                        dir.display(),
                        volume.summary()
                    ));
                    verdicts.push((role, dir.clone(), volume.encryption.clone()));
                    report.layers.push(Layer {
                        role: role.to_string(),
                        dir,
                        volume,
                    });
                }
                Err(why) => {
                    report
                        .chain
                        .push(format!("overlay {role} layer {}: {why}", dir.display()));
                    verdicts.push((role, dir, unknown(why)));
                }
            }
        }
        report.encryption = if verdicts.iter().any(|(_, _, e)| *e == Encryption::Plain) {
            Encryption::Plain
        } else if let Some((role, dir, e)) = verdicts.iter().find(|(_, _, e)| !e.is_encrypted()) {
            let why = match e {
                Encryption::Unknown { reason } => reason.clone(),
                other => other.describe(),
            };
            unknown(format!("overlay {role} layer {}: {why}", dir.display()))
        } else {
            // Every layer is encrypted: the upper layer's protection is what new writes get.
            verdicts
                .into_iter()
                .next()
                .map(|(_, _, e)| e)
                .unwrap_or_else(|| unknown("an overlay without layers".to_string()))
        };
    }

    /// Asks the ZFS lookup about `dataset`.
    fn zfs_encryption(&self, dataset: &str) -> Encryption {
        let check = format!("check `zfs get encryption,keystatus {dataset}`");
        // Passed as one argument, never through a shell; a leading `-` would read as an option.
        if dataset.is_empty() || dataset.starts_with('-') || dataset.chars().any(char::is_control) {
            return unknown(format!(
                "ZFS dataset {dataset:?} is not a name this check passes to `zfs`; {check}"
            ));
        }
        match self
            .zfs
            .get(dataset)
            .and_then(|out| parse_zfs_encryption(dataset, &out))
        {
            Ok(e) => e,
            Err(why) => unknown(format!("ZFS: {why}; {check}")),
        }
    }
}

fn unknown(reason: String) -> Encryption {
    Encryption::Unknown { reason }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Confirms that `upper`, resolved in *this* mount namespace, is the overlay's upper layer.
///
/// The overlay's options hold the layer paths as its mounter wrote them, resolved in the
/// mounter's namespace at mount time. Inside a container they name host paths; a path of the
/// same name may exist here and be something else entirely, and judging that directory's
/// volume would give a false verdict, in the worst case a false "encrypted". What can be
/// checked from here, without privileges and without writing anything:
///
/// * the mount point, as this namespace resolves it, shows the overlay (its `st_dev` is the
///   overlay's device from the table), so the next comparison looks at the overlay itself;
/// * an overlay's root directory is a merged directory, and a merged directory reports the
///   attributes of its upper directory (owner, mode, size, modification time with nanoseconds;
///   only `st_dev`, `st_ino` and the link count are the overlay's): the upper directory at the
///   mount's root must report exactly the same ones;
/// * the work directory, when named, must be on the same filesystem as the upper one (the
///   kernel requires it).
///
/// What is left: a directory that is not the layer but has the same owner, mode, size and
/// modification time (to the filesystem's timestamp granularity) would pass. That takes a
/// deliberate copy by someone who can set timestamps there (who could equally forge the mount
/// table) or a coincidence between two directories changed within the same clock tick; the
/// lower layers' paths cannot be confirmed this way at all (their roots are hidden under the
/// merged one), so they are trusted once the upper layer's path is confirmed to be this
/// namespace's. `docs/SECURITY.md` lists this as a known limit.
fn confirm_upper(m: &Mount, upper: &Path, work: Option<&Path>) -> Result<(), String> {
    let top = std::fs::metadata(&m.mount_point).map_err(|e| {
        format!(
            "cannot be compared with the overlay: its mount point {} cannot be read ({e})",
            m.mount_point.display()
        )
    })?;
    if (rustix::fs::major(top.dev()), rustix::fs::minor(top.dev())) != m.dev {
        return Err(format!(
            "cannot be compared with the overlay: another filesystem is mounted over {}",
            m.mount_point.display()
        ));
    }
    let dir = upper.join(m.root.strip_prefix("/").unwrap_or(&m.root));
    let up = std::fs::metadata(&dir).map_err(|e| {
        format!("is not visible from here ({e}; normal inside a container: the path is the host's)")
    })?;
    let attrs = |x: &std::fs::Metadata| {
        (
            x.is_dir(),
            x.mode(),
            x.uid(),
            x.gid(),
            x.size(),
            x.mtime(),
            x.mtime_nsec(),
        )
    };
    if attrs(&up) != attrs(&top) {
        return Err(
            "exists here but is not the directory the overlay shows at its root (owner, mode, \
             size or modification time differ): the path belongs to another mount namespace"
                .to_string(),
        );
    }
    if let Some(work) = work {
        match std::fs::metadata(work) {
            Ok(w) if w.dev() == up.dev() => {}
            Ok(_) => {
                return Err(format!(
                    "is not on the filesystem of its work directory {} (the path belongs to \
                     another mount namespace)",
                    work.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "matches, but its work directory {} is not visible here ({e})",
                    work.display()
                ));
            }
        }
    }
    Ok(())
}

/// The layer directories of an overlay, from its super options in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct OverlayLayers {
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    /// Every lower layer, the data-only ones (after `::`, or `datadir+`) included.
    lowers: Vec<PathBuf>,
}

/// Reads `upperdir=`, `workdir=`, `lowerdir=` (a `:`-separated list) and the newer per-layer
/// `lowerdir+=` / `datadir+=` from an overlay's super options. Options are separated by commas;
/// a comma, space, tab, newline or backslash inside a value is shown as an octal escape
/// (`\054`, `\040`, …; `seq_show_option` in the kernel), undone after splitting. Kernels 6.5
/// and 6.6 also escape a colon inside a lower layer's path (`\072`); the others show the list
/// as the mounter wrote it, where overlay's own escapes (`\:`, `\,`) appear as an escaped
/// backslash (`\134`). The check does not interpret those: a path that still holds a backslash
/// after the octal escapes are undone, or is not absolute, is refused ("cannot be read"), and
/// the overlay is then unknown.
fn overlay_layers(super_options: &str) -> Result<OverlayLayers, String> {
    let mut out = OverlayLayers::default();
    for opt in super_options.split(',') {
        let Some((key, raw)) = opt.split_once('=') else {
            continue;
        };
        match key {
            "upperdir" => out.upper = Some(layer_path(raw)?),
            "workdir" => out.work = Some(layer_path(raw)?),
            "lowerdir" => {
                // Empty items are the `::` that introduces data-only layers.
                for item in raw.split(':').filter(|i| !i.is_empty()) {
                    out.lowers.push(layer_path(item)?);
                }
            }
            "lowerdir+" | "datadir+" => out.lowers.push(layer_path(raw)?),
            _ => {}
        }
    }
    if out.lowers.is_empty() {
        return Err("are not named in the mount table".to_string());
    }
    Ok(out)
}

fn layer_path(raw: &str) -> Result<PathBuf, String> {
    let p = unescape(raw);
    if p.contains('\\') || !p.starts_with('/') {
        return Err(format!(
            "cannot be read from the mount table (a path with escaped characters or not \
             absolute: {p:?})"
        ));
    }
    Ok(PathBuf::from(p))
}

/// Reads the output of `zfs` with [`ZFS_GET_ARGS`] for `dataset`, strictly: one
/// `property<TAB>value` line for each of `encryption`, `keystatus` and `encryptionroot`, and
/// nothing else.
///
/// The format is OpenZFS's zfs-get(8): `-H` omits the header and separates fields by a single
/// tab, `-p` prints exact values, `-o property,value` keeps those two columns. The values are
/// zfsprops(7)'s: `encryption` is `off` or the cipher (`aes-128-ccm`, `aes-192-ccm`,
/// `aes-256-ccm`, `aes-128-gcm`, `aes-192-gcm`, `aes-256-gcm`; `on` is stored as the default
/// cipher and printed as it), `keystatus` is `available`, `unavailable` or `none` (`-` on an
/// unencrypted dataset), `encryptionroot` a dataset name or `-`. As in
/// openzfs/zfs#12181:
///
/// ```text
/// tank-enc/ds-clear  encryption      off          default
/// tank-enc/ds-clear  encryptionroot  -            -
/// ```
///
/// `encryption=off` is [`Encryption::Unknown`], never "plain": the dataset has no native
/// encryption, but the pool's disks may be LUKS devices, and this check does not follow a
/// pool's vdevs (the reason says what to run). A cipher with the key loaded is
/// [`Encryption::ZfsNative`]; anything else is an error (the caller reports it as unknown).
pub fn parse_zfs_encryption(dataset: &str, out: &str) -> Result<Encryption, String> {
    let mut props: BTreeMap<&str, &str> = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let (prop, value) = line
            .split_once('\t')
            .filter(|(_, v)| !v.contains('\t') && !v.is_empty())
            .ok_or_else(|| format!("unexpected `zfs get` output line {line:?}"))?;
        if !matches!(prop, "encryption" | "keystatus" | "encryptionroot") {
            return Err(format!("unexpected property {prop:?} in `zfs get` output"));
        }
        if props.insert(prop, value).is_some() {
            return Err(format!("`zfs get` reported {prop} twice"));
        }
    }
    let (Some(cipher), Some(keystatus), Some(root)) = (
        props.get("encryption"),
        props.get("keystatus"),
        props.get("encryptionroot"),
    ) else {
        return Err(
            "`zfs get` did not report encryption, keystatus and encryptionroot (ZFS older than \
             0.8 has no native encryption)"
                .to_string(),
        );
    };
    match *cipher {
        "off" => Ok(Encryption::Unknown {
            reason: format!(
                "ZFS native encryption is off on {dataset}; the pool's disks may still be \
                 encrypted (LUKS devices under the pool), which this check does not follow: \
                 check `zpool status -P` and `lsblk` for a crypt device under every disk"
            ),
        }),
        c if is_zfs_cipher(c) => match *keystatus {
            "available" if *root != "-" => Ok(Encryption::ZfsNative {
                dataset: dataset.to_string(),
                cipher: c.to_string(),
                encryption_root: (*root).to_string(),
            }),
            other => Err(format!(
                "dataset {dataset} is encrypted ({c}) but its key status is {other:?} and its \
                 encryption root {root:?}"
            )),
        },
        other => Err(format!(
            "unexpected encryption value {other:?} for {dataset}"
        )),
    }
}

fn is_zfs_cipher(c: &str) -> bool {
    matches!(
        c,
        "aes-128-ccm"
            | "aes-192-ccm"
            | "aes-256-ccm"
            | "aes-128-gcm"
            | "aes-192-gcm"
            | "aes-256-gcm"
    )
}

fn no_block_reason(fs_type: &str) -> String {
    match fs_type {
        t if t.starts_with("nfs") || t == "cifs" || t.starts_with("fuse") => {
            format!("{t} is a network or user-space filesystem: check where it stores the data")
        }
        t => format!("{t} has no block device this check can follow"),
    }
}

#[derive(Default)]
struct Walk {
    chain: Vec<String>,
    seen: BTreeSet<PathBuf>,
    crypt: Option<(String, bool)>,
    truncated: bool,
}

impl Walk {
    /// Visits the sysfs directory of one block device, then what it sits on.
    fn visit(&mut self, dir: &Path, depth: usize) {
        if depth > MAX_DEPTH {
            self.truncated = true;
            return;
        }
        let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !self.seen.insert(real.clone()) {
            return;
        }
        let name = device_name(&real);
        let uuid = read_trim(&real.join("dm/uuid"));
        let dm_name = read_trim(&real.join("dm/name"));
        let label = match &dm_name {
            Some(n) if !n.is_empty() => format!("{name} ({n})"),
            _ => name.clone(),
        };
        self.chain.push(label.clone());
        if let Some(u) = uuid.as_deref()
            && u.starts_with("CRYPT-")
            && self.crypt.is_none()
        {
            self.crypt = Some((label, u.starts_with("CRYPT-LUKS")));
        }
        // A partition sits on its parent disk, whose directory holds the partition's.
        if real.join("partition").exists()
            && let Some(parent) = real.parent()
        {
            self.visit(parent, depth + 1);
        }
        if let Ok(entries) = std::fs::read_dir(real.join("slaves")) {
            let mut below: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            below.sort();
            for b in below {
                self.visit(&b, depth + 1);
            }
        }
    }
}

fn device_name(dir: &Path) -> String {
    if let Some(name) = read_trim(&dir.join("uevent")).and_then(|u| {
        u.lines()
            .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
    }) {
        return name;
    }
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    dev: (u32, u32),
    /// The directory of the filesystem mounted here (`/` unless a bind mount of a subtree).
    root: PathBuf,
    mount_point: PathBuf,
    fs_type: String,
    source: String,
    /// The filesystem's own options, still escaped (split them on `,` first).
    super_options: String,
}

/// Parses mountinfo (proc(5)): `id parent MAJ:MIN root mount_point options [optional…] -
/// fstype source super_options`. Malformed lines are skipped.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            Some(Mount {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                root: PathBuf::from(unescape(f.get(3)?)),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                fs_type: (*r.first()?).to_string(),
                source: unescape(r.get(1).copied().unwrap_or("none")),
                super_options: r.get(2).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount holding `path` (its index in `mounts`): among the mounts of its device, the one
/// whose mount point is the longest prefix of the path (bind mounts repeat a device); failing
/// that (a device number the table does not show), the longest prefix of any mount. The last of
/// equals wins, as the kernel stacks later mounts on top.
fn pick_mount(mounts: &[Mount], dev: (u32, u32), path: &Path) -> Option<usize> {
    let best = |only_dev: bool| {
        mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| !only_dev || m.dev == dev)
            .filter(|(_, m)| path.starts_with(&m.mount_point))
            .fold(None::<(usize, &Mount)>, |acc, (i, m)| match acc {
                Some(a) if a.1.mount_point.as_os_str().len() > m.mount_point.as_os_str().len() => {
                    Some(a)
                }
                _ => Some((i, m)),
            })
            .map(|(i, _)| i)
    };
    best(true).or_else(|| best(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mountinfo_line(dev: &str, mp: &str, fs: &str, src: &str) -> String {
        format!("30 1 {dev} / {mp} rw,relatime shared:1 - {fs} {src} rw\n")
    }

    /// A fake /sys/dev/block with devices `name` at `maj:min`, built under `root`.
    struct Sys {
        root: PathBuf,
    }

    impl Sys {
        fn new(root: &Path) -> Self {
            std::fs::create_dir_all(root.join("devices")).unwrap();
            std::fs::create_dir_all(root.join("dev/block")).unwrap();
            Sys {
                root: root.to_path_buf(),
            }
        }
        fn dev_block(&self) -> PathBuf {
            self.root.join("dev/block")
        }
        /// Adds a device directory at `rel` (under devices/) and its dev/block link.
        fn add(&self, rel: &str, majmin: &str) -> PathBuf {
            let dir = self.root.join("devices").join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            let name = Path::new(rel)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            std::fs::write(dir.join("uevent"), format!("MAJOR=0\nDEVNAME={name}\n")).unwrap();
            std::fs::write(dir.join("dev"), format!("{majmin}\n")).unwrap();
            symlink(&dir, self.dev_block().join(majmin)).unwrap();
            dir
        }
        fn dm(&self, dir: &Path, name: &str, uuid: &str) {
            std::fs::create_dir_all(dir.join("dm")).unwrap();
            std::fs::write(dir.join("dm/name"), format!("{name}\n")).unwrap();
            std::fs::write(dir.join("dm/uuid"), format!("{uuid}\n")).unwrap();
        }
        fn slave(&self, upper: &Path, lower: &Path) {
            std::fs::create_dir_all(upper.join("slaves")).unwrap();
            let name = lower.file_name().unwrap();
            symlink(lower, upper.join("slaves").join(name)).unwrap();
        }
    }

    /// Inspects a store in a real temp dir against a mount table with one mount at `/`: the
    /// lookup by the dir's real device misses, so the longest-prefix fallback picks that mount,
    /// described as `fs` on `src` at the device `dev`, from which the sysfs walk starts.
    fn inspect_fixture(
        t: &tempfile::TempDir,
        fs: &str,
        src: &str,
        dev: &str,
        sys: &Path,
    ) -> VolumeReport {
        let store = t.path().join("store/api_keys.json");
        std::fs::create_dir_all(store.parent().unwrap()).unwrap();
        let mi = t.path().join("mountinfo");
        std::fs::write(&mi, mountinfo_line(dev, "/", fs, src)).unwrap();
        inspect_with(&store, &mi, sys, &NoZfs).unwrap()
    }

    #[test]
    fn luks_under_lvm_is_found_through_the_stack() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        let sda = sys.add("pci0/block/sda", "8:0");
        let sda2 = sys.add("pci0/block/sda/sda2", "8:2");
        std::fs::write(sda2.join("partition"), "2\n").unwrap();
        let crypt = sys.add("virtual/block/dm-0", "253:0");
        sys.dm(&crypt, "luks-root", "CRYPT-LUKS2-0123abcd-luks-root");
        sys.slave(&crypt, &sda2);
        let lv = sys.add("virtual/block/dm-1", "253:1");
        sys.dm(&lv, "vg-secrets", "LVM-abcdef");
        sys.slave(&lv, &crypt);
        let _ = sda;
        let r = inspect_fixture(
            &t,
            "ext4",
            "/dev/mapper/vg-secrets",
            "253:1",
            &sys.dev_block(),
        );
        assert_eq!(
            r.encryption,
            Encryption::DmCrypt {
                device: "dm-0 (luks-root)".into(),
                luks: true
            }
        );
        assert!(r.encryption.is_encrypted());
        assert_eq!(
            r.chain,
            vec!["dm-1 (vg-secrets)", "dm-0 (luks-root)", "sda2", "sda"]
        );
        assert_eq!(r.device.as_deref(), Some("253:1"));
        assert!(
            r.summary().starts_with("LUKS (dm-crypt) on dm-0"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn plain_dm_crypt_is_not_luks() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        let c = sys.add("virtual/block/dm-3", "253:3");
        sys.dm(&c, "plain", "CRYPT-PLAIN-plain");
        let r = inspect_fixture(&t, "xfs", "/dev/mapper/plain", "253:3", &sys.dev_block());
        assert!(matches!(
            r.encryption,
            Encryption::DmCrypt { luks: false, .. }
        ));
    }

    #[test]
    fn a_plain_partition_is_reported_plain() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        sys.add("pci0/block/nvme0n1", "259:0");
        let p = sys.add("pci0/block/nvme0n1/nvme0n1p3", "259:3");
        std::fs::write(p.join("partition"), "3\n").unwrap();
        let r = inspect_fixture(&t, "ext4", "/dev/nvme0n1p3", "259:3", &sys.dev_block());
        assert_eq!(r.encryption, Encryption::Plain);
        assert!(!r.encryption.is_encrypted());
        assert_eq!(r.chain, vec!["nvme0n1p3", "nvme0n1"]);
        assert!(
            r.summary()
                .starts_with("NOT encrypted: ext4 on /dev/nvme0n1p3")
        );
    }

    #[test]
    fn lvm_without_crypt_is_plain() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        let sdb = sys.add("pci0/block/sdb", "8:16");
        let lv = sys.add("virtual/block/dm-2", "253:2");
        sys.dm(&lv, "vg-data", "LVM-xyz");
        sys.slave(&lv, &sdb);
        let r = inspect_fixture(&t, "ext4", "/dev/mapper/vg-data", "253:2", &sys.dev_block());
        assert_eq!(r.encryption, Encryption::Plain);
    }

    #[test]
    fn memory_and_stacked_filesystems_count_as_encrypted() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        let r = inspect_fixture(&t, "tmpfs", "tmpfs", "0:40", &sys.dev_block());
        assert_eq!(r.encryption, Encryption::Memory);
        assert!(r.encryption.is_encrypted());
        let t2 = tempfile::tempdir().unwrap();
        let r = inspect_fixture(
            &t2,
            "fuse.gocryptfs",
            "/home/x/cipher",
            "0:41",
            &sys.dev_block(),
        );
        assert_eq!(r.encryption, Encryption::StackedFilesystem);
    }

    #[test]
    fn overlay_without_layer_options_and_zfs_without_a_lookup_are_unknown_not_safe() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        let r = inspect_fixture(&t, "overlay", "overlay", "0:50", &sys.dev_block());
        assert!(matches!(r.encryption, Encryption::Unknown { .. }));
        assert!(!r.encryption.is_encrypted());
        assert!(r.encryption.describe().contains("overlay"));
        let t2 = tempfile::tempdir().unwrap();
        let r = inspect_fixture(&t2, "zfs", "tank/secrets", "0:51", &sys.dev_block());
        assert!(r.encryption.describe().contains("zfs get encryption"));
    }

    #[test]
    fn a_device_missing_from_sysfs_is_unknown() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        let r = inspect_fixture(&t, "ext4", "/dev/sdz1", "8:241", &sys.dev_block());
        assert!(matches!(r.encryption, Encryption::Unknown { .. }), "{r:?}");
    }

    #[test]
    fn a_cycle_in_sysfs_does_not_loop() {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        let a = sys.add("virtual/block/dm-5", "253:5");
        let b = sys.add("virtual/block/dm-6", "253:6");
        sys.slave(&a, &b);
        sys.slave(&b, &a);
        let r = inspect_fixture(&t, "ext4", "/dev/dm-5", "253:5", &sys.dev_block());
        assert_eq!(r.encryption, Encryption::Plain);
        assert_eq!(r.chain.len(), 2);
    }

    #[test]
    fn mountinfo_parsing_and_picking() {
        let text = "22 27 0:21 / /proc rw - proc proc rw\n\
                    27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    90 27 254:0 /srv/a /mnt/my\\040keys rw master:1 - ext4 /dev/vda rw\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].mount_point, PathBuf::from("/mnt/my keys"));
        let p = &m[pick_mount(&m, (254, 0), Path::new("/mnt/my keys/api_keys.json")).unwrap()];
        assert_eq!(p.mount_point, PathBuf::from("/mnt/my keys"));
        assert_eq!(p.root, PathBuf::from("/srv/a"));
        let p = &m[pick_mount(&m, (254, 0), Path::new("/etc/x")).unwrap()];
        assert_eq!(p.mount_point, PathBuf::from("/"));
        assert_eq!(p.super_options, "rw");
        // A device the table does not list: the longest prefix of any mount.
        let p = &m[pick_mount(&m, (0, 99), Path::new("/proc/self")).unwrap()];
        assert_eq!(p.fs_type, "proc");
        assert_eq!(unescape("a\\011b\\134c\\"), "a\tb\\c\\");
    }

    #[test]
    fn this_machine_is_inspected_without_error() {
        let t = tempfile::tempdir().unwrap();
        let r = inspect(&t.path().join("api_keys.json"), &NoZfs).unwrap();
        assert!(!r.fs_type.is_empty());
        assert!(!r.summary().is_empty());
    }

    #[test]
    fn a_store_not_created_yet_is_judged_by_the_directory_it_will_be_in() {
        let t = tempfile::tempdir().unwrap();
        let r = inspect(&t.path().join("a/b/api_keys.json"), &NoZfs).unwrap();
        assert_eq!(r.path, t.path());
    }

    #[test]
    fn an_unreadable_mount_table_names_itself() {
        let t = tempfile::tempdir().unwrap();
        let e =
            inspect_with(t.path(), &t.path().join("no-mountinfo"), t.path(), &NoZfs).unwrap_err();
        assert!(e.to_string().contains("no-mountinfo"), "{e}");
    }

    // -----------------------------------------------------------------------------------------
    // overlay

    fn real_dev(p: &Path) -> String {
        let d = std::fs::metadata(p).unwrap().dev();
        format!("{}:{}", rustix::fs::major(d), rustix::fs::minor(d))
    }

    /// Escapes a path as mountinfo shows it (space, tab, newline, backslash; comma too, as in
    /// super options).
    fn esc(p: &Path) -> String {
        let mut out = String::new();
        for c in p.to_str().unwrap().chars() {
            match c {
                ' ' | '\t' | '\n' | '\\' | ',' => out.push_str(&format!("\\{:03o}", c as u32)),
                c => out.push(c),
            }
        }
        out
    }

    /// A mount table line for a filesystem at `mp`.
    fn line(dev: &str, mp: &Path, fs: &str, src: &str, opts: &str) -> String {
        format!("30 1 {dev} / {} rw - {fs} {src} {opts}\n", esc(mp))
    }

    /// An overlay under `root/name`: `merged/` (its mount point, holding `store/`), `upper/`
    /// and `work/`. Returns (merged, upper, its mount table line) with `lower_opt` as the raw
    /// `lowerdir=` value. The line carries the temp dir's real device, so the mount point "shows
    /// the overlay" to the check; the upper directory gets the merged one's entries and
    /// modification time, as a real overlay's root shows its upper directory's attributes.
    fn overlay_fixture(root: &Path, name: &str, lower_opt: &str) -> (PathBuf, PathBuf, String) {
        let base = root.join(name);
        let (merged, upper, work) = (base.join("merged"), base.join("upper"), base.join("work"));
        for d in [merged.join("store"), upper.join("store"), work.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        mirror_mtime(&merged, &upper);
        let opts = format!(
            "rw,lowerdir={lower_opt},upperdir={},workdir={},uuid=on",
            esc(&upper),
            esc(&work)
        );
        let l = line(&real_dev(root), &merged, "overlay", "overlay", &opts);
        (merged, upper, l)
    }

    fn mirror_mtime(from: &Path, to: &Path) {
        let mtime = std::fs::metadata(from).unwrap().modified().unwrap();
        std::fs::File::open(to)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    /// A LUKS device `dm-N` named `name` in the fake sysfs at `majmin` (`253:N`).
    fn luks(sys: &Sys, n: u32, name: &str) {
        let c = sys.add(&format!("virtual/block/dm-{n}"), &format!("253:{n}"));
        sys.dm(&c, name, &format!("CRYPT-LUKS2-0123abcd-{name}"));
    }

    fn run(t: &Path, table: &str, store: &Path, sys: &Sys) -> VolumeReport {
        let mi = t.join("mountinfo");
        std::fs::write(&mi, table).unwrap();
        inspect_with(store, &mi, &sys.dev_block(), &NoZfs).unwrap()
    }

    fn reason(e: &Encryption) -> &str {
        match e {
            Encryption::Unknown { reason } => reason,
            other => panic!("expected unknown, got {other:?}"),
        }
    }

    #[test]
    fn an_overlay_whose_layers_are_all_encrypted_takes_its_upper_layers_verdict() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let sys = Sys::new(&root.join("sys"));
        luks(&sys, 0, "luks-layers");
        luks(&sys, 4, "luks-images");
        // Two lower layers, one with a space in its path (`\040` in the table).
        let (l1, l2) = (root.join("img one"), root.join("img2"));
        std::fs::create_dir_all(&l1).unwrap();
        std::fs::create_dir_all(&l2).unwrap();
        let lower_opt = format!("{}:{}", esc(&l1), esc(&l2));
        let (merged, upper, ovl) = overlay_fixture(root, "c1", &lower_opt);
        let table = ovl
            + &line("253:0", &upper, "ext4", "/dev/mapper/luks-layers", "rw")
            + &line("253:4", &l1, "ext4", "/dev/mapper/luks-images", "rw")
            + &line("0:60", &l2, "tmpfs", "tmpfs", "rw");
        let r = run(root, &table, &merged.join("store/api_keys.json"), &sys);
        assert_eq!(r.fs_type, "overlay");
        assert_eq!(
            r.encryption,
            Encryption::DmCrypt {
                device: "dm-0 (luks-layers)".into(),
                luks: true
            },
            "{r:#?}"
        );
        assert!(r.encryption.is_encrypted());
        assert_eq!(r.layers.len(), 3);
        assert_eq!(r.layers[0].role, "upper");
        assert_eq!(r.layers[0].dir, upper);
        assert_eq!(r.layers[1].dir, l1);
        assert_eq!(r.layers[2].volume.encryption, Encryption::Memory);
        assert!(
            r.chain[0].starts_with(&format!(
                "overlay upper layer {}: LUKS (dm-crypt) on dm-0",
                upper.display()
            )),
            "{:?}",
            r.chain
        );
        assert!(
            r.chain[1].starts_with("overlay lower layer"),
            "{:?}",
            r.chain
        );
        let s = r.summary();
        assert!(
            s.starts_with(
                "LUKS (dm-crypt) on dm-0 (luks-layers): overlay on overlay [overlay upper layer"
            ),
            "{s}"
        );
        // The JSON carries each layer's report; a report without layers has no such key.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["layers"][1]["volume"]["source"],
            "/dev/mapper/luks-images"
        );
        assert_eq!(v["layers"][0]["role"], "upper");
        assert!(
            serde_json::to_value(&r.layers[0].volume)
                .unwrap()
                .get("layers")
                .is_none()
        );
    }

    #[test]
    fn an_overlay_with_any_plain_layer_is_plain() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let sys = Sys::new(&root.join("sys"));
        luks(&sys, 0, "luks-layers");
        sys.add("pci0/block/sdb", "8:16");
        let lower = root.join("image");
        std::fs::create_dir_all(&lower).unwrap();
        // The upper layer encrypted, the image's layer on a plain disk: what was baked into the
        // image (maybe the store) sits in the clear.
        let (merged, upper, ovl) = overlay_fixture(root, "c1", &esc(&lower));
        let table = ovl.clone()
            + &line("253:0", &upper, "ext4", "/dev/mapper/luks-layers", "rw")
            + &line("8:16", &lower, "ext4", "/dev/sdb", "rw");
        let r = run(root, &table, &merged.join("store/api_keys.json"), &sys);
        assert_eq!(r.encryption, Encryption::Plain, "{r:#?}");
        assert!(r.chain[1].contains("NOT encrypted"), "{:?}", r.chain);

        // And the other way round: a plain upper layer.
        let table = ovl
            + &line("8:16", &upper, "ext4", "/dev/sdb", "rw")
            + &line("253:0", &lower, "ext4", "/dev/mapper/luks-layers", "rw");
        let r = run(root, &table, &merged.join("store/api_keys.json"), &sys);
        assert_eq!(r.encryption, Encryption::Plain, "{r:#?}");
        assert!(
            r.summary().starts_with("NOT encrypted: overlay"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn an_overlay_whose_upper_layer_is_not_visible_is_unknown() {
        // Inside a container: the options name the host's paths.
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let sys = Sys::new(&root.join("sys"));
        let merged = root.join("merged");
        std::fs::create_dir_all(merged.join("store")).unwrap();
        let host = "/var/lib/docker/overlay2/0f3c9a2b7e-not-here";
        let opts = format!(
            "rw,lowerdir={host}/l/ABC:{host}/l/DEF,upperdir={host}/diff,workdir={host}/work"
        );
        let table = line(&real_dev(root), &merged, "overlay", "overlay", &opts);
        let r = run(root, &table, &merged.join("store/api_keys.json"), &sys);
        let why = reason(&r.encryption);
        assert!(
            why.contains(&format!("{host}/diff is not visible from here"))
                && why.contains("container runtime"),
            "{why}"
        );
        assert!(r.layers.is_empty() && r.chain.is_empty());
    }

    #[test]
    fn a_path_that_is_not_the_overlays_upper_layer_is_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let sys = Sys::new(&root.join("sys"));
        luks(&sys, 0, "luks-elsewhere");
        let lower = root.join("image");
        std::fs::create_dir_all(&lower).unwrap();
        let (merged, upper, ovl) = overlay_fixture(root, "c1", &esc(&lower));
        let table = ovl.clone()
            + &line("253:0", &upper, "ext4", "/dev/mapper/luks-elsewhere", "rw")
            + &line("253:0", &lower, "ext4", "/dev/mapper/luks-elsewhere", "rw");
        // The same name exists here, on an encrypted volume, but it is some other directory
        // (its modification time differs from what the overlay shows): not "encrypted".
        std::fs::File::open(&upper)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
            .unwrap();
        let r = run(root, &table, &merged.join("store/api_keys.json"), &sys);
        assert!(
            reason(&r.encryption).contains("another mount namespace"),
            "{r:#?}"
        );
        mirror_mtime(&merged, &upper);
        assert!(
            run(root, &table, &merged.join("store/api_keys.json"), &sys)
                .encryption
                .is_encrypted()
        );

        // The mount point does not show the overlay here (its device is another one).
        let other = ovl.replacen(&real_dev(root), "0:77", 1);
        let table2 = other
            + &line("253:0", &upper, "ext4", "/dev/mapper/luks-elsewhere", "rw")
            + &line("253:0", &lower, "ext4", "/dev/mapper/luks-elsewhere", "rw");
        let r = run(root, &table2, &merged.join("store/api_keys.json"), &sys);
        assert!(
            reason(&r.encryption).contains("another filesystem is mounted over"),
            "{r:#?}"
        );

        // The work directory is missing here.
        std::fs::remove_dir(root.join("c1/work")).unwrap();
        let r = run(root, &table, &merged.join("store/api_keys.json"), &sys);
        assert!(reason(&r.encryption).contains("work directory"), "{r:#?}");
    }

    #[test]
    fn an_overlay_with_a_lower_layer_not_visible_is_unknown_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let sys = Sys::new(&root.join("sys"));
        luks(&sys, 0, "luks-layers");
        let gone = root.join("gone");
        let (merged, upper, ovl) = overlay_fixture(root, "c1", &esc(&gone));
        let table = ovl + &line("253:0", &upper, "ext4", "/dev/mapper/luks-layers", "rw");
        let r = run(root, &table, &merged.join("store/api_keys.json"), &sys);
        let why = reason(&r.encryption);
        assert!(
            why.contains(&format!("overlay lower layer {}", gone.display()))
                && why.contains("not visible"),
            "{why}"
        );
        assert_eq!(r.layers.len(), 1, "the upper layer is still reported");
    }

    #[test]
    fn overlay_layers_that_loop_or_nest_too_deep_are_unknown() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let sys = Sys::new(&root.join("sys"));
        luks(&sys, 0, "luks-layers");
        // Its lower layer is the overlay itself.
        let merged = root.join("c1/merged");
        let (merged2, upper, ovl) = overlay_fixture(root, "c1", &esc(&merged));
        assert_eq!(merged, merged2);
        let table = ovl + &line("253:0", &upper, "ext4", "/dev/mapper/luks-layers", "rw");
        let r = run(root, &table, &merged.join("store/api_keys.json"), &sys);
        assert!(
            reason(&r.encryption).contains("lead back to itself"),
            "{r:#?}"
        );

        // Six overlays, each the lower layer of the one before.
        let mut table = String::new();
        let mut first = None;
        for i in 0..6 {
            let next = root.join(format!("n{}/merged", i + 1));
            let (m, u, l) = overlay_fixture(root, &format!("n{i}"), &esc(&next));
            table += &l;
            table += &line("253:0", &u, "ext4", "/dev/mapper/luks-layers", "rw");
            first.get_or_insert(m);
        }
        let last = root.join("n6/merged");
        std::fs::create_dir_all(&last).unwrap();
        table += &line("253:0", &last, "ext4", "/dev/mapper/luks-layers", "rw");
        let store = first.unwrap().join("store/api_keys.json");
        let r = run(root, &table, &store, &sys);
        assert!(
            reason(&r.encryption).contains("deeper than the check follows"),
            "{r:#?}"
        );
    }

    #[test]
    fn a_read_only_overlay_or_one_without_layer_options_is_unknown() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let sys = Sys::new(&root.join("sys"));
        let merged = root.join("merged");
        std::fs::create_dir_all(&merged).unwrap();
        let table = line(
            &real_dev(root),
            &merged,
            "overlay",
            "overlay",
            "ro,lowerdir=/a:/b",
        );
        let r = run(root, &table, &merged, &sys);
        assert!(
            reason(&r.encryption).contains("read-only overlay"),
            "{r:#?}"
        );
        assert!(reason(&r.encryption).contains("/a, /b"), "{r:#?}");
    }

    #[test]
    fn overlay_options_are_read_or_refused_never_guessed() {
        let l = overlay_layers(
            "rw,lowerdir=/l/a\\040b:/l/c\\054d::/data,upperdir=/u/diff,workdir=/u/work,xino=off",
        )
        .unwrap();
        assert_eq!(l.upper, Some(PathBuf::from("/u/diff")));
        assert_eq!(l.work, Some(PathBuf::from("/u/work")));
        assert_eq!(
            l.lowers,
            vec![
                PathBuf::from("/l/a b"),
                PathBuf::from("/l/c,d"),
                PathBuf::from("/data")
            ]
        );
        // Kernels 6.5/6.6 escape a colon inside a path.
        let l = overlay_layers("lowerdir=/l/x\\072y:/l/z").unwrap();
        assert_eq!(
            l.lowers,
            vec![PathBuf::from("/l/x:y"), PathBuf::from("/l/z")]
        );
        // The per-layer options of the new mount API.
        let l = overlay_layers("lowerdir+=/a:b,lowerdir+=/c,datadir+=/d,upperdir=/u").unwrap();
        assert_eq!(
            l.lowers,
            vec![
                PathBuf::from("/a:b"),
                PathBuf::from("/c"),
                PathBuf::from("/d")
            ]
        );
        // Overlay's own `\:` / `\,` escapes (shown as `\134`), relative paths, no lower layer.
        for bad in [
            "lowerdir=/l/x\\134:y,upperdir=/u",
            "lowerdir=/l,upperdir=/u/a\\134\\054b",
            "lowerdir=lower,upperdir=/u",
            "upperdir=/u,workdir=/w",
            "rw",
        ] {
            assert!(overlay_layers(bad).is_err(), "{bad}");
        }
        let e = overlay_layers("lowerdir=/l/x\\134:y").unwrap_err();
        assert!(e.contains("escaped characters"), "{e}");
    }

    // -----------------------------------------------------------------------------------------
    // ZFS

    /// `zfs get -H -p -o property,value encryption,keystatus,encryptionroot DATASET` on
    /// OpenZFS 2.x: an encryption root, a child inheriting its key, and an unencrypted dataset.
    const ZFS_ROOT: &str =
        "encryption\taes-256-gcm\nkeystatus\tavailable\nencryptionroot\ttank/secrets\n";
    const ZFS_CHILD: &str = "encryption\taes-256-gcm\nkeystatus\tavailable\nencryptionroot\ttank\n";
    const ZFS_OFF: &str = "encryption\toff\nkeystatus\t-\nencryptionroot\t-\n";

    #[test]
    fn zfs_get_output_is_parsed_strictly() {
        assert_eq!(
            parse_zfs_encryption("tank/secrets", ZFS_ROOT),
            Ok(Encryption::ZfsNative {
                dataset: "tank/secrets".into(),
                cipher: "aes-256-gcm".into(),
                encryption_root: "tank/secrets".into()
            })
        );
        let child = parse_zfs_encryption("tank/keys", ZFS_CHILD).unwrap();
        assert!(child.is_encrypted());
        assert_eq!(
            child.describe(),
            "ZFS native encryption (aes-256-gcm) on tank/keys (key of tank)"
        );
        // No native encryption is not "plain": the pool's disks may be LUKS devices.
        let off = parse_zfs_encryption("rpool/ROOT", ZFS_OFF).unwrap();
        assert!(!off.is_encrypted());
        let why = reason(&off);
        assert!(
            why.contains("off on rpool/ROOT") && why.contains("zpool status -P"),
            "{why}"
        );
        let ccm = "encryptionroot\tp\nkeystatus\tavailable\nencryption\taes-128-ccm\n";
        assert!(parse_zfs_encryption("p", ccm).unwrap().is_encrypted());
        for (bad, why) in [
            (
                "encryption\taes-256-gcm\nkeystatus\tunavailable\nencryptionroot\ttank\n",
                "key status",
            ),
            ("encryption\toff\nkeystatus\t-\n", "did not report"),
            (
                "encryption off\nkeystatus -\nencryptionroot -\n",
                "unexpected `zfs get` output",
            ),
            ("PROPERTY\tVALUE\n", "unexpected property"),
            (
                "encryption\toff\nencryption\taes-256-gcm\nkeystatus\t-\nencryptionroot\t-\n",
                "twice",
            ),
            (
                "encryption\ton\nkeystatus\tavailable\nencryptionroot\ttank\n",
                "unexpected encryption value",
            ),
            (
                "encryption\taes-256-gcm\tlocal\nkeystatus\tavailable\nencryptionroot\ttank\n",
                "unexpected",
            ),
            ("", "did not report"),
        ] {
            let e = parse_zfs_encryption("tank", bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    fn zfs_fixture(src: &str, zfs: &dyn ZfsProperties) -> VolumeReport {
        let t = tempfile::tempdir().unwrap();
        let sys = Sys::new(&t.path().join("sys"));
        let store = t.path().join("api_keys.json");
        let mi = t.path().join("mountinfo");
        std::fs::write(&mi, mountinfo_line("0:51", "/", "zfs", src)).unwrap();
        inspect_with(&store, &mi, &sys.dev_block(), zfs).unwrap()
    }

    #[test]
    fn a_zfs_dataset_is_judged_by_its_properties() {
        let asked = std::cell::RefCell::new(Vec::new());
        let zfs = |d: &str| {
            asked.borrow_mut().push(d.to_string());
            Ok(ZFS_ROOT.to_string())
        };
        let r = zfs_fixture("tank/secrets", &zfs);
        assert!(r.encryption.is_encrypted(), "{r:?}");
        assert_eq!(asked.borrow().as_slice(), ["tank/secrets"]);
        assert!(
            r.summary().starts_with(
                "ZFS native encryption (aes-256-gcm) on tank/secrets: zfs on tank/secrets"
            ),
            "{}",
            r.summary()
        );
        let v = serde_json::to_value(&r.encryption).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "zfs_native", "dataset": "tank/secrets",
                               "cipher": "aes-256-gcm", "encryption_root": "tank/secrets"})
        );

        let r = zfs_fixture("rpool/ROOT/ubuntu", &|_: &str| Ok(ZFS_OFF.to_string()));
        assert!(
            reason(&r.encryption).contains("off on rpool/ROOT/ubuntu"),
            "{r:?}"
        );

        // No `zfs`, or it fails: unknown, saying why and what to run instead.
        let r = zfs_fixture("tank/secrets", &|_: &str| {
            Err("`zfs` not found (searched PATH, /usr/sbin, /sbin)".to_string())
        });
        let why = reason(&r.encryption);
        assert!(
            why.contains("`zfs` not found")
                && why.contains("zfs get encryption,keystatus tank/secrets"),
            "{why}"
        );
        let r = zfs_fixture("tank/x", &|_: &str| Ok("garbage".to_string()));
        assert!(reason(&r.encryption).contains("unexpected"), "{r:?}");

        // A name that would read as an option is never passed.
        let r = zfs_fixture("-o", &|_: &str| -> Result<String, String> {
            panic!("must not be asked")
        });
        assert!(reason(&r.encryption).contains("not a name"), "{r:?}");
    }

    #[test]
    fn the_json_of_the_existing_kinds_is_unchanged() {
        let v = serde_json::to_value(Encryption::DmCrypt {
            device: "dm-0".into(),
            luks: true,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "dm_crypt", "device": "dm-0", "luks": true})
        );
        assert_eq!(
            serde_json::to_value(Encryption::StackedFilesystem).unwrap(),
            serde_json::json!({"kind": "stacked_filesystem"})
        );
        assert_eq!(
            serde_json::to_value(Encryption::Unknown { reason: "r".into() }).unwrap(),
            serde_json::json!({"kind": "unknown", "reason": "r"})
        );
    }
}
