//! JSON Schemas of the wire messages, generated from the types (`broker/schema/*.json`
//! are these, checked by a test so they never drift from the code).

use schemars::schema_for;

use crate::protocol::{
    Control, Heartbeat, KeyAnnounce, LineRecord, LogChunk, TaskEvent, TaskResult,
};

/// `(file name, pretty JSON)` for every wire message.
pub fn schemas() -> Vec<(&'static str, String)> {
    let render = |v: schemars::Schema| {
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    };
    vec![
        (
            "task.schema.json",
            render(schema_for!(crate::protocol::Task)),
        ),
        ("result.schema.json", render(schema_for!(TaskResult))),
        ("log-chunk.schema.json", render(schema_for!(LogChunk))),
        ("task-event.schema.json", render(schema_for!(TaskEvent))),
        ("heartbeat.schema.json", render(schema_for!(Heartbeat))),
        ("control.schema.json", render(schema_for!(Control))),
        ("key-announce.schema.json", render(schema_for!(KeyAnnounce))),
        ("line-record.schema.json", render(schema_for!(LineRecord))),
    ]
}
