//! How big a pod's VM is and where its state lives. The VM is sized once,
//! when the pod's first container boots it: the configured base, plus the
//! pod's own limits when CRI passes them (containerd 1.7+ puts the pod's
//! summed CPU quota and memory limit on the sandbox container as
//! annotations). Later containers cannot grow it: there is no CPU or
//! memory hotplug yet.

use std::path::PathBuf;

use serde_json::Value;

use super::spec::{self, SpecError, SANDBOX_CPU_PERIOD, SANDBOX_CPU_QUOTA, SANDBOX_MEMORY};
use crate::config::{Config, MEMORY_MIB_RANGE, VCPUS_RANGE};
use crate::sandbox_dir::{self, SANDBOX_ROOT};

const MIB: u64 = 1 << 20;

/// The configuration the pod's VM boots with.
pub fn size_vm(base: &Config, spec: &Value, debug: bool) -> Result<Config, SpecError> {
    let mut config = base.clone();
    let hv = &mut config.hypervisor;

    if let Some(bytes) = spec::annotation_u64(spec, SANDBOX_MEMORY)? {
        let extra = bytes.div_ceil(MIB);
        let max = u64::try_from(*MEMORY_MIB_RANGE.end()).unwrap_or(u64::MAX);
        let total = (u64::from(hv.memory_mib) + extra).min(max);
        hv.memory_mib = u32::try_from(total).unwrap_or(u32::MAX);
    }
    let quota = spec::annotation_u64(spec, SANDBOX_CPU_QUOTA)?;
    let period = spec::annotation_u64(spec, SANDBOX_CPU_PERIOD)?;
    if let (Some(quota), Some(period)) = (quota, period.filter(|p| *p > 0)) {
        let extra = quota.div_ceil(period);
        let max = u64::try_from(*VCPUS_RANGE.end()).unwrap_or(u64::MAX);
        let total = (u64::from(hv.vcpus) + extra).min(max);
        hv.vcpus = u8::try_from(total).unwrap_or(u8::MAX);
    }

    let debug = debug || base.runtime.enable_debug;
    config.runtime.enable_debug = debug;
    // The 8250 console costs a VM exit per byte: a quiet boot is a faster
    // boot. Debugging wants every line, and the agent's debug log.
    let extra = if debug { "palisade.log=debug" } else { "quiet" };
    hv.kernel_params = if hv.kernel_params.is_empty() {
        extra.to_owned()
    } else {
        format!("{extra} {}", hv.kernel_params)
    };
    Ok(config)
}

/// `/run/palisade/<sandbox id>`, or a hash of the id when it is too long
/// or unusual to be a short, safe directory name.
pub fn sandbox_dir(sandbox_id: &str) -> PathBuf {
    let name = if sandbox_dir::is_plain_id(sandbox_id) {
        sandbox_id.to_owned()
    } else {
        format!("h-{}", short_hash(sandbox_id))
    };
    PathBuf::from(SANDBOX_ROOT).join(name)
}

/// 32 hex digits of SHA-256.
fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(s.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adds_the_pods_limits_to_the_base_size() {
        let base = Config::default();
        let spec = json!({"annotations": {
            SANDBOX_MEMORY: "536870912",
            SANDBOX_CPU_QUOTA: "150000",
            SANDBOX_CPU_PERIOD: "100000",
        }});
        let sized = size_vm(&base, &spec, false).expect("size");
        assert_eq!(
            sized.hypervisor.memory_mib,
            base.hypervisor.memory_mib + 512
        );
        assert_eq!(sized.hypervisor.vcpus, base.hypervisor.vcpus + 2);
        assert_eq!(sized.hypervisor.kernel_params, "quiet");

        let unlimited =
            json!({"annotations": {SANDBOX_CPU_QUOTA: "-1", SANDBOX_CPU_PERIOD: "100000"}});
        let sized = size_vm(&base, &unlimited, true).expect("size");
        assert_eq!(sized.hypervisor.vcpus, base.hypervisor.vcpus);
        assert!(sized.runtime.enable_debug);
        assert_eq!(sized.hypervisor.kernel_params, "palisade.log=debug");
    }

    #[test]
    fn clamps_to_the_configurable_maximum_and_names_bad_annotations() {
        let spec = json!({"annotations": {SANDBOX_MEMORY: "999999999999999"}});
        let sized = size_vm(&Config::default(), &spec, false).expect("size");
        assert_eq!(
            i64::from(sized.hypervisor.memory_mib),
            *MEMORY_MIB_RANGE.end()
        );
        let bad = json!({"annotations": {SANDBOX_CPU_QUOTA: "x", SANDBOX_CPU_PERIOD: "1"}});
        let err = size_vm(&Config::default(), &bad, false).expect_err("bad");
        assert!(err.to_string().contains(SANDBOX_CPU_QUOTA), "{err}");
    }

    #[test]
    fn sandbox_dirs_are_short_and_safe() {
        assert_eq!(sandbox_dir("pod1"), PathBuf::from("/run/palisade/pod1"));
        let k8s = "f".repeat(64);
        assert_eq!(
            sandbox_dir(&k8s),
            PathBuf::from(format!("/run/palisade/{k8s}"))
        );
        for odd in [
            "x".repeat(65),
            "../etc".to_owned(),
            "a/b".to_owned(),
            String::new(),
        ] {
            let dir = sandbox_dir(&odd);
            let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(
                name.starts_with("h-") && name.len() == 34,
                "{odd:?} -> {name}"
            );
        }
    }
}
