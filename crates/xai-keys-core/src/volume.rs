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
//! Anything the kernel does not show from here (an overlay's lower layers, ZFS native
//! encryption, fscrypt directory policies, a network filesystem) is reported as unknown, never
//! guessed to be safe.
//!
//! Everything is read from the two roots passed in, so tests inspect fixtures instead of the
//! machine they run on.

use std::collections::BTreeSet;
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
    /// A block device chain with no crypt target: the data is on disk in the clear.
    Plain,
    /// Cannot be told from this host (the reason says why and what to check instead).
    Unknown { reason: String },
}

impl Encryption {
    /// Whether this satisfies "the store MUST reside on an encrypted volume".
    pub fn is_encrypted(&self) -> bool {
        matches!(
            self,
            Encryption::DmCrypt { .. } | Encryption::Memory | Encryption::StackedFilesystem
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
    /// The block devices from the filesystem's down to the disks (`dm-1 > dm-0 > sda2`).
    pub chain: Vec<String>,
    pub encryption: Encryption,
}

impl VolumeReport {
    /// One line for `verify`'s table.
    pub fn summary(&self) -> String {
        let dev = if self.chain.is_empty() {
            self.source.clone()
        } else {
            format!("{} ({})", self.source, self.chain.join(" > "))
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

/// Inspects the storage under `path` on this machine.
pub fn inspect(path: &Path) -> Result<VolumeReport, VolumeError> {
    inspect_with(
        path,
        Path::new("/proc/self/mountinfo"),
        Path::new("/sys/dev/block"),
    )
}

/// [`inspect`] with the mount table and the sysfs block-device directory given.
pub fn inspect_with(
    path: &Path,
    mountinfo: &Path,
    sys_dev_block: &Path,
) -> Result<VolumeReport, VolumeError> {
    use std::os::unix::fs::MetadataExt;
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
    let table = std::fs::read_to_string(mountinfo).map_err(|source| VolumeError::MountTable {
        path: mountinfo.to_path_buf(),
        source,
    })?;
    let mounts = parse_mountinfo(&table);
    let dev = meta.dev();
    let (maj, min) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let m = pick_mount(&mounts, (maj, min), &canonical).ok_or_else(|| VolumeError::NoMount {
        table: mountinfo.to_path_buf(),
        path: canonical.clone(),
    })?;

    let mut report = VolumeReport {
        path: target,
        mount_point: m.mount_point.clone(),
        fs_type: m.fs_type.clone(),
        source: m.source.clone(),
        device: None,
        chain: Vec::new(),
        encryption: Encryption::Plain,
    };
    if MEMORY_FS.contains(&m.fs_type.as_str()) {
        report.encryption = Encryption::Memory;
        return Ok(report);
    }
    if STACKED_CRYPT_FS.contains(&m.fs_type.as_str()) {
        report.encryption = Encryption::StackedFilesystem;
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
        report.encryption = Encryption::Unknown {
            reason: no_block_reason(&m.fs_type),
        };
        return Ok(report);
    };
    report.device = Some(format!("{}:{}", block.0, block.1));
    let start = sys_dev_block.join(format!("{}:{}", block.0, block.1));
    if !start.exists() {
        report.encryption = Encryption::Unknown {
            reason: format!(
                "block device {}:{} is not in {} (sysfs not mounted here?); check the host",
                block.0,
                block.1,
                sys_dev_block.display()
            ),
        };
        return Ok(report);
    }
    let mut walk = Walk::default();
    walk.visit(&start, 0);
    report.chain = walk.chain;
    report.encryption = match walk.crypt {
        Some((device, luks)) => Encryption::DmCrypt { device, luks },
        None if walk.truncated => Encryption::Unknown {
            reason: "the device stack is deeper than the check follows".to_string(),
        },
        None => Encryption::Plain,
    };
    Ok(report)
}

fn no_block_reason(fs_type: &str) -> String {
    match fs_type {
        "overlay" => "an overlay filesystem (a container?): check the volume the container \
                      runtime keeps its layers on, or mount the store directory from an encrypted \
                      volume"
            .to_string(),
        "zfs" => "ZFS: check `zfs get encryption` on the dataset".to_string(),
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
    mount_point: PathBuf,
    fs_type: String,
    source: String,
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
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                fs_type: (*r.first()?).to_string(),
                source: unescape(r.get(1).copied().unwrap_or("none")),
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

/// The mount holding `path`: among the mounts of its device, the one whose mount point is the
/// longest prefix of the path (bind mounts repeat a device); failing that (a device number the
/// table does not show), the longest prefix of any mount. The last of equals wins, as the
/// kernel stacks later mounts on top.
fn pick_mount<'a>(mounts: &'a [Mount], dev: (u32, u32), path: &Path) -> Option<&'a Mount> {
    let best = |only_dev: bool| {
        mounts
            .iter()
            .filter(|m| !only_dev || m.dev == dev)
            .filter(|m| path.starts_with(&m.mount_point))
            .fold(None::<&Mount>, |acc, m| match acc {
                Some(a) if a.mount_point.as_os_str().len() > m.mount_point.as_os_str().len() => {
                    Some(a)
                }
                _ => Some(m),
            })
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
        inspect_with(&store, &mi, sys).unwrap()
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
    fn overlay_and_zfs_are_unknown_not_safe() {
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
        let p = pick_mount(&m, (254, 0), Path::new("/mnt/my keys/api_keys.json")).unwrap();
        assert_eq!(p.mount_point, PathBuf::from("/mnt/my keys"));
        let p = pick_mount(&m, (254, 0), Path::new("/etc/x")).unwrap();
        assert_eq!(p.mount_point, PathBuf::from("/"));
        // A device the table does not list: the longest prefix of any mount.
        let p = pick_mount(&m, (0, 99), Path::new("/proc/self")).unwrap();
        assert_eq!(p.fs_type, "proc");
        assert_eq!(unescape("a\\011b\\134c\\"), "a\tb\\c\\");
    }

    #[test]
    fn this_machine_is_inspected_without_error() {
        let t = tempfile::tempdir().unwrap();
        let r = inspect(&t.path().join("api_keys.json")).unwrap();
        assert!(!r.fs_type.is_empty());
        assert!(!r.summary().is_empty());
    }

    #[test]
    fn a_store_not_created_yet_is_judged_by_the_directory_it_will_be_in() {
        let t = tempfile::tempdir().unwrap();
        let r = inspect(&t.path().join("a/b/api_keys.json")).unwrap();
        assert_eq!(r.path, t.path());
    }

    #[test]
    fn an_unreadable_mount_table_names_itself() {
        let t = tempfile::tempdir().unwrap();
        let e = inspect_with(t.path(), &t.path().join("no-mountinfo"), t.path()).unwrap_err();
        assert!(e.to_string().contains("no-mountinfo"), "{e}");
    }
}
