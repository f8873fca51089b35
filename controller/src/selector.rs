//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), evaluated in memory: which
//! EdgeAgents a NetworkSlice selects.

use std::collections::BTreeMap;

use shopfloor_api::common::LabelSelector;

/// A selector that cannot be evaluated, e.g. an unknown operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything, as in
/// Kubernetes' `LabelSelectorAsSelector`.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("spec.agentSelector.matchExpressions[{i}]");
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        let ok = match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError { field, message: format!("{} needs at least one value", expr.operator) });
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorError { field, message: format!("{} takes no values", expr.operator) });
            }
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                return Err(SelectorError {
                    field: format!("{field}.operator"),
                    message: format!("`{other}` is not an operator: use In, NotIn, Exists or DoesNotExist"),
                });
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_api::common::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() { None } else { Some(values.iter().map(|v| (*v).to_owned()).collect()) },
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        assert_eq!(matches(&LabelSelector::default(), &labels(&[])), Ok(true));
    }

    #[test]
    fn match_labels_and_expressions_combine_with_and() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("traffic", "control")])),
            match_expressions: Some(vec![expr("line", "In", &["1", "2"]), expr("retired", "DoesNotExist", &[])]),
        };
        assert_eq!(matches(&sel, &labels(&[("traffic", "control"), ("line", "2")])), Ok(true));
        assert_eq!(matches(&sel, &labels(&[("traffic", "control"), ("line", "3")])), Ok(false));
        assert_eq!(matches(&sel, &labels(&[("traffic", "video"), ("line", "1")])), Ok(false));
        assert_eq!(matches(&sel, &labels(&[("traffic", "control"), ("line", "1"), ("retired", "")])), Ok(false));
    }

    #[test]
    fn not_in_matches_missing_keys_like_kubernetes() {
        let sel = LabelSelector { match_expressions: Some(vec![expr("zone", "NotIn", &["a"])]), ..Default::default() };
        assert_eq!(matches(&sel, &labels(&[])), Ok(true));
        assert_eq!(matches(&sel, &labels(&[("zone", "a")])), Ok(false));
    }

    #[test]
    fn malformed_expressions_are_errors_with_the_field() {
        let sel = LabelSelector { match_expressions: Some(vec![expr("zone", "Near", &["a"])]), ..Default::default() };
        let err = matches(&sel, &labels(&[])).expect_err("unknown operator");
        assert_eq!(err.field, "spec.agentSelector.matchExpressions[0].operator");
        let sel = LabelSelector { match_expressions: Some(vec![expr("zone", "In", &[])]), ..Default::default() };
        assert!(matches(&sel, &labels(&[])).is_err());
    }
}
