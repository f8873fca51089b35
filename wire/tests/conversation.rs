//! The protocol conversation in memory: both ends' state machines talk to each other through
//! plain values, no socket and no clock, including messages out of order and repeated.

use shopfloor_wire::{
    close_code,
    conversation::{
        agent::{self, AgentSide, Introduction},
        command::{Answer, Call, Reply},
        controller::{self, ControllerSide, Now, Terms},
    },
    proto::{
        AgentMessage, ApplyConfig, Command, CommandReply, CommandResult, ConfigApplied, ControllerMessage, Hello,
        RenewResponse, ResultCode, agent_message, command_reply, controller_message,
    },
};

fn terms() -> Terms {
    Terms {
        heartbeat_interval_ms: 1000,
        heartbeat_timeout_ms: 5000,
        renew_before_secs: 3600,
        controller_replica: "replica-a".into(),
    }
}

fn me(held: Option<&str>) -> Introduction {
    Introduction {
        agent_version: "0.1.0".into(),
        boot_id: "b00t".into(),
        held_revision: held.map(str::to_owned),
        envelope_sha256: Some("e3b0".into()),
        envelope_problem: None,
    }
}

const NOW: Now = Now { unix_micros: 1_000_000, rtt_micros: 2_000 };

/// The one message to send among `events`.
fn sent(events: &[controller::Event]) -> ControllerMessage {
    let mut sends = events.iter().filter_map(|e| match e {
        controller::Event::Send(m) => Some(m.clone()),
        _ => None,
    });
    let m = sends.next().expect("a message to send");
    assert!(sends.next().is_none(), "one message to send: {events:?}");
    m
}

/// Both ends through Hello and Welcome; the agent's Hello was sent at 990 ms on its clock.
fn established(held: Option<&str>) -> (AgentSide, ControllerSide) {
    let (mut agent, hello) = AgentSide::hello(me(held), 990_000);
    let mut controller = ControllerSide::new(terms());
    let events = controller.on_message(hello, NOW).expect("Hello accepted");
    let greeting = events
        .iter()
        .find_map(|e| match e {
            controller::Event::Established(g) => Some(g.clone()),
            _ => None,
        })
        .expect("established");
    assert_eq!(greeting.protocol_version, 1);
    assert_eq!(greeting.held_revision.as_deref(), held);
    assert_eq!(greeting.envelope_sha256.as_deref(), Some("e3b0"));
    assert_eq!(greeting.envelope_problem, None);
    // Sent at 990 ms, arrived at 1000 ms, half of a 2 ms round trip in flight: 9 ms behind.
    assert_eq!(greeting.clock_offset_micros, Some(990_000 + 1_000 - 1_000_000));
    match agent.on_message(sent(&events), 1_004_000).expect("Welcome accepted") {
        agent::Event::Welcomed { welcome, hello_sent_unix_micros, received_unix_micros } => {
            assert_eq!(welcome.protocol_version, 1);
            assert_eq!(welcome.hello_received_unix_micros, 1_000_000);
            assert_eq!(welcome.renew_before_secs, 3600);
            assert_eq!(welcome.controller_replica, "replica-a");
            assert_eq!((hello_sent_unix_micros, received_unix_micros), (990_000, 1_004_000));
        }
        other => panic!("expected a Welcome, got {other:?}"),
    }
    assert!(agent.is_established() && controller.is_established());
    (agent, controller)
}

fn config(revision: &str) -> ApplyConfig {
    ApplyConfig { revision: revision.into(), ..Default::default() }
}

fn applied(revision: &str) -> ConfigApplied {
    ConfigApplied { revision: revision.into(), ..Default::default() }
}

