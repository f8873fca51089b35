//! EdgeAgent rules.

use super::*;

pub(super) fn edge_agent_spec_rules(spec: &EdgeAgentSpec) -> Violations {
    let mut v = Violations::default();
    let site_ok = !spec.site.is_empty()
        && spec.site.len() <= 128
        && spec.site.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-./".contains(&b))
        && spec.site.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && spec.site.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !site_ok {
        v.push(
            "spec.site",
            format!(
                "`{}` is not a site: use lower-case letters, digits, '-', '.' and '/', e.g. `plant-a/line-1`",
                spec.site
            ),
        );
    }
    let cert = &spec.certificate;
    v.duration_between("spec.certificate.duration", &cert.duration, SECS(600), None);
    if cert.renew_before >= cert.duration {
        v.push(
            "spec.certificate.renewBefore",
            format!("is {} but must be shorter than spec.certificate.duration ({})", cert.renew_before, cert.duration),
        );
    }
    let hb = &spec.heartbeat;
    v.duration_between("spec.heartbeat.interval", &hb.interval, MS(100), None);
    v.duration_between("spec.heartbeat.timeout", &hb.timeout, MS(100), Some(crate::edge_agent::MAX_HEARTBEAT_TIMEOUT));
    if hb.interval >= hb.timeout {
        v.push(
            "spec.heartbeat.interval",
            format!("is {} but must be shorter than spec.heartbeat.timeout ({})", hb.interval, hb.timeout),
        );
    }
    v
}
