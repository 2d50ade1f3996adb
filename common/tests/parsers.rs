//! Property tests for the parsers that read untrusted input: service specs (TOML), records
//! read from ZooKeeper (JSON), names, and the secret file. They must return errors, never panic,
//! and what they accept must be safe. Case counts are bounded so CI stays fast.

use datom_common::auth::AuthFile;
use datom_common::coord::decode;
use datom_common::names::{self, NameKind};
use datom_common::records::{
    ClusterRecord, ConfigServiceInstance, DesiredRecord, InstanceRecord, LiveRecord, NodeRecord,
};
use datom_common::spec::ServiceSpec;
use proptest::prelude::*;

const NODE_JSON: &str = r#"{
  "schema": 1, "name": "n1", "machine_id": "m1",
  "hardware": { "machine_id": "m1", "hostname": "h", "os": "Debian", "kernel": "6.1", "cpu_model": "x",
                "arch": "x86_64", "cpus": 2, "memory_bytes": 1024, "disks": [], "nics": [] },
  "services": ["web"], "registered_at": "2026-11-24T21:00:00Z", "registered_by": "cs-1"
}"#;

const SPEC_TOML: &str = "name = \"web\"\ntype = \"process\"\ncommand = \"sleep\"\nargs = [\"1\"]\n\
group = \"g\"\nfailover = true\n[health]\nkind = \"tcp\"\nport = 80\nperiod_ms = 100\nthreshold = 2\n";

fn decode_all(data: &[u8]) {
    let _ = decode::<NodeRecord>("/p", data);
    let _ = decode::<LiveRecord>("/p", data);
    let _ = decode::<InstanceRecord>("/p", data);
    let _ = decode::<DesiredRecord>("/p", data);
    let _ = decode::<ClusterRecord>("/p", data);
    let _ = decode::<ConfigServiceInstance>("/p", data);
    let _ = decode::<serde_json::Value>("/p", data);
}

/// Spec-like TOML: known keys with values of any type, so the parser gets past the syntax.
fn spec_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "name",
        "type",
        "command",
        "args",
        "group",
        "failover",
        "depends_on",
        "env",
        "stop_timeout_ms",
        "[health]",
        "kind",
        "port",
        "period_ms",
        "threshold",
        "[placement]",
        "nodes",
        "replicas",
    ]);
    let value = prop_oneof![
        Just("\"web\"".to_string()),
        Just("\"../etc\"".to_string()),
        Just("\"\"".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<bool>().prop_map(|v| v.to_string()),
        "\\PC{0,20}".prop_map(|s| format!("{s:?}")),
        prop::collection::vec("[a-z./]{0,8}", 0..4).prop_map(|v| format!("{v:?}")),
        Just("{ a = 1 }".to_string()),
    ];
    prop::collection::vec((key, value), 0..16).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| if k.starts_with('[') { format!("{k}\n") } else { format!("{k} = {v}\n") })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn spec_parser_never_panics_on_spec_like_toml(src in spec_like()) {
        if let Ok(spec) = ServiceSpec::from_toml(&src) {
            // Accepted specs have safe names.
            prop_assert!(names::validate(NameKind::Service, &spec.name).is_ok());
        }
    }

    #[test]
    fn spec_parser_never_panics_on_a_mutated_valid_spec(pos in 0usize..SPEC_TOML.len(), b in any::<u8>(), cut in any::<bool>()) {
        let mut bytes = SPEC_TOML.as_bytes().to_vec();
        if cut { bytes.truncate(pos) } else { bytes[pos] = b }
        let _ = ServiceSpec::from_toml(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn record_decoding_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&data);
    }

    #[test]
    fn record_decoding_never_panics_on_a_mutated_valid_record(pos in 0usize..NODE_JSON.len(), b in any::<u8>(), cut in any::<bool>()) {
        let mut bytes = NODE_JSON.as_bytes().to_vec();
        if cut { bytes.truncate(pos) } else { bytes[pos] = b }
        decode_all(&bytes);
    }

    #[test]
    fn names_with_path_escapes_are_refused(prefix in "[a-z]{0,5}", sep in prop::sample::select(vec!["/", "../", "/..", "\0", "\n"]), suffix in "[a-z]{0,5}") {
        let name = format!("{prefix}{sep}{suffix}");
        for kind in [NameKind::Node, NameKind::Service, NameKind::Group, NameKind::Cluster] {
            prop_assert!(names::validate(kind, &name).is_err(), "{kind:?} accepted {name:?}");
        }
    }

    #[test]
    fn accepted_names_are_single_safe_segments(s in "\\PC{0,80}") {
        if names::validate(NameKind::Node, &s).is_ok() {
            prop_assert!(!s.contains('/') && s != "." && s != ".." && !s.is_empty());
            prop_assert_eq!(datom_common::paths::validate_path(&datom_common::paths::node(&s)), Ok(()));
        }
    }

    #[test]
    fn secret_file_parsing_never_panics(identity in "\\PC{0,40}", secret in "\\PC{0,80}", schema in 0u32..3) {
        let text = format!("schema = {schema}\nidentity = {identity:?}\ncluster_secret = {secret:?}\n");
        if let Ok(f) = toml::from_str::<AuthFile>(&text)
            && f.validate().is_ok()
        {
            prop_assert!(f.identity.contains(':'));
            prop_assert_eq!(f.token().len(), 64);
        }
    }
}
