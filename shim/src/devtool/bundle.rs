//! An OCI bundle for `agent create`: `DIR/config.json`, read and checked
//! to be JSON here (so a typo gets a line and column), then sent as it is;
//! the agent judges the spec itself.

use std::path::Path;

use anyhow::{anyhow, Context};

use super::paths::PathMap;

pub struct Bundle {
    pub spec_json: Vec<u8>,
    /// The guest path of the container's rootfs.
    pub rootfs: String,
}

/// Reads `bundle/config.json` and decides the rootfs: `--rootfs` if given
/// (a guest path, or a host path in the sandbox's shared directory), else
/// the spec's `root.path`.
pub fn load(bundle: &Path, rootfs: Option<&str>, paths: &PathMap) -> anyhow::Result<Bundle> {
    let file = bundle.join("config.json");
    let spec_json = std::fs::read(&file)
        .with_context(|| format!("cannot read the bundle's spec {}", file.display()))?;
    let spec: serde_json::Value = serde_json::from_slice(&spec_json)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    if !spec.is_object() {
        return Err(anyhow!(
            "{} holds {}, not an OCI spec (a JSON object)",
            file.display(),
            kind(&spec)
        ));
    }
    let rootfs = match rootfs {
        Some(r) => paths.to_guest(r),
        None => {
            let root = spec
                .get("root")
                .and_then(|r| r.get("path"))
                .and_then(|p| p.as_str())
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    anyhow!(
                        "{} has no root.path: name the container's root filesystem there, or give --rootfs GUEST_PATH",
                        file.display()
                    )
                })?;
            paths
                .bundle_root(bundle, root)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?
        }
    };
    Ok(Bundle { spec_json, rootfs })
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), config).expect("write");
        dir
    }

    fn err(r: anyhow::Result<Bundle>) -> String {
        match r {
            Ok(_) => panic!("loaded"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn rootfs_from_the_spec_or_the_option() {
        let b = bundle(r#"{"root": {"path": "rootfs"}, "process": {}}"#);
        let loaded = load(b.path(), None, &PathMap::Identity).unwrap();
        assert_eq!(loaded.rootfs, b.path().join("rootfs").display().to_string());
        assert!(loaded.spec_json.starts_with(b"{\"root\""));
        let loaded = load(
            b.path(),
            Some("/run/palisade/shared/r"),
            &PathMap::GuestOnly,
        )
        .unwrap();
        assert_eq!(loaded.rootfs, "/run/palisade/shared/r");
        let shared = PathMap::Shared {
            host: b.path().to_owned(),
        };
        assert_eq!(
            load(b.path(), None, &shared).unwrap().rootfs,
            "/run/palisade/shared/rootfs"
        );
    }

    #[test]
    fn bad_bundles_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(err(load(dir.path(), None, &PathMap::Identity))
            .contains("cannot read the bundle's spec"));
        let b = bundle("{\"root\": ");
        let e = err(load(b.path(), None, &PathMap::Identity));
        assert!(
            e.contains("is not valid JSON") && e.contains("line 1"),
            "{e}"
        );
        let b = bundle("[1]");
        assert!(err(load(b.path(), None, &PathMap::Identity)).contains("holds an array"));
        // No root: the CLI cannot guess a rootfs, but with --rootfs the
        // spec goes to the agent, which judges it.
        let b = bundle(r#"{"process": {}}"#);
        assert!(err(load(b.path(), None, &PathMap::Identity)).contains("has no root.path"));
        assert!(load(b.path(), Some("/r"), &PathMap::Identity).is_ok());
    }
}
