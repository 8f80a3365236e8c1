//! The runtime options containerd passes with Create: for runtimes other
//! than runc, `runtimeoptions.v1.Options`, whose `config_path` (CRI's
//! `ConfigPath`, `ctr --runtime-config-path`) names the configuration file
//! to use instead of /etc/palisade/configuration.toml.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

use super::error::TaskError;

const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";
/// Field numbers of runtimeoptions.v1.Options.
const TYPE_URL_FIELD: u32 = 1;
const CONFIG_PATH_FIELD: u32 = 2;

/// The configuration file the options name, if any. Options of another
/// type (a runc-style configuration pointed at this runtime) are ignored
/// with a warning: none of their settings mean anything here.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, TaskError> {
    let Some(any) = options else {
        return Ok(None);
    };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(None);
    }
    if !any.type_url.ends_with(RUNTIME_OPTIONS) {
        log::warn!(
            "ignoring runtime options of type {:?}: palisade reads only {RUNTIME_OPTIONS} (ConfigPath)",
            any.type_url
        );
        return Ok(None);
    }
    let path = decode_config_path(&any.value).map_err(|e| {
        TaskError::invalid(format!(
            "the runtime options ({RUNTIME_OPTIONS}) are malformed: {e}"
        ))
    })?;
    match path {
        Some(p) if !p.starts_with('/') => Err(TaskError::invalid(format!(
            "runtime option ConfigPath {p:?} must be an absolute path"
        ))),
        Some(p) => Ok(Some(PathBuf::from(p))),
        None => Ok(None),
    }
}

fn decode_config_path(bytes: &[u8]) -> Result<Option<String>, String> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while !input.eof().map_err(|e| e.to_string())? {
        let tag = input.read_raw_varint32().map_err(|e| e.to_string())?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        match (field, wire_type) {
            (CONFIG_PATH_FIELD, 2) => {
                let s = input.read_string().map_err(|e| e.to_string())?;
                path = (!s.is_empty()).then_some(s);
            }
            (TYPE_URL_FIELD, 2) | (_, 2) => {
                input.read_bytes().map_err(|e| e.to_string())?;
            }
            (_, 0) => {
                input.read_raw_varint64().map_err(|e| e.to_string())?;
            }
            (_, 1) => {
                input
                    .read_raw_little_endian64()
                    .map_err(|e| e.to_string())?;
            }
            (_, 5) => {
                input
                    .read_raw_little_endian32()
                    .map_err(|e| e.to_string())?;
            }
            (f, w) => return Err(format!("field {f} has unsupported wire type {w}")),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(config_path: &str) -> Any {
        let mut value = vec![0x0a, 3];
        value.extend_from_slice(b"abc");
        value.push(0x12);
        value.push(config_path.len() as u8);
        value.extend_from_slice(config_path.as_bytes());
        Any {
            type_url: RUNTIME_OPTIONS.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn reads_config_path() {
        assert_eq!(
            config_path(Some(&options("/etc/palisade/fast.toml"))).expect("ok"),
            Some(PathBuf::from("/etc/palisade/fast.toml"))
        );
        assert_eq!(config_path(None).expect("ok"), None);
        assert_eq!(config_path(Some(&options(""))).expect("ok"), None);
    }

    #[test]
    fn refuses_relative_paths_and_garbage_and_ignores_other_types() {
        let err = config_path(Some(&options("fast.toml"))).expect_err("relative");
        assert!(err.message.contains("absolute"), "{err}");
        let garbage = Any {
            type_url: RUNTIME_OPTIONS.into(),
            value: vec![0x12, 50, b'x'],
            ..Default::default()
        };
        assert!(config_path(Some(&garbage)).is_err());
        let runc = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x08, 1],
            ..Default::default()
        };
        assert_eq!(config_path(Some(&runc)).expect("ignored"), None);
    }
}
