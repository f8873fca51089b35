//! A request the user's RBAC refuses (403), explained: which verb on which resource in which
//! namespace, and the rule that would allow it — instead of the API server's raw response.

/// What a 403's message says was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub group: String,
    pub namespace: Option<String>,
}

fn quoted_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// Reads the API server's standard message: `… is forbidden: User "u" cannot <verb> resource
/// "<resource>" in API group "<group>" [in the namespace "<ns>"]`.
pub fn parse(message: &str) -> Option<Refused> {
    let user = quoted_after(message, "User ").unwrap_or("this user").to_owned();
    let after = &message[message.find(" cannot ")? + 8..];
    let verb = after.split_whitespace().next()?.to_owned();
    Some(Refused {
        user,
        verb,
        resource: quoted_after(message, "resource ")?.to_owned(),
        group: quoted_after(message, "API group ").unwrap_or_default().to_owned(),
        namespace: quoted_after(message, "in the namespace ").map(str::to_owned),
    })
}

/// The explanation of a 403 with `message`.
pub fn explain(message: &str) -> String {
    let Some(r) = parse(message) else {
        return format!("forbidden by the cluster's RBAC: {message}");
    };
    let group = if r.group.is_empty() { "\"\"".to_owned() } else { r.group.clone() };
    let (scope, kind) = match &r.namespace {
        Some(ns) => (format!("in namespace {ns}"), format!("a Role in {ns}")),
        None => ("cluster-wide".to_owned(), "a ClusterRole".to_owned()),
    };
    format!(
        "forbidden: {} may not `{}` {} ({}) {scope}. Ask a cluster admin for {kind} with the rule \
         {{apiGroups: [{group}], resources: [{}], verbs: [{}]}} bound to {} (docs/rbac.md lists what each \
         plugin command needs).",
        r.user, r.verb, r.resource, group, r.resource, r.verb, r.user
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_names_the_verb_the_resource_the_namespace_and_the_rule() {
        let m = r#"controlcommands.shopfloor.io is forbidden: User "alice" cannot create resource "controlcommands" in API group "shopfloor.io" in the namespace "plant-a""#;
        assert_eq!(
            parse(m),
            Some(Refused {
                user: "alice".into(),
                verb: "create".into(),
                resource: "controlcommands".into(),
                group: "shopfloor.io".into(),
                namespace: Some("plant-a".into()),
            })
        );
        let text = explain(m);
        for want in
            ["alice may not `create` controlcommands", "in namespace plant-a", "a Role in plant-a", "verbs: [create]"]
        {
            assert!(text.contains(want), "{want}: {text}");
        }
        let secrets = r#"secrets "shopfloor-token-x" is forbidden: User "system:serviceaccount:a:b" cannot get resource "secrets" in API group "" in the namespace "shopfloor-system""#;
        assert!(
            explain(secrets).contains("apiGroups: [\"\"], resources: [secrets], verbs: [get]"),
            "{}",
            explain(secrets)
        );
        assert!(explain("something else").starts_with("forbidden by the cluster's RBAC"));
    }
}