fn agent_msg(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

#[test]
fn the_handshake_agrees_on_a_version_and_measures_the_clocks() {
    established(Some("rev-a"));
    established(None);
}

#[test]
fn a_hello_without_a_common_version_is_refused_with_the_versions_named() {
    let mut controller = ControllerSide::new(terms());
    let hello = Hello { protocol_versions: vec![7, 9], ..Default::default() };
    let v = controller.on_message(agent_msg(agent_message::Body::Hello(hello)), NOW).expect_err("refused");
    assert_eq!(v.code, close_code::UNSUPPORTED_VERSION);
    assert!(v.reason.contains("[1]") && v.reason.contains("[7, 9]"), "{v}");
    assert!(!controller.is_established());
}

#[test]
fn anything_before_the_hello_is_a_protocol_violation() {
    for body in [
        agent_message::Body::ConfigApplied(applied("x")),
        agent_message::Body::Renew(Default::default()),
        agent_message::Body::Goodbye(Default::default()),
        agent_message::Body::Enroll(Default::default()),
    ] {
        let mut controller = ControllerSide::new(terms());
        let v = controller.on_message(agent_msg(body), NOW).expect_err("violation");
        assert_eq!(v.code, close_code::PROTOCOL_VIOLATION);
        assert!(v.reason.contains("first frame must be Hello"), "{v}");
    }
    // Nothing can be pushed to an agent that has not said Hello.
    assert!(ControllerSide::new(terms()).push(config("a")).is_none());
}

#[test]
fn a_second_hello_or_an_enrollment_in_a_session_is_a_violation() {
    let (_, mut controller) = established(None);
    let hello = agent_msg(agent_message::Body::Hello(Hello { protocol_versions: vec![1], ..Default::default() }));
    let v = controller.on_message(hello, NOW).expect_err("violation");
    assert!(v.reason.contains("Hello in an established session"), "{v}");
    let (_, mut controller) = established(None);
    let v = controller.on_message(agent_msg(agent_message::Body::Enroll(Default::default())), NOW).expect_err("x");
    assert!(v.reason.contains("EnrollRequest"), "{v}");
}

#[test]
fn the_agent_refuses_a_controller_that_does_not_welcome_it_first() {
    let (mut agent, _) = AgentSide::hello(me(None), 0);
    let apply = ControllerMessage { body: Some(controller_message::Body::ApplyConfig(config("a"))) };
    let v = agent.on_message(apply, 0).expect_err("violation");
    assert!(v.reason.contains("first frame must be Welcome, not ApplyConfig"), "{v}");

    // A Goodbye instead of a Welcome is a refusal, not a violation.
    let (mut agent, _) = AgentSide::hello(me(None), 0);
    let mut controller = ControllerSide::new(terms());
    let bye = controller.goodbye("EdgeAgent plant/line-1 is suspended").expect("goodbye");
    assert_eq!(agent.on_message(bye, 0), Ok(agent::Event::Refused("EdgeAgent plant/line-1 is suspended".into())));

    // A second Welcome in a session is.
    let (mut agent, _) = established(None);
    let welcome = ControllerMessage { body: Some(controller_message::Body::Welcome(Default::default())) };
    assert!(agent.on_message(welcome, 0).is_err());
}

#[test]
fn configurations_flow_and_a_late_config_applied_is_ignored() {
    let (mut agent, mut controller) = established(Some("rev-0"));
    let push_a = controller.push(config("rev-a")).expect("pushed");
    let push_b = controller.push(config("rev-b")).expect("pushed");
    for (push, rev) in [(push_a, "rev-a"), (push_b, "rev-b")] {
        assert_eq!(agent.on_message(push, 0), Ok(agent::Event::Apply(config(rev))));
    }
    // The agent reports b, then (late, on a retry of a) reports a: a is stale and ignored.
    let report_b = agent.applied(applied("rev-b")).expect("in session");
    assert_eq!(controller.on_message(report_b.clone(), NOW), Ok(vec![controller::Event::Applied(applied("rev-b"))]));
    let stale = controller.on_message(agent.applied(applied("rev-a")).expect("x"), NOW).expect("not a violation");
    assert!(matches!(&stale[..], [controller::Event::Ignored(why)] if why.contains("older")), "{stale:?}");
    // The same revision again (a retry after failed properties) is news: it carries results.
    assert_eq!(controller.on_message(report_b, NOW), Ok(vec![controller::Event::Applied(applied("rev-b"))]));
    // A revision never sent is not recorded.
    let made_up = controller.on_message(agent.applied(applied("rev-x")).expect("x"), NOW).expect("x");
    assert!(matches!(&made_up[..], [controller::Event::Ignored(why)] if why.contains("never sent")), "{made_up:?}");
    // The revision held at Hello may be reported (an autonomous re-apply) until a newer one is.
    let (agent, mut controller) = established(Some("rev-0"));
    let held = controller.on_message(agent.applied(applied("rev-0")).expect("x"), NOW).expect("x");
    assert_eq!(held, vec![controller::Event::Applied(applied("rev-0"))]);
}

#[test]
fn only_recent_revisions_are_remembered_and_order_survives_the_trim() {
    let (_, mut controller) = established(None);
    for i in 0..40 {
        controller.push(config(&format!("rev-{i}"))).expect("pushed");
    }
    let report =
        |c: &mut ControllerSide, r: &str| c.on_message(agent_msg(agent_message::Body::ConfigApplied(applied(r))), NOW);
    assert!(matches!(&report(&mut controller, "rev-3").expect("x")[..], [controller::Event::Ignored(_)]));
    assert!(matches!(&report(&mut controller, "rev-39").expect("x")[..], [controller::Event::Applied(_)]));
    for i in 40..50 {
        controller.push(config(&format!("rev-{i}"))).expect("pushed");
    }
    // rev-39 is still remembered as applied: rev-38, older, stays stale after the trim.
    assert!(
        matches!(&report(&mut controller, "rev-38").expect("x")[..], [controller::Event::Ignored(w)] if w.contains("older"))
    );
    assert!(matches!(&report(&mut controller, "rev-49").expect("x")[..], [controller::Event::Applied(_)]));
}

#[test]
fn renewal_is_asked_once_answered_once_and_not_again_after_success() {
    let (mut agent, mut controller) = established(None);
    let not_after = 10_000;
    assert!(!agent.renewal_due(0, not_after), "outside the window");
    assert!(agent.renewal_due(not_after - 3600, not_after));
    let ask = agent.renew(vec![1, 2, 3]).expect("asked");
    assert!(agent.renew(vec![4]).is_none(), "one renewal at a time");
    assert!(!agent.renewal_due(not_after - 10, not_after), "already asked");
    assert_eq!(controller.on_message(ask.clone(), NOW), Ok(vec![controller::Event::RenewalRequested(vec![1, 2, 3])]));
    let again = controller.on_message(ask, NOW).expect("a repeat is not a violation");
    assert!(matches!(&again[..], [controller::Event::Ignored(w)] if w.contains("second RenewRequest")));
    // A refusal lets the agent ask again; a success ends renewing for this session.
    let refused = controller.renewed(RenewResponse { error: "CA unavailable".into(), ..Default::default() });
    assert!(controller.renewed(RenewResponse::default()).is_none(), "answered once");
    assert!(
        matches!(agent.on_message(refused.expect("answer"), 0), Ok(agent::Event::Renewed(r)) if !r.error.is_empty())
    );
    assert!(agent.renewal_due(not_after - 10, not_after), "a refused renewal is asked again");
    let ask = agent.renew(vec![5]).expect("asked again");
    controller.on_message(ask, NOW).expect("x");
    let granted = controller.renewed(RenewResponse { certificate_der: vec![9], error: String::new() }).expect("x");
    assert!(matches!(agent.on_message(granted, 0), Ok(agent::Event::Renewed(_))));
    assert!(!agent.renewal_due(not_after - 10, not_after), "renewed: the new certificate serves the next connection");
    // An answer nobody asked for is ignored.
    let stray = ControllerMessage { body: Some(controller_message::Body::Renewed(RenewResponse::default())) };
    assert!(matches!(agent.on_message(stray, 0), Ok(agent::Event::Ignored(_))));
}

#[test]
fn goodbye_ends_the_session_on_both_sides_and_later_messages_are_ignored() {
    let (mut agent, mut controller) = established(None);
    let bye = agent.goodbye("shutting down").expect("bye");
    assert!(agent.goodbye("again").is_none(), "one goodbye");
    assert!(agent.applied(applied("a")).is_none(), "nothing after goodbye");
    let events = controller.on_message(bye, NOW).expect("x");
    assert_eq!(events, vec![controller::Event::Ended("agent said goodbye: shutting down".into())]);
    assert!(controller.push(config("a")).is_none(), "nothing is pushed to an ended session");
    let late = controller.on_message(agent_msg(agent_message::Body::ConfigApplied(applied("a"))), NOW).expect("x");
    assert!(matches!(&late[..], [controller::Event::Ignored(w)] if w.contains("after the session ended")));

    let (mut agent, mut controller) = established(None);
    let bye = controller.goodbye("EdgeAgent deleted").expect("bye");
    assert_eq!(agent.on_message(bye, 0), Ok(agent::Event::Ended("goodbye: EdgeAgent deleted".into())));
    let late = ControllerMessage { body: Some(controller_message::Body::ApplyConfig(config("a"))) };
    assert!(matches!(agent.on_message(late, 0), Ok(agent::Event::Ignored(_))));
}

#[test]
fn an_unknown_message_type_is_ignored_not_fatal() {
    let (mut agent, mut controller) = established(None);
    assert!(matches!(
        &controller.on_message(AgentMessage { body: None }, NOW).expect("x")[..],
        [controller::Event::Ignored(_)]
    ));
    assert!(matches!(agent.on_message(ControllerMessage { body: None }, 0), Ok(agent::Event::Ignored(_))));
    assert!(agent.is_established() && controller.is_established());
}

fn command(id: &str, deadline: i64) -> Command {
    Command {
        id: id.into(),
        equipment: "press".into(),
        action: "start".into(),
        deadline_unix_micros: deadline,
        ..Default::default()
    }
}

fn result(code: ResultCode) -> CommandResult {
    CommandResult { code: code as i32, finished_unix_micros: 5, ..Default::default() }
}

#[test]
fn a_command_goes_out_with_its_budget_and_comes_back_acknowledged_then_finished() {
    let call = Call::new(command("c-1", 1_500_000));
    let wire = call.send(1_000_000);
    assert_eq!(wire.budget_micros, 500_000, "time left at the moment of sending");
    assert_eq!(call.send(2_000_000).budget_micros, -1, "past the deadline: a budget the agent never executes");

    let mut call = Call::new(command("c-1", 1_500_000));
    let mut answer = Answer::new(&wire);
    let ack = answer.ack(1_000_100).expect("ack");
    assert!(answer.ack(1_000_200).is_none(), "one ack");
    assert_eq!(call.on_reply(ack.clone()), Ok(Some(Reply::Acknowledged)));
    assert_eq!(call.on_reply(ack), Ok(None), "a repeated ack adds nothing");
    let done = answer.finish(result(ResultCode::Ok)).expect("result");
    assert!(answer.finish(result(ResultCode::Internal)).is_none(), "one result");
    match call.on_reply(done.clone()) {
        Ok(Some(Reply::Finished(r))) => assert_eq!((r.id.as_str(), r.code()), ("c-1", ResultCode::Ok)),
        other => panic!("expected the result, got {other:?}"),
    }
    assert!(call.is_finished());
    assert_eq!(call.on_reply(done), Ok(None), "nothing after the result");
}

#[test]
fn a_result_without_an_ack_finishes_and_a_reply_for_another_command_is_a_violation() {
    let mut call = Call::new(command("c-1", 0));
    let mut answer = Answer::new(&command("c-1", 0));
    let done = answer.finish(result(ResultCode::DeadlineExceeded)).expect("result");
    assert!(answer.ack(0).is_none(), "no ack after the result");
    assert!(matches!(call.on_reply(done), Ok(Some(Reply::Finished(_)))));

    let mut call = Call::new(command("c-1", 0));
    let foreign = CommandReply {
        body: Some(command_reply::Body::Result(CommandResult { id: "c-2".into(), ..Default::default() })),
    };
    let v = call.on_reply(foreign).expect_err("violation");
    assert_eq!(v.code, close_code::PROTOCOL_VIOLATION);
    assert!(v.reason.contains("c-2") && v.reason.contains("c-1"), "{v}");
    assert!(!call.is_finished());
}
