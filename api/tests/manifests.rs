//! The example plant is valid everywhere, and every manifest under `examples/invalid/` is refused
//! with the field named in its `# expect-field:` header — by `api::validate`, and, where the
//! header names an `# expect-cel:` message, by the CRD's CEL rules evaluated as the API server
//! would.

use std::path::{Path, PathBuf};

use kube::core::cel::Validator;
use serde_json::Value;
use shopfloor_api::{
    crds,
    manifest::{self, ManifestError, Object},
    validate,
};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn plant() -> Vec<Object> {
    manifest::load_valid(&examples().join("plant"))
        .expect("examples/plant is readable")
        .into_iter()
        .map(|l| l.map(|(_, o)| o).unwrap_or_else(|e| panic!("example plant refused: {e}")))
        .collect()
}

fn schema_for(kind: &str) -> Value {
    let (_, crd) = crds::all().into_iter().find(|(_, c)| c.spec.names.kind == kind).expect("kind has a CRD");
    serde_json::to_value(crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()))
        .expect("schema")
}

/// Each YAML document of a file as JSON, the way kubectl sends it to the API server.
fn raw_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("readable");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &Value| v["apiVersion"].as_str().is_some_and(|a| a.starts_with("shopfloor.io/")))
        .collect()
}

#[test]
fn example_plant_is_valid_and_complete() {
    let objects = plant();
    let count = |kind: &str| objects.iter().filter(|o| o.kind() == kind).count();
    assert_eq!(count("EdgeAgent"), 3);
    assert!(count("Equipment") >= 6);
    assert_eq!(count("NetworkSlice"), 2);
    assert!(count("ControlCommand") >= 3);
    let modbus = objects.iter().filter(|o| matches!(o, Object::Equipment(e) if e.spec.modbus_tcp.is_some())).count();
    assert!(modbus >= 2 && modbus < count("Equipment"), "the plant mixes modbusTcp and simulated equipment");
    let ssts: Vec<u8> = objects
        .iter()
        .filter_map(|o| match o {
            Object::NetworkSlice(s) => Some(s.spec.snssai.sst),
            _ => None,
        })
        .collect();
    assert!(ssts.contains(&1) && ssts.contains(&2), "an eMBB and a URLLC slice");
    let refs = validate::references(&objects);
    assert!(refs.is_empty(), "dangling references: {refs:?}");
}

#[test]
fn example_plant_passes_the_cel_rules() {
    let validator = Validator::new();
    for file in manifest::manifest_files(&examples().join("plant")).expect("list") {
        for doc in raw_documents(&file) {
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            // As a create, and as an unchanged update (exercises the transition rules).
            for old in [None, Some(&doc)] {
                if let Err(errors) = validator.validate(&schema_for(&kind), &doc, old) {
                    panic!("{}: {kind} {}: {errors:?}", file.display(), doc["metadata"]["name"]);
                }
            }
        }
    }
}

/// The OPC UA example (a machine with a method) is valid for the controller, in the example
/// plant's context, and for the CRD's CEL rules.
#[test]
fn the_opcua_example_is_valid_for_the_controller_and_the_api_server() {
    let mut all = plant();
    let loaded = manifest::load_valid(&examples().join("opcua")).expect("examples/opcua is readable");
    assert!(!loaded.is_empty(), "examples/opcua holds an Equipment");
    for l in loaded {
        let (_, o) = l.unwrap_or_else(|e| panic!("the OPC UA example is refused: {e}"));
        assert!(matches!(&o, Object::Equipment(e) if e.spec.opcua.is_some()));
        all.push(o);
    }
    let refs = validate::references(&all);
    assert!(refs.is_empty(), "dangling references: {refs:?}");
    let validator = Validator::new();
    for file in manifest::manifest_files(&examples().join("opcua")).expect("list") {
        for doc in raw_documents(&file) {
            if let Err(errors) = validator.validate(&schema_for("Equipment"), &doc, None) {
                panic!("{}: {errors:?}", file.display());
            }
        }
    }
}

