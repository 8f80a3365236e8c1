//! The runtime configuration file, `configuration.toml`.
//!
//! The file is walked key by key (keeping each key's position) instead of
//! going through a derived `Deserialize`: serde's errors cannot say which
//! section an unknown key sits in, and a rejected value should be shown with
//! its section, key, line and the accepted range.

use std::ffi::OsString;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// Where the configuration is read from unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/palisade/configuration.toml";
/// Environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "PALISADE_CONFIG";

pub const DEFAULT_KERNEL: &str = "/usr/share/palisade/vmlinux";
pub const DEFAULT_INITRD: &str = "/usr/share/palisade/initramfs.cpio.gz";
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Enough for a real-KVM boot (well under a second) with a wide margin; a
/// guest under nested emulation needs several seconds more, which is why
/// the key exists.
pub const DEFAULT_DIAL_TIMEOUT_MS: u64 = 5000;
/// The VMM's own default; why this many is said there
/// (`palisade_vmm::DEFAULT_MAX_OPEN_FILES`) and in configuration.toml.
pub const DEFAULT_VIRTIO_FS_MAX_OPEN_FILES: u32 = palisade_vmm::DEFAULT_MAX_OPEN_FILES as u32;
pub const DEFAULT_CONSOLE_LOG_MAX_KIB: u32 =
    (palisade_vmm::DEFAULT_CONSOLE_LOG_MAX_BYTES / 1024) as u32;

pub const VCPUS_RANGE: RangeInclusive<i64> = 1..=32;
/// 64 MiB is about the least a kernel plus the agent initramfs boots in.
pub const MEMORY_MIB_RANGE: RangeInclusive<i64> = 64..=65536;
pub const DIAL_TIMEOUT_MS_RANGE: RangeInclusive<i64> = 100..=600_000;
/// Below 64 a guest cannot even start a container from its share; above a
/// million, RLIMIT_NOFILE (the cap plus the VMM's reserve) would pass the
/// kernel's default `fs.nr_open` of 2^20.
pub const VIRTIO_FS_MAX_OPEN_FILES_RANGE: RangeInclusive<i64> = 64..=1_000_000;
/// 16 KiB keeps the last lines a failed boot needs (the shim shows 8 KiB
/// of them); 1 GiB is as much as anyone should keep in RAM-backed /run.
pub const CONSOLE_LOG_MAX_KIB_RANGE: RangeInclusive<i64> = 16..=1_048_576;
/// The x86 kernel command line holds 2048 bytes; the VMM appends its own
/// console and virtio-mmio device parameters, so users get half.
pub const KERNEL_PARAMS_MAX_LEN: usize = 1024;

const HYPERVISOR_KEYS: &[&str] = &[
    "kernel",
    "initrd",
    "kernel_params",
    "vcpus",
    "memory_mib",
    "virtio_fs_max_open_files",
    "console_log_max_kib",
    "seccomp",
];
const AGENT_KEYS: &[&str] = &["dial_timeout_ms"];
const RUNTIME_KEYS: &[&str] = &["enable_debug"];
const SECTIONS: &[&str] = &["hypervisor", "agent", "runtime"];
/// Each section with its keys, for the hint that a key is in the wrong one.
const SECTION_KEYS: &[(&str, &[&str])] = &[
    ("hypervisor", HYPERVISOR_KEYS),
    ("agent", AGENT_KEYS),
    ("runtime", RUNTIME_KEYS),
];

/// The validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub agent: AgentConfig,
    pub runtime: RuntimeConfig,
}

/// `[runtime]`: how the shim itself behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Debug logging in the shim and the agent, a verbose guest kernel.
    /// containerd's own debug mode turns it on as well.
    pub enable_debug: bool,
}

