//! Hardware discovery for `datom addnode` (sysinfo): host, OS, CPU, memory, disks and NICs,
//! skipping loopback and virtual-interface noise, plus a stable machine id.

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};

use crate::records::{DiskInfo, HardwareReport, NicInfo};

/// Interface name prefixes that are virtual noise, not the machine's NICs.
const VIRTUAL_NIC_PREFIXES: &[&str] =
    &["lo", "veth", "docker", "br-", "virbr", "vnet", "tun", "tap", "cni", "flannel", "cali", "kube", "dummy", "vxlan"];

/// Filesystems that are not disks.
const PSEUDO_FS: &[&str] = &["tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "cgroup", "cgroup2", "nsfs"];

/// Whether an interface name is loopback or virtual noise.
pub fn is_virtual_nic(name: &str) -> bool {
    VIRTUAL_NIC_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Discovers this machine's hardware. `machine_id` overrides the discovered id.
pub fn discover(machine_id: Option<String>) -> Result<HardwareReport, String> {
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_cpu(CpuRefreshKind::everything()).with_memory(MemoryRefreshKind::everything()),
    )
    .map_err(|e| format!("cannot read CPU and memory information: {e}"))?;
    let cpu_model = sys.cpus().first().map(|c| c.brand().trim().to_string()).unwrap_or_default();
    let disk_list = Disks::new_with_refreshed_list().map_err(|e| tracing::warn!(error = %e, "cannot list disks")).ok();
    let mut disks: Vec<DiskInfo> = disk_list
        .iter()
        .flat_map(|l| l.iter())
        .filter(|d| !PSEUDO_FS.contains(&d.file_system().to_string_lossy().as_ref()))
        .map(|d| DiskInfo {
            mount_point: d.mount_point().display().to_string(),
            filesystem: d.file_system().to_string_lossy().into_owned(),
            total_bytes: d.total_space(),
        })
        .collect();
    disks.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    disks.dedup_by(|a, b| a.mount_point == b.mount_point);
    let nic_list = Networks::new_with_refreshed_list().map_err(|e| tracing::warn!(error = %e, "cannot list NICs")).ok();
    let mut nics: Vec<NicInfo> = nic_list
        .iter()
        .flat_map(|l| l.iter())
        .map(|(name, data)| (name.to_string_lossy().into_owned(), data))
        .filter(|(name, data)| !is_virtual_nic(name) && data.mac_address().to_string() != "00:00:00:00:00:00")
        .map(|(name, data)| NicInfo {
            name,
            mac: data.mac_address().to_string(),
            ips: data.ip_networks().iter().map(|n| format!("{}/{}", n.addr, n.prefix)).collect(),
            mtu: u32::try_from(data.mtu()).ok().filter(|m| *m > 0),
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    let hostname = System::host_name().unwrap_or_default();
    let machine_id = machine_id.unwrap_or_else(|| stable_machine_id(&hostname, &nics));
    Ok(HardwareReport {
        machine_id,
        hostname,
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        cpu_model,
        arch: System::cpu_arch(),
        cpus: sys.cpus().len() as u32,
        memory_bytes: sys.total_memory(),
        disks,
        nics,
    })
}

/// `/etc/machine-id` (or D-Bus's copy); otherwise a hash of the hostname and MAC addresses.
pub fn stable_machine_id(hostname: &str, nics: &[NicInfo]) -> String {
    for p in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            let s = s.trim();
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()) {
                return s.to_string();
            }
        }
    }
    // FNV-1a over hostname and MACs: stable across boots, no extra dependency.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in hostname.bytes().chain(nics.iter().flat_map(|n| n.mac.bytes())) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("fnv-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_cpus_and_memory() {
        let hw = discover(None).unwrap();
        assert!(hw.cpus > 0);
        assert!(hw.memory_bytes > 0);
        assert!(!hw.machine_id.is_empty());
        assert!(hw.nics.iter().all(|n| !is_virtual_nic(&n.name)));
    }

    #[test]
    fn virtual_noise_is_skipped() {
        for n in ["lo", "veth12ab", "docker0", "br-1234", "virbr0"] {
            assert!(is_virtual_nic(n), "{n}");
        }
        for n in ["eth0", "ens3", "enp0s31f6", "wlp2s0"] {
            assert!(!is_virtual_nic(n), "{n}");
        }
    }
}
