//! The published JSON Schemas match the types. Regenerate with
//! `KRILL_UPDATE_SCHEMA=1 cargo test -p broker --test schema`.

use std::path::PathBuf;

#[test]
fn published_schemas_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema");
    let update = std::env::var_os("KRILL_UPDATE_SCHEMA").is_some();
    for (name, text) in broker::schema::schemas() {
        let path = dir.join(name);
        if update {
            std::fs::create_dir_all(&dir).expect("schema dir");
            std::fs::write(&path, &text).expect("write schema");
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "{} is out of date with the types: run `KRILL_UPDATE_SCHEMA=1 cargo test -p broker --test schema` and commit it",
            path.display()
        );
    }
}

#[test]
fn the_smallest_task_validates_against_the_schema_shape() {
    // The schema says only version, id and script are required.
    let (_, task) = broker::schema::schemas()
        .into_iter()
        .next()
        .expect("task schema");
    let v: serde_json::Value = serde_json::from_str(&task).expect("json");
    let mut required: Vec<&str> = v["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    required.sort();
    assert_eq!(required, ["id", "script", "version"]);
    assert_eq!(
        v["additionalProperties"], false,
        "unknown fields must be rejected"
    );
}

#[test]
fn the_schema_takes_network_as_a_switch_or_an_allow_list() {
    let (_, task) = broker::schema::schemas()
        .into_iter()
        .next()
        .expect("task schema");
    let v: serde_json::Value = serde_json::from_str(&task).expect("json");
    let network = &v["$defs"]["Network"]["anyOf"];
    let kinds: Vec<String> = network
        .as_array()
        .expect("anyOf")
        .iter()
        .map(|f| {
            f["type"]
                .as_str()
                .or(f["$ref"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["boolean", "#/$defs/NetworkAllow"], "{network}");
    let allow = &v["$defs"]["NetworkAllow"];
    assert_eq!(allow["required"], serde_json::json!(["allow"]), "{allow}");
    assert_eq!(
        allow["additionalProperties"],
        serde_json::json!(false),
        "{allow}"
    );
    assert_eq!(
        allow["properties"]["allow"]["items"]["type"], "string",
        "{allow}"
    );
}