/// `[hypervisor]`: what the microVM boots and how big it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervisorConfig {
    /// Uncompressed ELF `vmlinux` with a PVH entry point.
    pub kernel: PathBuf,
    /// The agent initramfs.
    pub initrd: PathBuf,
    /// Appended to the kernel command line the VMM builds.
    pub kernel_params: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Most host fds the VMM's virtio-fs server holds for the guest.
    pub virtio_fs_max_open_files: u32,
    /// Most bytes, in KiB, of `console.log` and `console.log.1` together.
    pub console_log_max_kib: u32,
    /// The VMM threads' seccomp filters: `enforce` (a syscall outside the
    /// allowlist kills the VMM), `log` (the kernel logs it) or `off`.
    pub seccomp: palisade_vmm::SeccompMode,
}

impl HypervisorConfig {
    pub fn console_log_max_bytes(&self) -> u64 {
        u64::from(self.console_log_max_kib) * 1024
    }
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::from(DEFAULT_KERNEL),
            initrd: PathBuf::from(DEFAULT_INITRD),
            kernel_params: String::new(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            virtio_fs_max_open_files: DEFAULT_VIRTIO_FS_MAX_OPEN_FILES,
            console_log_max_kib: DEFAULT_CONSOLE_LOG_MAX_KIB,
            seccomp: palisade_vmm::SeccompMode::Enforce,
        }
    }
}

/// `[agent]`: how the shim reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// How long to keep dialing the agent after the VMM starts; covers the
    /// whole guest boot.
    pub dial_timeout_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            dial_timeout_ms: DEFAULT_DIAL_TIMEOUT_MS,
        }
    }
}

impl AgentConfig {
    pub fn dial_timeout(&self) -> Duration {
        Duration::from_millis(self.dial_timeout_ms)
    }
}

/// Who chose the configuration file; a missing file is an error only when
/// somebody asked for it by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    CommandLine,
    Environment,
    /// containerd's runtime options (CRI `ConfigPath`,
    /// `ctr --runtime-config-path`).
    RuntimeOptions,
    Default,
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::CommandLine => f.write_str("given by --config"),
            ConfigOrigin::Environment => write!(f, "given by {CONFIG_ENV}"),
            ConfigOrigin::RuntimeOptions => f.write_str("given by the runtime option ConfigPath"),
            ConfigOrigin::Default => f.write_str("the default path"),
        }
    }
}

/// The configuration file to read and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLocation {
    pub path: PathBuf,
    pub origin: ConfigOrigin,
}

impl ConfigLocation {
    /// `--config` wins over `PALISADE_CONFIG`, which wins over the default.
    /// An empty environment variable counts as unset.
    pub fn resolve(cli: Option<PathBuf>, env: Option<OsString>) -> Self {
        if let Some(path) = cli {
            return Self {
                path,
                origin: ConfigOrigin::CommandLine,
            };
        }
        match env {
            Some(value) if !value.is_empty() => Self {
                path: PathBuf::from(value),
                origin: ConfigOrigin::Environment,
            },
            _ => Self {
                path: PathBuf::from(DEFAULT_CONFIG_PATH),
                origin: ConfigOrigin::Default,
            },
        }
    }

    /// [`Self::resolve`] with `PALISADE_CONFIG` from this process's environment.
    pub fn from_cli_or_env(cli: Option<PathBuf>) -> Self {
        Self::resolve(cli, std::env::var_os(CONFIG_ENV))
    }
}

