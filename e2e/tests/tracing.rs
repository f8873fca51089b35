//! An SRE traces a command end to end: the controller and the agent (real processes) export
//! their spans over OTLP/HTTP to a collector — here an in-process OTLP receiver — and the spans
//! chain in the command's trace: command (controller) → dispatch (controller) → execute (agent)
//! → run (agent).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value,
    trace::v1::Span,
};
use prost::Message;
use shopfloor_e2e::{
    fixtures,
    harness::{Scenario, eventually},
};

/// Spans received, with the service that sent them.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

async fn receive(State(received): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP/protobuf export request");
    let mut received = received.lock().expect("lock");
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push((service.clone(), span));
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

#[test]
fn a_command_is_traced_from_the_controller_through_the_agent() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let received = Received::default();
    let collector = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/v1/traces", post(receive)).with_state(received.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });

    let s = Scenario::new();
    s.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{collector}"));
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    std::fs::write(s.path("plant/plant.yaml"), fixtures::ROBOT_CELL).expect("plant");
    s.controller();
    s.enroll("line-1");
    s.agent("line-1");
    eventually("agent connected", Duration::from_secs(30), || {
        (s.status("edgeagents", "line-1")["phase"] == "Connected").then_some(())
    });
    std::fs::write(s.path("plant/command.yaml"), fixtures::robot_command("traced", "30s")).expect("command");
    let trace_id = eventually("the command succeeded", Duration::from_secs(30), || {
        let st = s.status("controlcommands", "traced");
        (st["phase"] == "Succeeded").then(|| st["traceId"].as_str().map(str::to_owned)).flatten()
    });

    let spans = eventually("the spans of both processes reached the collector", Duration::from_secs(20), || {
        let got: Vec<(String, Span)> =
            received.lock().expect("lock").iter().filter(|(_, sp)| hex(&sp.trace_id) == trace_id).cloned().collect();
        let names: Vec<&str> = got.iter().map(|(_, sp)| sp.name.as_str()).collect();
        ["command robot/write", "dispatch to line-1", "execute robot/write", "run write"]
            .iter()
            .all(|n| names.contains(n))
            .then_some(got)
    });
    let by_name: HashMap<&str, &(String, Span)> = spans.iter().map(|x| (x.1.name.as_str(), x)).collect();
    let (root_service, root) = by_name["command robot/write"];
    let (dispatch_service, dispatch) = by_name["dispatch to line-1"];
    let (execute_service, execute) = by_name["execute robot/write"];
    let (_, run) = by_name["run write"];
    assert_eq!(root_service, "shopfloor-controller");
    assert_eq!(dispatch_service, "shopfloor-controller");
    assert_eq!(execute_service, "shopfloor-agent");
    assert!(root.parent_span_id.is_empty(), "the command's span is the trace's root");
    assert_eq!(dispatch.parent_span_id, root.span_id, "dispatch is a child of the command");
    assert_eq!(execute.parent_span_id, dispatch.span_id, "the agent's span hangs under the dispatch");
    assert_eq!(run.parent_span_id, execute.span_id);
    // The agent's work sits inside the dispatch, which sits inside the command.
    assert!(root.start_time_unix_nano <= dispatch.start_time_unix_nano);
    assert!(dispatch.start_time_unix_nano <= execute.start_time_unix_nano);
    assert!(execute.end_time_unix_nano <= dispatch.end_time_unix_nano);
    assert!(dispatch.end_time_unix_nano <= root.end_time_unix_nano);
    let attr = |sp: &Span, key: &str| {
        sp.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.clone())
    };
    assert_eq!(attr(root, "shopfloor.result"), Some(Value::StringValue("Ok".into())));
    assert_eq!(attr(root, "shopfloor.command"), Some(Value::StringValue("plant-a/traced".into())));
    assert!(matches!(attr(root, "shopfloor.latency.total_us"), Some(Value::IntValue(us)) if us > 0));
    assert_eq!(attr(execute, "shopfloor.replayed"), Some(Value::BoolValue(false)));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
