//! Node registration decisions, with no I/O: validation of an `add_node` request and what to
//! do given the record already stored under the requested name.

use chrono::{DateTime, Utc};
use datom_common::names::{self, NameKind};
use datom_common::records::{NodeRecord, SCHEMA};
use datom_common::rpc::{AddNodeRequest, ConfigError};

/// Most services one node record may list.
pub const MAX_SERVICES: usize = 256;
/// Most disks or NICs one hardware report may list.
pub const MAX_DEVICES: usize = 512;
/// Longest accepted free-text hardware field.
pub const MAX_FIELD: usize = 512;

/// What `add_node` should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddDecision {
    /// Same machine re-adding: return the stored record unchanged.
    Existing(NodeRecord),
    /// New name: store this record.
    Create(NodeRecord),
}

/// Checks a request's names and sizes.
pub fn validate(req: &AddNodeRequest) -> Result<(), ConfigError> {
    names::validate(NameKind::Node, &req.name).map_err(|e| ConfigError::InvalidName(e.to_string()))?;
    validate_services(&req.services)?;
    let hw = &req.hardware;
    if hw.machine_id.is_empty() || hw.machine_id.len() > 128 {
        return Err(ConfigError::InvalidArgument("hardware.machine_id must be 1..128 characters".into()));
    }
    if !hw.machine_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c)) {
        return Err(ConfigError::InvalidArgument(
            "hardware.machine_id may only contain ASCII letters, digits, '-', '_', ':' and '.'".into(),
        ));
    }
    if hw.disks.len() > MAX_DEVICES || hw.nics.len() > MAX_DEVICES {
        return Err(ConfigError::InvalidArgument(format!("at most {MAX_DEVICES} disks and NICs per report")));
    }
    for (field, v) in [
        ("hostname", &hw.hostname),
        ("os", &hw.os),
        ("kernel", &hw.kernel),
        ("cpu_model", &hw.cpu_model),
        ("arch", &hw.arch),
    ] {
        if v.len() > MAX_FIELD {
            return Err(ConfigError::InvalidArgument(format!("hardware.{field} is longer than {MAX_FIELD} bytes")));
        }
    }
    Ok(())
}

/// Checks a list of service names: valid names, no duplicates, bounded length.
pub fn validate_services(services: &[String]) -> Result<(), ConfigError> {
    if services.len() > MAX_SERVICES {
        return Err(ConfigError::InvalidArgument(format!("at most {MAX_SERVICES} services per node")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in services {
        names::validate(NameKind::Service, s).map_err(|e| ConfigError::InvalidName(e.to_string()))?;
        if !seen.insert(s) {
            return Err(ConfigError::InvalidArgument(format!("service {s:?} is listed twice")));
        }
    }
    Ok(())
}

/// Decides `add_node` given what is stored under the requested name. A machine is identified
/// by its machine id: the same machine gets its record back (idempotent), another machine gets
/// `NameTaken`. One machine may hold several node names (several agents with separate roots).
pub fn decide(
    existing: Option<&NodeRecord>,
    req: &AddNodeRequest,
    now: DateTime<Utc>,
    instance: &str,
) -> Result<AddDecision, ConfigError> {
    match existing {
        Some(rec) if rec.machine_id == req.hardware.machine_id => Ok(AddDecision::Existing(rec.clone())),
        Some(rec) => Err(ConfigError::NameTaken { name: req.name.clone(), machine_id: rec.machine_id.clone() }),
        None => Ok(AddDecision::Create(NodeRecord {
            schema: SCHEMA,
            name: req.name.clone(),
            machine_id: req.hardware.machine_id.clone(),
            hardware: req.hardware.clone(),
            services: req.services.clone(),
            registered_at: now,
            registered_by: instance.to_string(),
            unschedulable: false,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datom_common::records::HardwareReport;

    fn req(name: &str, machine: &str) -> AddNodeRequest {
        AddNodeRequest {
            name: name.into(),
            hardware: HardwareReport {
                machine_id: machine.into(),
                hostname: "h".into(),
                os: "Debian".into(),
                kernel: "6.1".into(),
                cpu_model: "x".into(),
                arch: "x86_64".into(),
                cpus: 2,
                memory_bytes: 1 << 30,
                disks: vec![],
                nics: vec![],
            },
            services: vec!["web".into()],
        }
    }

    #[test]
    fn new_name_is_created() {
        let d = decide(None, &req("n1", "m1"), Utc::now(), "cs").unwrap();
        assert!(matches!(d, AddDecision::Create(r) if r.name == "n1" && r.machine_id == "m1"));
    }

    #[test]
    fn same_machine_gets_its_record_back() {
        let AddDecision::Create(rec) = decide(None, &req("n1", "m1"), Utc::now(), "cs").unwrap() else { panic!() };
        let again = decide(Some(&rec), &req("n1", "m1"), Utc::now(), "cs2").unwrap();
        assert_eq!(again, AddDecision::Existing(rec));
    }

    #[test]
    fn other_machine_gets_name_taken() {
        let AddDecision::Create(rec) = decide(None, &req("n1", "m1"), Utc::now(), "cs").unwrap() else { panic!() };
        let err = decide(Some(&rec), &req("n1", "m2"), Utc::now(), "cs").unwrap_err();
        assert_eq!(err, ConfigError::NameTaken { name: "n1".into(), machine_id: "m1".into() });
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(matches!(validate(&req("a/b", "m")), Err(ConfigError::InvalidName(m)) if m.contains("'/'")));
        assert!(matches!(validate(&req("ok", "")), Err(ConfigError::InvalidArgument(_))));
        assert!(matches!(validate(&req("ok", "../x")), Err(ConfigError::InvalidArgument(_))));
        let mut r = req("ok", "m");
        r.services = vec!["a".into(), "a".into()];
        assert!(matches!(validate(&r), Err(ConfigError::InvalidArgument(m)) if m.contains("twice")));
        validate(&req("ok", "m-1")).unwrap();
    }
}