/// A configuration and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    pub config: Config,
    pub location: ConfigLocation,
    /// The default file does not exist, so the built-in defaults apply.
    pub builtin_defaults: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "configuration {} ({origin}) does not exist: create it (the repository's configuration.toml is a template) or name an existing file",
        .path.display()
    )]
    NotFound { path: PathBuf, origin: ConfigOrigin },

    #[error("cannot read configuration {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("configuration {} line {line}, column {column}: {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error(
        "configuration {} line {line}: unknown key `{key}` (expected one of {expected}){hint}",
        .path.display()
    )]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        expected: String,
        hint: String,
    },

    #[error(
        "configuration {} line {line}: `{key}` must be a table (a [{key}] section), not {found}",
        .path.display()
    )]
    NotATable {
        path: PathBuf,
        line: usize,
        key: String,
        found: &'static str,
    },

    #[error(
        "configuration {} line {line}: [{section}] {key} = {value}: {reason}",
        .path.display()
    )]
    InvalidValue {
        path: PathBuf,
        line: usize,
        section: &'static str,
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// Reads and validates the configuration at `location`. When the default
/// file does not exist the built-in defaults apply; a file named by
/// `--config` or `PALISADE_CONFIG` must exist.
pub fn load(location: &ConfigLocation) -> Result<LoadedConfig, ConfigError> {
    let text = match std::fs::read_to_string(&location.path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if location.origin == ConfigOrigin::Default {
                return Ok(LoadedConfig {
                    config: Config::default(),
                    location: location.clone(),
                    builtin_defaults: true,
                });
            }
            return Err(ConfigError::NotFound {
                path: location.path.clone(),
                origin: location.origin,
            });
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: location.path.clone(),
                source,
            })
        }
    };
    Ok(LoadedConfig {
        config: parse(&text, &location.path)?,
        location: location.clone(),
        builtin_defaults: false,
    })
}

/// Validates configuration text; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let document: Document = toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })?;

    let ctx = Ctx { text, path };
    let mut config = Config::default();
    for (name, item) in document.0 {
        let line = ctx.line(&name);
        let name = name.into_inner();
        let entries = match item {
            Item::Table(entries) => entries,
            Item::Other(found) => {
                if SECTIONS.contains(&name.as_str()) {
                    return Err(ConfigError::NotATable {
                        path: path.to_owned(),
                        line,
                        key: name,
                        found,
                    });
                }
                return Err(ctx.unknown_key(line, name, SECTIONS));
            }
        };
        match name.as_str() {
            "hypervisor" => parse_hypervisor(&ctx, entries, &mut config.hypervisor)?,
            "agent" => parse_agent(&ctx, entries, &mut config.agent)?,
            "runtime" => parse_runtime(&ctx, entries, &mut config.runtime)?,
            _ => return Err(ctx.unknown_key(line, name, SECTIONS)),
        }
    }
    Ok(config)
}