#[test]
fn command_spec_is_immutable() {
    let file = examples().join("plant/commands.yaml");
    let doc = raw_documents(&file).remove(0);
    let mut changed = doc.clone();
    changed["spec"]["parameters"]["speed"] = 2.0.into();
    let errors = Validator::new().validate(&schema_for("ControlCommand"), &changed, Some(&doc)).expect_err("refused");
    assert!(errors.iter().any(|e| e.message.contains("immutable")), "{errors:?}");
}

struct Expectation {
    field: String,
    cel: Option<String>,
}

fn expectation(path: &Path) -> Expectation {
    let text = std::fs::read_to_string(path).expect("readable");
    let header = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    };
    Expectation {
        field: header("# expect-field:")
            .unwrap_or_else(|| panic!("{} has no `# expect-field:` header", path.display())),
        cel: header("# expect-cel:"),
    }
}

/// Every field path the Rust side reports for a file, in the plant's context.
fn refused_fields(path: &Path, plant: &[Object]) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable");
    let mut fields = Vec::new();
    let mut parsed = Vec::new();
    for loaded in manifest::parse_valid(path, &text) {
        match loaded {
            Ok((_, obj)) => parsed.push(obj),
            Err(ManifestError::Field(f)) => fields.push(f.field.clone()),
            Err(ManifestError::Invalid(inv)) => fields.extend(inv.invalid.violations.iter().map(|v| v.field.clone())),
            Err(e) => panic!("{}: unexpected error {e}", path.display()),
        }
    }
    if !parsed.is_empty() {
        let mut all = plant.to_vec();
        all.extend(parsed.iter().cloned());
        for inv in validate::references(&all) {
            if parsed.iter().any(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name()) == inv.object) {
                fields.extend(inv.violations.iter().map(|v| v.field.clone()));
            }
        }
    }
    fields
}

#[test]
fn invalid_manifests_are_refused_with_the_field_named() {
    let plant = plant();
    let validator = Validator::new();
    let files = manifest::manifest_files(&examples().join("invalid")).expect("list");
    assert!(files.len() >= 15, "at least 15 invalid manifests, found {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let want = expectation(file);
        let fields = refused_fields(file, &plant);
        if !fields.contains(&want.field) {
            failures.push(format!("{name}: expected a violation at `{}`, got {fields:?}", want.field));
        }
        // The API server's CEL rules must agree wherever the rule is expressible in CEL, and
        // must not refuse what is documented as checked elsewhere (schema patterns, Rust only).
        for doc in raw_documents(file) {
            let kind = doc["kind"].as_str().unwrap_or_default();
            if !matches!(kind, "EdgeAgent" | "Equipment" | "NetworkSlice" | "ControlCommand") {
                continue;
            }
            if doc["apiVersion"] != "shopfloor.io/v1alpha1" {
                continue;
            }
            let result = validator.validate(&schema_for(kind), &doc, None);
            match (&want.cel, result) {
                (Some(msg), Ok(())) => failures.push(format!("{name}: CEL accepted it; expected `{msg}`")),
                (Some(msg), Err(errors)) if !errors.iter().any(|e| e.message.contains(msg.as_str())) => {
                    failures.push(format!("{name}: CEL refused with {errors:?}; expected `{msg}`"))
                }
                (None, Err(errors)) => failures.push(format!("{name}: CEL refused unexpectedly: {errors:?}")),
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn errors_name_the_object_the_field_and_the_fix() {
    let path = examples().join("invalid/equipment-desired-above-max.yaml");
    let text = std::fs::read_to_string(&path).expect("readable");
    let err = manifest::parse_valid(&path, &text).remove(0).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("equipment-desired-above-max.yaml (document 1)"), "{msg}");
    assert!(msg.contains("Equipment plant-a/bad-equipment"), "{msg}");
    assert!(msg.contains("spec.properties[0].desired: 3.1 is outside the interlock limits [0, 2.5]"), "{msg}");
}
