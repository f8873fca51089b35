//! The generated CRDs: committed files match the code, and every schema is one an API server
//! (1.29 or newer) accepts — structural, with compiling CEL rules inside the cost budget.

use std::path::PathBuf;

mod support {
    pub mod apiserver_cel;
}
use support::apiserver_cel::{self as apiserver, CRD_LIMIT, RULE_LIMIT};

use kube::core::cel::compile_schema;
use serde_json::Value;
use shopfloor_api::crds;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_the_types() {
    let mut drifted = Vec::new();
    for dir in ["crds", "charts/shopfloor/crds"] {
        for (file, crd) in crds::all() {
            let path = root().join(dir).join(file);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != crds::render(&crd) {
                drifted.push(format!("{dir}/{file}"));
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "generated CRDs differ from the committed files {drifted:?}; run `cargo run -p shopfloor-api --bin crdgen` and commit the result"
    );
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let version = &crd.spec.versions[0];
    serde_json::to_value(version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema"))
        .expect("schema to json")
}

#[test]
fn crds_are_complete_v1_definitions() {
    for (file, crd) in crds::all() {
        let json = serde_json::to_value(&crd).expect("crd to json");
        assert_eq!(json["apiVersion"], "apiextensions.k8s.io/v1", "{file}");
        assert_eq!(json["kind"], "CustomResourceDefinition", "{file}");
        let spec = &crd.spec;
        assert_eq!(spec.group, "shopfloor.io", "{file}");
        assert_eq!(spec.scope, "Namespaced", "{file}");
        assert_eq!(crd.metadata.name.as_deref(), Some(format!("{}.shopfloor.io", spec.names.plural).as_str()));
        assert!(spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()), "{file}: short names");
        assert_eq!(spec.names.categories.as_deref(), Some(&["shopfloor".to_owned()][..]), "{file}: category");
        assert_eq!(spec.versions.len(), 1, "{file}");
        let v = &spec.versions[0];
        assert_eq!((v.name.as_str(), v.served, v.storage), ("v1alpha1", true, true), "{file}");
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{file}: status subresource");
        let columns = v.additional_printer_columns.as_deref().unwrap_or_default();
        assert!(columns.len() >= 4, "{file}: printer columns");
        assert!(columns.iter().any(|c| c.name == "Age"), "{file}: Age column");
        let schema = schema_of(&crd);
        let status = &schema["properties"]["status"]["properties"];
        assert_eq!(status["observedGeneration"]["type"], "integer", "{file}: status.observedGeneration");
        let conditions = &status["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{file}: conditions list-map");
        for field in ["type", "status", "reason", "message", "lastTransitionTime"] {
            assert!(conditions["items"]["properties"][field].is_object(), "{file}: conditions[].{field}");
        }
    }
}

/// The structural-schema rules of apiextensions v1 (KEP-1693), checked node by node.
fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{path}: schema node is not an object"));
        return;
    };
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !obj.contains_key("type") && !preserve && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    for forbidden in ["$ref", "definitions", "$defs", "$schema", "id", "patternProperties", "dependencies"] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: `{forbidden}` is not allowed in a CRD schema"));
        }
    }
    for junctor in ["anyOf", "oneOf", "allOf", "not"] {
        if obj.contains_key(junctor) {
            // Allowed only without type/default/nullable/additionalProperties inside; we emit none.
            problems.push(format!("{path}: `{junctor}` (keep the schema free of logical junctors)"));
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if obj.get("type") == Some(&Value::String("array".into())) && !obj.contains_key("items") {
        problems.push(format!("{path}: array without items"));
    }
    if let Some(keys) = obj.get("x-kubernetes-list-map-keys").and_then(Value::as_array) {
        let required = node["items"]["required"].as_array().cloned().unwrap_or_default();
        for k in keys {
            if !required.contains(k) {
                problems.push(format!("{path}: list-map key {k} must be required in items"));
            }
        }
    }
    if let Some(rules) = obj.get("x-kubernetes-validations").and_then(Value::as_array) {
        for r in rules {
            if r["message"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{path}: CEL rule {} has no message", r["rule"]));
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check_structural(v, &format!("{path}.{k}"), problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(ap, &format!("{path}{{}}"), problems);
    }
}

#[test]
fn schemas_are_structural() {
    let mut problems = Vec::new();
    for (file, crd) in crds::all() {
        let schema = schema_of(&crd);
        assert_eq!(schema["type"], "object", "{file}");
        assert!(schema["required"].as_array().is_some_and(|r| r.contains(&"spec".into())), "{file}: spec required");
        check_structural(&schema, file, &mut problems);
    }
    assert!(problems.is_empty(), "non-structural schema:\n{}", problems.join("\n"));
}

/// Every node carrying CEL rules, with its path.
fn rule_nodes<'a>(node: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    if node.get("x-kubernetes-validations").is_some() {
        out.push((path.clone(), node));
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            rule_nodes(v, format!("{path}.{k}"), out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = node.get(key).filter(|v| v.is_object()) {
            rule_nodes(v, format!("{path}[]"), out);
        }
    }
}

/// Lists, maps and strings below `node` without a size bound, by path. The API server's CEL
/// cost estimator multiplies these bounds; an unbounded one makes any rule over it too costly.
fn unbounded(node: &Value, path: &str, out: &mut Vec<String>) {
    let ty = node["type"].as_str().unwrap_or_default();
    match ty {
        "array" if node.get("maxItems").is_none() => out.push(format!("{path}: array without maxItems")),
        "object" if node.get("additionalProperties").is_some() && node.get("maxProperties").is_none() => {
            out.push(format!("{path}: map without maxProperties"))
        }
        "string"
            if node.get("maxLength").is_none()
                && node.get("enum").is_none()
                && node.get("format").is_none()
                && node.get("pattern").is_none() =>
        {
            out.push(format!("{path}: string without maxLength"))
        }
        _ => {}
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            unbounded(v, &format!("{path}.{k}"), out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = node.get(key).filter(|v| v.is_object()) {
            unbounded(v, &format!("{path}[]"), out);
        }
    }
}

#[test]
fn cel_rules_compile_and_everything_they_reach_is_bounded() {
    let mut problems = Vec::new();
    let mut count = 0;
    for (file, crd) in crds::all() {
        let schema = schema_of(&crd);
        let mut nodes = Vec::new();
        rule_nodes(&schema, file.to_owned(), &mut nodes);
        for (path, node) in nodes {
            let compiled = compile_schema(node);
            for e in compiled.compilation_errors() {
                problems.push(format!("{path}: {e}"));
            }
            count += node["x-kubernetes-validations"].as_array().map_or(0, Vec::len);
            unbounded(node, &path, &mut problems);
        }
    }
    // 24 since the rules reading untyped values (desired, simulated.initial, an action write's
    // value, a command's parameters) moved to the controller: CEL cannot see those fields.
    assert!(count >= 24, "expected the cross-field rules to be in the schemas, found {count}");
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "CEL problems:\n{}", problems.join("\n"));
}

#[test]
fn the_bound_check_catches_unbounded_nodes() {
    let mut found = Vec::new();
    let node = serde_json::json!({"type": "object", "properties": {
        "list": {"type": "array", "items": {"type": "string", "maxLength": 3}},
        "map": {"type": "object", "additionalProperties": {"type": "integer"}},
        "name": {"type": "string"},
    }});
    unbounded(&node, "spec", &mut found);
    assert_eq!(
        found,
        vec![
            "spec.list: array without maxItems",
            "spec.map: map without maxProperties",
            "spec.name: string without maxLength"
        ]
    );
}

/// The refusal a real API server gave these CRDs, now a `cargo test` failure: every rule is
/// type-checked against the type the API server derives from the schema (untyped fields, maps
/// with untyped values and lists of untyped items are invisible to CEL), and its estimated cost
/// times its cardinality must fit the per-rule budget, the sum the per-CRD budget.
#[test]
fn the_api_server_type_checks_every_rule_and_each_fits_its_cost_budget() {
    let mut problems = Vec::new();
    let mut report = Vec::new();
    for (file, crd) in crds::all() {
        let mut total: u64 = 0;
        for (path, rule, result) in apiserver::rules(&schema_of(&crd)) {
            match result {
                Err(e) => problems.push(format!("{file} {path}: `{rule}`: {e}")),
                Ok(cost) if cost > RULE_LIMIT => problems.push(format!(
                    "{file} {path}: `{rule}`: estimated cost {cost} exceeds the per-rule budget {RULE_LIMIT} by {:.1}x",
                    cost as f64 / RULE_LIMIT as f64
                )),
                Ok(cost) => {
                    total = total.saturating_add(cost);
                    report.push(format!("{cost:>10}  {file} {path}: {rule}"));
                }
            }
        }
        if total > CRD_LIMIT {
            problems.push(format!("{file}: total estimated cost {total} exceeds the per-CRD budget {CRD_LIMIT}"));
        }
        report.push(format!("{total:>10}  {file}: total (budget {CRD_LIMIT})"));
    }
    println!("estimated cost × cardinality per rule (per-rule budget {RULE_LIMIT}):\n{}", report.join("\n"));
    assert!(problems.is_empty(), "the API server would refuse these CRDs:\n{}", problems.join("\n"));
}

/// The checker against what the API server is known to do: its refusals of untyped fields, and
/// the cost figures of its own estimator tests (apiextensions-apiserver `TestCostEstimation`).
#[test]
fn the_checker_refuses_what_the_api_server_refuses_and_costs_as_it_does() {
    use serde_json::json;
    let ty = |schema: Value| apiserver::type_of(&schema).expect("typed");
    let untyped = ty(json!({"type": "object", "properties": {
        "anyval": {"x-kubernetes-preserve-unknown-fields": true},
        "anymap": {"type": "object", "maxProperties": 4, "additionalProperties": {"x-kubernetes-preserve-unknown-fields": true}},
        "anylist": {"type": "array", "maxItems": 4, "items": {"x-kubernetes-preserve-unknown-fields": true}},
        "typed": {"type": "integer"},
    }}));
    for (rule, field) in [
        ("has(self.anyval)", "anyval"),
        ("double(self.anyval) > 1.0", "anyval"),
        ("'k' in self.anymap", "anymap"),
        ("self.anylist.all(x, true)", "anylist"),
    ] {
        let err = apiserver::check(rule, &untyped).expect_err(rule);
        assert_eq!(err, format!("undefined field '{field}'"), "{rule}");
    }
    assert!(apiserver::check("self.typed > 1", &untyped).is_ok());

    let ints = |max: Option<u64>| {
        let mut s = json!({"type": "array", "items": {"type": "integer"}});
        if let Some(m) = max {
            s["maxItems"] = m.into();
        }
        ty(s)
    };
    assert_eq!(apiserver::check("self.all(x, true)", &ints(Some(10))), Ok(32));
    assert_eq!(apiserver::check("self.all(x, self.all(y, true))", &ints(Some(10))), Ok(352));
    assert_eq!(apiserver::check("self.all(x, true)", &ints(None)), Ok(4_718_591));
    let strings = ty(json!({"type": "object", "properties": {
        "bounded": {"type": "string", "maxLength": 10},
        "unbounded": {"type": "string"},
        "kind": {"type": "string", "enum": ["Coil", "HoldingRegister"]},
    }}));
    // String equality costs a tenth of the smaller side's largest size in bytes (maxLength × 4).
    assert_eq!(apiserver::check("self.bounded == self.bounded", &strings), Ok(4 + 4));
    assert_eq!(apiserver::check("self.unbounded == self.unbounded", &strings), Ok(4 + 314_573));
    assert_eq!(apiserver::check("self.kind == 'Coil'", &strings), Ok(2 + 1));
    // A rule on the items of an unbounded list runs as often as items fit in a request.
    let list = json!({"type": "array", "items": {"type": "object", "properties": {}}});
    assert_eq!(apiserver::cardinality(&[&list], &ty(json!({"type": "object"}))), 1_048_576);
    let bounded = json!({"type": "array", "maxItems": 64, "items": {"type": "object"}});
    assert_eq!(apiserver::cardinality(&[&bounded, &bounded], &ty(json!({"type": "object"}))), 4096);
}