/// Walks one section's `key = value` entries: `set` stores a known key's
/// value and returns false for a key it does not know, which is refused
/// with the section's keys named.
fn parse_section(
    ctx: &Ctx<'_>,
    entries: Entries,
    section: &'static str,
    keys: &[&str],
    mut set: impl FnMut(&str, Field<'_>) -> Result<bool, ConfigError>,
) -> Result<(), ConfigError> {
    for (key, value) in entries.0 {
        let line = ctx.line(&key);
        let field = Field {
            ctx,
            line,
            section,
            value: &value,
        };
        if !set(key.get_ref().as_str(), field)? {
            return Err(ctx.unknown_key(line, format!("{section}.{}", key.into_inner()), keys));
        }
    }
    Ok(())
}

fn parse_hypervisor(
    ctx: &Ctx<'_>,
    entries: Entries,
    out: &mut HypervisorConfig,
) -> Result<(), ConfigError> {
    parse_section(ctx, entries, "hypervisor", HYPERVISOR_KEYS, |key, field| {
        match key {
            "kernel" => out.kernel = field.named("kernel").absolute_path()?,
            "initrd" => out.initrd = field.named("initrd").absolute_path()?,
            "kernel_params" => out.kernel_params = field.named("kernel_params").kernel_params()?,
            "vcpus" => {
                let n = field.named("vcpus").integer_in(VCPUS_RANGE)?;
                out.vcpus = u8::try_from(n).expect("range checked against VCPUS_RANGE");
            }
            "memory_mib" => {
                let n = field.named("memory_mib").integer_in(MEMORY_MIB_RANGE)?;
                out.memory_mib = u32::try_from(n).expect("range checked against MEMORY_MIB_RANGE");
            }
            "virtio_fs_max_open_files" => {
                let n = field
                    .named("virtio_fs_max_open_files")
                    .integer_in(VIRTIO_FS_MAX_OPEN_FILES_RANGE)?;
                out.virtio_fs_max_open_files =
                    u32::try_from(n).expect("range checked against VIRTIO_FS_MAX_OPEN_FILES_RANGE");
            }
            "console_log_max_kib" => {
                let n = field
                    .named("console_log_max_kib")
                    .integer_in(CONSOLE_LOG_MAX_KIB_RANGE)?;
                out.console_log_max_kib =
                    u32::try_from(n).expect("range checked against CONSOLE_LOG_MAX_KIB_RANGE");
            }
            "seccomp" => out.seccomp = field.named("seccomp").seccomp_mode()?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn parse_agent(ctx: &Ctx<'_>, entries: Entries, out: &mut AgentConfig) -> Result<(), ConfigError> {
    parse_section(ctx, entries, "agent", AGENT_KEYS, |key, field| {
        match key {
            "dial_timeout_ms" => {
                let n = field
                    .named("dial_timeout_ms")
                    .integer_in(DIAL_TIMEOUT_MS_RANGE)?;
                out.dial_timeout_ms =
                    u64::try_from(n).expect("range checked against DIAL_TIMEOUT_MS_RANGE");
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn parse_runtime(
    ctx: &Ctx<'_>,
    entries: Entries,
    out: &mut RuntimeConfig,
) -> Result<(), ConfigError> {
    parse_section(ctx, entries, "runtime", RUNTIME_KEYS, |key, field| {
        match key {
            "enable_debug" => out.enable_debug = field.named("enable_debug").boolean()?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// The text being parsed, for turning byte offsets into line numbers.
struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn line<T>(&self, spanned: &Spanned<T>) -> usize {
        line_col(self.text, spanned.span().start).0
    }

    fn unknown_key(&self, line: usize, key: String, expected: &[&str]) -> ConfigError {
        let leaf = key.rsplit('.').next().unwrap_or(&key);
        let hint = if let Some(close) = closest(leaf, expected) {
            format!("; did you mean `{close}`?")
        } else if let Some((section, _)) = SECTION_KEYS
            .iter()
            .find(|(_, keys)| !key.contains('.') && keys.contains(&leaf))
        {
            format!("; `{leaf}` belongs in the [{section}] section")
        } else {
            String::new()
        };
        ConfigError::UnknownKey {
            path: self.path.to_owned(),
            line,
            key,
            expected: expected
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            hint,
        }
    }
}

/// One `key = value` being validated.
#[derive(Clone, Copy)]
struct Field<'a> {
    ctx: &'a Ctx<'a>,
    line: usize,
    section: &'static str,
    value: &'a toml::Value,
}

struct NamedField<'a> {
    field: Field<'a>,
    key: &'static str,
}

impl<'a> Field<'a> {
    fn named(self, key: &'static str) -> NamedField<'a> {
        NamedField { field: self, key }
    }
}

impl NamedField<'_> {
    fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.field.ctx.path.to_owned(),
            line: self.field.line,
            section: self.field.section,
            key: self.key,
            value: render_value(self.field.value),
            reason: reason.into(),
        }
    }

    fn integer_in(&self, range: RangeInclusive<i64>) -> Result<i64, ConfigError> {
        let reason = || {
            format!(
                "must be an integer between {} and {}",
                range.start(),
                range.end()
            )
        };
        match self.field.value {
            toml::Value::Integer(n) if range.contains(n) => Ok(*n),
            _ => Err(self.invalid(reason())),
        }
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        match self.field.value {
            toml::Value::Boolean(b) => Ok(*b),
            _ => Err(self.invalid("must be true or false")),
        }
    }

    fn string(&self, what: &str) -> Result<&str, ConfigError> {
        match self.field.value {
            toml::Value::String(s) => Ok(s),
            _ => Err(self.invalid(format!("must be a string ({what})"))),
        }
    }

    /// Relative paths would resolve against whatever directory containerd
    /// started the shim in, so they are refused.
    fn absolute_path(&self) -> Result<PathBuf, ConfigError> {
        let s = self.string("an absolute path")?;
        if s.is_empty() {
            return Err(self.invalid("must not be empty"));
        }
        if s.contains('\0') {
            return Err(self.invalid("must not contain a NUL character"));
        }
        let path = PathBuf::from(s);
        if !path.is_absolute() {
            return Err(self.invalid("must be an absolute path (it starts with /)"));
        }
        Ok(path)
    }

    fn seccomp_mode(&self) -> Result<palisade_vmm::SeccompMode, ConfigError> {
        let expected = || {
            let names: Vec<String> = palisade_vmm::SeccompMode::NAMES
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect();
            format!("must be one of {}", names.join(", "))
        };
        let s = match self.field.value {
            toml::Value::String(s) => s,
            _ => return Err(self.invalid(format!("{} (a string)", expected()))),
        };
        s.parse().map_err(|_| self.invalid(expected()))
    }

    fn kernel_params(&self) -> Result<String, ConfigError> {
        let s = self.string("kernel command-line parameters")?;
        if s.len() > KERNEL_PARAMS_MAX_LEN {
            return Err(self.invalid(format!(
                "is {} bytes long; at most {KERNEL_PARAMS_MAX_LEN} fit next to what the VMM adds",
                s.len()
            )));
        }
        if s.contains(['\0', '\n', '\r']) {
            return Err(self.invalid(
                "must be a single line without NUL characters (separate parameters with spaces)",
            ));
        }
        Ok(s.to_owned())
    }
}

/// The value as TOML, cut short so a huge array cannot flood the message.
fn render_value(value: &toml::Value) -> String {
    const MAX: usize = 64;
    let rendered = match value {
        toml::Value::Table(_) => "{ ... } (a table)".to_owned(),
        other => other.to_string(),
    };
    if rendered.len() <= MAX {
        return rendered;
    }
    let mut cut = MAX;
    while !rendered.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &rendered[..cut])
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

/// The expected key a typo most likely meant, if any is close enough.
fn closest<'a>(key: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2 && *distance < key.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The top level of the file: each key with its position, each value either
/// a table (a section) or something else.
struct Document(Vec<(Spanned<String>, Item)>);

/// A table's keys, each with its position, and values. Values carry no
/// span: implicit tables (`a.b.c = 1`) have none, and keys place errors
/// well enough.
struct Entries(Vec<(Spanned<String>, toml::Value)>);

enum Item {
    Table(Entries),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DocumentVisitor;
        impl<'de> Visitor<'de> for DocumentVisitor {
            type Value = Document;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Document(entries))
            }
        }
        deserializer.deserialize_map(DocumentVisitor)
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(ItemVisitor)
            .and_then(|item| match item {
                Item::Table(entries) => Ok(entries),
                Item::Other(found) => Err(de::Error::custom(format!(
                    "expected a table, found {found}"
                ))),
            })
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Item::Table(Entries(entries)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Item::Other("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Item, E> {
        Ok(Item::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Item, E> {
        Ok(Item::Other("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item, E> {
        Ok(Item::Other("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Item, E> {
        Ok(Item::Other("a float"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Item, E> {
        Ok(Item::Other("a string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        match parse(text, Path::new("/test/configuration.toml")) {
            Ok(config) => config,
            Err(e) => panic!("expected {text:?} to parse, got: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(text, Path::new("/test/configuration.toml")) {
            Ok(config) => panic!("expected {text:?} to be rejected, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse_ok("");
        assert_eq!(config, Config::default());
        assert_eq!(config.hypervisor.kernel, Path::new(DEFAULT_KERNEL));
        assert_eq!(config.hypervisor.initrd, Path::new(DEFAULT_INITRD));
        assert_eq!(config.hypervisor.kernel_params, "");
        assert_eq!(config.hypervisor.vcpus, 1);
        assert_eq!(config.hypervisor.memory_mib, 256);
        assert_eq!(config.agent.dial_timeout_ms, 5000);
        assert_eq!(config.hypervisor.virtio_fs_max_open_files, 65536);
        assert_eq!(config.hypervisor.console_log_max_kib, 1024);
        assert_eq!(config.hypervisor.console_log_max_bytes(), 1 << 20);
    }

    #[test]
    fn full_file_parses() {
        let config = parse_ok(
            r#"
            [hypervisor]
            kernel = "/opt/k/vmlinux"
            initrd = "/opt/k/initrd.img"
            kernel_params = "quiet loglevel=3"
            vcpus = 4
            memory_mib = 2048
            virtio_fs_max_open_files = 4096
            console_log_max_kib = 64
            seccomp = "log"

            [agent]
            dial_timeout_ms = 30000
            "#,
        );
        assert_eq!(config.hypervisor.kernel, Path::new("/opt/k/vmlinux"));
        assert_eq!(config.hypervisor.initrd, Path::new("/opt/k/initrd.img"));
        assert_eq!(config.hypervisor.kernel_params, "quiet loglevel=3");
        assert_eq!(config.hypervisor.vcpus, 4);
        assert_eq!(config.hypervisor.memory_mib, 2048);
        assert_eq!(config.hypervisor.virtio_fs_max_open_files, 4096);
        assert_eq!(config.hypervisor.console_log_max_kib, 64);
        assert_eq!(config.hypervisor.seccomp, palisade_vmm::SeccompMode::Log);
        assert_eq!(config.agent.dial_timeout_ms, 30000);
    }

    #[test]
    fn dotted_keys_and_inline_tables_work() {
        let config = parse_ok("hypervisor.vcpus = 2\nagent = { dial_timeout_ms = 100 }\n");
        assert_eq!(config.hypervisor.vcpus, 2);
        assert_eq!(config.agent.dial_timeout_ms, 100);
    }

    #[test]
    fn the_repository_configuration_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../configuration.toml");
        assert_eq!(parse_ok(text), Config::default());
    }

    #[test]
    fn rejects_vcpus_out_of_range() {
        assert_eq!(
            parse_err("[hypervisor]\nvcpus = 0\n"),
            "configuration /test/configuration.toml line 2: [hypervisor] vcpus = 0: must be an integer between 1 and 32"
        );
        assert!(parse_err("[hypervisor]\nvcpus = 33\n")
            .contains("vcpus = 33: must be an integer between 1 and 32"));
        assert!(parse_err("[hypervisor]\nvcpus = -1\n").contains("vcpus = -1:"));
    }

    #[test]
    fn rejects_vcpus_of_the_wrong_type() {
        assert!(parse_err("[hypervisor]\nvcpus = \"2\"\n")
            .contains("[hypervisor] vcpus = \"2\": must be an integer between 1 and 32"));
        assert!(parse_err("[hypervisor]\nvcpus = 2.0\n").contains("vcpus = 2.0:"));
    }

    #[test]
    fn rejects_memory_out_of_range() {
        assert!(parse_err("[hypervisor]\nmemory_mib = 63\n").contains(
            "line 2: [hypervisor] memory_mib = 63: must be an integer between 64 and 65536"
        ));
        assert!(parse_err("[hypervisor]\nmemory_mib = 65537\n").contains("memory_mib = 65537:"));
    }

    #[test]
    fn rejects_limits_out_of_range() {
        assert_eq!(
            parse_err("[hypervisor]\nvirtio_fs_max_open_files = 63\n"),
            "configuration /test/configuration.toml line 2: [hypervisor] virtio_fs_max_open_files = 63: must be an integer between 64 and 1000000"
        );
        assert!(
            parse_err("[hypervisor]\nvirtio_fs_max_open_files = 1000001\n").contains(
                "virtio_fs_max_open_files = 1000001: must be an integer between 64 and 1000000"
            )
        );
        assert!(
            parse_err("[hypervisor]\nvirtio_fs_max_open_files = \"many\"\n")
                .contains("virtio_fs_max_open_files = \"many\": must be an integer")
        );
        assert_eq!(
            parse_err("[hypervisor]\nvcpus = 1\nconsole_log_max_kib = 15\n"),
            "configuration /test/configuration.toml line 3: [hypervisor] console_log_max_kib = 15: must be an integer between 16 and 1048576"
        );
        assert!(parse_err("[hypervisor]\nconsole_log_max_kib = 1048577\n")
            .contains("console_log_max_kib = 1048577:"));
        let msg = parse_err("[hypervisor]\nconsole_log_max_kb = 64\n");
        assert!(msg.contains("did you mean `console_log_max_kib`?"), "{msg}");
        let msg = parse_err("virtio_fs_max_open_files = 64\n");
        assert!(msg.contains("belongs in the [hypervisor] section"), "{msg}");
    }

    #[test]
    fn rejects_dial_timeout_out_of_range() {
        assert!(parse_err("[agent]\ndial_timeout_ms = 99\n")
            .contains("[agent] dial_timeout_ms = 99: must be an integer between 100 and 600000"));
        assert!(
            parse_err("[agent]\ndial_timeout_ms = 600001\n").contains("dial_timeout_ms = 600001:")
        );
    }

    #[test]
    fn rejects_unknown_key_in_a_section_with_suggestion() {
        assert_eq!(
            parse_err("[hypervisor]\nkernel = \"/k\"\nvcpu = 2\n"),
            "configuration /test/configuration.toml line 3: unknown key `hypervisor.vcpu` (expected one of `kernel`, `initrd`, `kernel_params`, `vcpus`, `memory_mib`, `virtio_fs_max_open_files`, `console_log_max_kib`, `seccomp`); did you mean `vcpus`?"
        );
        let msg = parse_err("[agent]\nretries = 3\n");
        assert!(
            msg.contains("line 2: unknown key `agent.retries` (expected one of `dial_timeout_ms`)"),
            "{msg}"
        );
    }

    #[test]
    fn reads_the_runtime_section() {
        let config =
            parse("[runtime]\nenable_debug = true\n", Path::new("/c.toml")).expect("parse");
        assert!(config.runtime.enable_debug);
        let msg = parse_err("[runtime]\nenable_debug = \"yes\"\n");
        assert!(
            msg.contains("line 2: [runtime] enable_debug = \"yes\": must be true or false"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_unknown_section() {
        let msg = parse_err("\n[hypervisr]\nvcpus = 1\n");
        assert!(msg.contains("line 2: unknown key `hypervisr` (expected one of `hypervisor`, `agent`, `runtime`); did you mean `hypervisor`?"), "{msg}");
    }

    #[test]
    fn rejects_a_key_outside_its_section() {
        let msg = parse_err("vcpus = 2\n");
        assert!(msg.contains("unknown key `vcpus`"), "{msg}");
        assert!(msg.contains("belongs in the [hypervisor] section"), "{msg}");
        let msg = parse_err("dial_timeout_ms = 900\n");
        assert!(msg.contains("belongs in the [agent] section"), "{msg}");
        let msg = parse_err("enable_debug = true\n");
        assert!(msg.contains("belongs in the [runtime] section"), "{msg}");
    }

    #[test]
    fn rejects_section_that_is_not_a_table() {
        let msg = parse_err("hypervisor = 3\n");
        assert!(
            msg.contains(
                "line 1: `hypervisor` must be a table (a [hypervisor] section), not an integer"
            ),
            "{msg}"
        );
    }

    #[test]
    fn rejects_nested_table_in_a_section() {
        let msg = parse_err("[hypervisor.extra]\nx = 1\n");
        assert!(msg.contains("unknown key `hypervisor.extra`"), "{msg}");
        let msg = parse_err("[hypervisor.extra.deeper]\nx = 1\n");
        assert!(
            msg.contains("line 1: unknown key `hypervisor.extra`"),
            "{msg}"
        );
        let msg = parse_err("hypervisor.vcpus.n = 1\n");
        assert!(
            msg.contains("[hypervisor] vcpus = { ... } (a table): must be an integer"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_bad_paths() {
        assert!(parse_err("[hypervisor]\nkernel = \"vmlinux\"\n")
            .contains("[hypervisor] kernel = \"vmlinux\": must be an absolute path"));
        assert!(parse_err("[hypervisor]\ninitrd = \"\"\n")
            .contains("[hypervisor] initrd = \"\": must not be empty"));
        assert!(parse_err("[hypervisor]\nkernel = 5\n")
            .contains("kernel = 5: must be a string (an absolute path)"));
        assert!(parse_err("[hypervisor]\nkernel = \"/a\\u0000b\"\n").contains("NUL"));
    }

    #[test]
    fn rejects_bad_kernel_params() {
        assert!(parse_err("[hypervisor]\nkernel_params = \"a\\nb\"\n")
            .contains("must be a single line"));
        let long = format!(
            "[hypervisor]\nkernel_params = \"{}\"\n",
            "x".repeat(KERNEL_PARAMS_MAX_LEN + 1)
        );
        let msg = parse_err(&long);
        assert!(msg.contains("1025 bytes long"), "{msg}");
        // The value is cut short in the message.
        assert!(msg.len() < 400, "{msg}");
    }

    #[test]
    fn reads_and_checks_the_seccomp_mode() {
        use palisade_vmm::SeccompMode;
        assert_eq!(Config::default().hypervisor.seccomp, SeccompMode::Enforce);
        for (text, mode) in [
            ("enforce", SeccompMode::Enforce),
            ("log", SeccompMode::Log),
            ("off", SeccompMode::Off),
        ] {
            let config = parse_ok(&format!("[hypervisor]\nseccomp = \"{text}\"\n"));
            assert_eq!(config.hypervisor.seccomp, mode);
        }
        let msg = parse_err("[hypervisor]\nseccomp = \"strict\"\n");
        assert!(
            msg.contains(
                r#"line 2: [hypervisor] seccomp = "strict": must be one of "enforce", "log", "off""#
            ),
            "{msg}"
        );
        let msg = parse_err("[hypervisor]\nseccomp = false\n");
        assert!(msg.contains("seccomp = false: must be one of"), "{msg}");
        assert!(msg.contains("(a string)"), "{msg}");
        assert!(parse_err("seccomp = \"off\"\n").contains("belongs in the [hypervisor] section"));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let msg = parse_err("[hypervisor]\nvcpus = = 2\n");
        assert!(
            msg.starts_with("configuration /test/configuration.toml line 2, column"),
            "{msg}"
        );
        let msg = parse_err("[hypervisor]\nvcpus = 1\nvcpus = 2\n");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("duplicate key"), "{msg}");
    }

    #[test]
    fn location_precedence() {
        let cli = ConfigLocation::resolve(Some("/a.toml".into()), Some("/b.toml".into()));
        assert_eq!(cli.path, Path::new("/a.toml"));
        assert_eq!(cli.origin, ConfigOrigin::CommandLine);
        let env = ConfigLocation::resolve(None, Some("/b.toml".into()));
        assert_eq!(env.path, Path::new("/b.toml"));
        assert_eq!(env.origin, ConfigOrigin::Environment);
        let default = ConfigLocation::resolve(None, Some("".into()));
        assert_eq!(default.path, Path::new(DEFAULT_CONFIG_PATH));
        assert_eq!(default.origin, ConfigOrigin::Default);
    }

    #[test]
    fn missing_default_file_means_builtin_defaults_but_missing_named_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.toml");
        let loaded = load(&ConfigLocation {
            path: missing.clone(),
            origin: ConfigOrigin::Default,
        })
        .expect("defaults");
        assert!(loaded.builtin_defaults);
        assert_eq!(loaded.config, Config::default());

        let err = load(&ConfigLocation {
            path: missing,
            origin: ConfigOrigin::Environment,
        })
        .expect_err("named file must exist");
        assert!(
            err.to_string()
                .contains("(given by PALISADE_CONFIG) does not exist"),
            "{err}"
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[hypervisor]\nvcpus = 3\n").expect("write");
        let loaded = load(&ConfigLocation {
            path,
            origin: ConfigOrigin::CommandLine,
        })
        .expect("load");
        assert!(!loaded.builtin_defaults);
        assert_eq!(loaded.config.hypervisor.vcpus, 3);
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("vcpu", "vcpus"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("memory", HYPERVISOR_KEYS), None);
        assert_eq!(closest("memory_mb", HYPERVISOR_KEYS), Some("memory_mib"));
    }
}
