//! What kube-apiserver (1.30–1.33) does with a CRD's `x-kubernetes-validations` before it
//! accepts the CRD, reproduced offline: the schema becomes a CEL type (a field with no `type`, a
//! list whose items have none and a map whose values have none are dropped, so a rule naming
//! them fails with `undefined field`), and every rule's cost is estimated the way cel-go's
//! estimator does it, multiplied by how many times the rule can run (the product of the
//! enclosing `maxItems`/`maxProperties`) and held against the per-rule and per-CRD budgets.
//!
//! Sources: k8s.io/apiserver `pkg/cel/common/schemas.go` (types and size estimates),
//! apiextensions-apiserver `validation.go` (cardinality, limits), cel-go `checker/cost.go` and
//! k8s `pkg/cel/library/cost.go` (costs). Only what Shopfloor's rules use is modelled; a
//! function this does not know is an error, so a new rule cannot slip past unchecked.

use std::collections::BTreeMap;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use serde_json::Value;

/// Largest request the API server takes; unbounded sizes are derived from it.
const MAX_REQUEST: u64 = 3 * 1024 * 1024;
/// `StaticEstimatedCostLimit`: one rule, times its cardinality.
pub const RULE_LIMIT: u64 = 10_000_000;
/// `StaticEstimatedCRDCostLimit`: all rules of one version's schema.
pub const CRD_LIMIT: u64 = 100_000_000;

/// A schema node as CEL sees it.
#[derive(Clone, Debug)]
pub enum Ty {
    Object(BTreeMap<String, Ty>, u64),
    List(Box<Ty>, u64),
    Map(Box<Ty>, u64),
    /// A string, with its largest size in bytes.
    Str(u64),
    Int,
    Double,
    Bool,
    Duration,
    Timestamp,
    /// A value the checker gives up typing (accumulators, int-or-string).
    Dyn(u64),
}

impl Ty {
    /// The size the cost estimator uses: bytes of a string, items of a list or map.
    fn size(&self) -> u64 {
        match self {
            Ty::Str(n) | Ty::Dyn(n) => *n,
            Ty::List(_, n) | Ty::Map(_, n) => *n,
            Ty::Duration | Ty::Timestamp => 32,
            _ => 0,
        }
    }

    /// Smallest serialized size, which bounds how many fit in a request.
    fn min_size(&self) -> u64 {
        match self {
            Ty::Str(_) => 2,
            Ty::Bool => 4,
            Ty::Int | Ty::Double | Ty::Dyn(_) => 1,
            Ty::Duration => 3,
            Ty::Timestamp => 21,
            Ty::List(..) | Ty::Map(..) => 2,
            Ty::Object(_, min) => *min,
        }
    }
}

/// The CEL type of a schema node; `None` where the API server drops the node.
pub fn type_of(node: &Value) -> Option<Ty> {
    if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return Some(Ty::Dyn(MAX_REQUEST - 2));
    }
    let max = |k: &str| node.get(k).and_then(Value::as_u64);
    match node.get("type").and_then(Value::as_str)? {
        "object" => {
            if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
                let v = type_of(values)?;
                let n = max("maxProperties").unwrap_or((MAX_REQUEST - 2) / (v.min_size() + 6));
                return Some(Ty::Map(Box::new(v), n));
            }
            let required: Vec<&str> =
                node["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let mut fields = BTreeMap::new();
            let mut min = 2;
            for (name, prop) in node.get("properties").and_then(Value::as_object).into_iter().flatten() {
                if let Some(t) = type_of(prop) {
                    if required.contains(&name.as_str()) && prop.get("default").is_none() {
                        min += name.len() as u64 + t.min_size() + 4;
                    }
                    fields.insert(name.clone(), t);
                }
            }
            Some(Ty::Object(fields, min))
        }
        "array" => {
            let item = type_of(node.get("items")?)?;
            let n = max("maxItems").unwrap_or((MAX_REQUEST - 2) / (item.min_size() + 1));
            Some(Ty::List(Box::new(item), n))
        }
        "string" => Some(match node.get("format").and_then(Value::as_str) {
            Some("duration") => Ty::Duration,
            Some("date") | Some("date-time") => Ty::Timestamp,
            _ => Ty::Str(match (max("maxLength"), node.get("enum").and_then(Value::as_array)) {
                (Some(n), _) => n * 4,
                (None, Some(values)) => {
                    values.iter().filter_map(Value::as_str).map(|s| s.len() as u64).max().unwrap_or(0)
                }
                (None, None) => MAX_REQUEST - 2,
            }),
        }),
        "integer" => Some(Ty::Int),
        "number" => Some(Ty::Double),
        "boolean" => Some(Ty::Bool),
        _ => None,
    }
}

/// How many times a rule on a node below these ancestors can run: the product of their
/// `maxItems`/`maxProperties`, or, under any unbounded one, what fits in a request.
pub fn cardinality(ancestors: &[&Value], node: &Ty) -> u64 {
    let mut product: u64 = 1;
    for a in ancestors {
        let bound = match a["type"].as_str() {
            Some("array") => a.get("maxItems").map(Value::as_u64),
            Some("object") if a.get("additionalProperties").is_some() => a.get("maxProperties").map(Value::as_u64),
            _ => Some(Some(1)),
        };
        match bound {
            Some(Some(n)) => product = product.saturating_mul(n),
            _ => return MAX_REQUEST / (node.min_size() + 1),
        }
    }
    product
}

/// A rule that fails to compile, or its estimated cost.
pub fn check(rule: &str, this: &Ty) -> Result<u64, String> {
    let ast = cel::parser::Parser::new().parse(rule).map_err(|e| format!("does not parse: {e:?}"))?;
    let mut scope = vec![("self".to_owned(), this.clone()), ("oldSelf".to_owned(), this.clone())];
    let (ty, cost) = walk(&ast, &mut scope)?;
    if !matches!(ty, Ty::Bool | Ty::Dyn(_)) {
        return Err("cel expression must evaluate to a bool".into());
    }
    Ok(cost)
}

fn ceil_tenth(n: u64) -> u64 {
    n.div_ceil(10)
}

fn literal_ty(l: &LiteralValue) -> Ty {
    match l {
        LiteralValue::String(s) => Ty::Str(s.inner().chars().count() as u64),
        LiteralValue::Int(_) | LiteralValue::UInt(_) => Ty::Int,
        LiteralValue::Double(_) => Ty::Double,
        LiteralValue::Boolean(_) => Ty::Bool,
        _ => Ty::Dyn(1),
    }
}

/// The type and estimated cost of `e`.
fn walk(e: &IdedExpr, scope: &mut Vec<(String, Ty)>) -> Result<(Ty, u64), String> {
    match &e.expr {
        Expr::Literal(l) => Ok((literal_ty(l), 0)),
        Expr::Ident(name) => {
            let ty = scope.iter().rev().find(|(n, _)| n == name).map(|(_, t)| t.clone());
            ty.map(|t| (t, 1)).ok_or_else(|| format!("undeclared reference to '{name}'"))
        }
        Expr::Select(s) => {
            let (operand, cost) = walk(&s.operand, scope)?;
            let field = match &operand {
                Ty::Object(fields, _) => {
                    fields.get(&s.field).cloned().ok_or_else(|| format!("undefined field '{}'", s.field))?
                }
                Ty::Map(v, _) => (**v).clone(),
                Ty::Dyn(_) => Ty::Dyn(MAX_REQUEST),
                other => return Err(format!("cannot select '{}' from {other:?}", s.field)),
            };
            // has() costs only its operand: Kubernetes turns the presence-test cost off.
            Ok(if s.test { (Ty::Bool, cost) } else { (field, cost + 1) })
        }
        Expr::List(l) => {
            let mut cost = 10;
            let mut item = Ty::Dyn(1);
            for el in &l.elements {
                let (t, c) = walk(el, scope)?;
                cost += c;
                item = t;
            }
            Ok((Ty::List(Box::new(item), l.elements.len() as u64), cost))
        }
        Expr::Comprehension(c) => {
            let (range, range_cost) = walk(&c.iter_range, scope)?;
            let (item, n) = match &range {
                Ty::List(item, n) => ((**item).clone(), *n),
                // Macros over a map iterate its keys, which the estimator sizes as zero.
                Ty::Map(_, n) => (Ty::Str(0), *n),
                other => return Err(format!("cannot iterate over {other:?}")),
            };
            let (_, init) = walk(&c.accu_init, scope)?;
            scope.push((c.iter_var.clone(), item));
            scope.push((c.accu_var.clone(), Ty::Dyn(0)));
            let step = walk(&c.loop_cond, scope).and_then(|(_, a)| Ok(a + walk(&c.loop_step, scope)?.1));
            let result = walk(&c.result, scope);
            scope.truncate(scope.len() - 2);
            let (ty, result) = result?;
            let ty = if matches!(ty, Ty::Dyn(_)) { Ty::Bool } else { ty };
            Ok((ty, range_cost + init + result + n.saturating_mul(step?)))
        }
        Expr::Call(call) => {
            let mut args = Vec::new();
            let mut cost = 0u64;
            if let Some(t) = &call.target {
                let (ty, c) = walk(t, scope)?;
                args.push(ty);
                cost += c;
            }
            for a in &call.args {
                let (ty, c) = walk(a, scope)?;
                args.push(ty);
                cost += c;
            }
            let f = call.func_name.as_str();
            let (ty, own) = match f {
                operators::LOGICAL_AND | operators::LOGICAL_OR => (Ty::Bool, 0),
                operators::CONDITIONAL => {
                    // Only one branch runs: the condition plus the dearer branch.
                    let cond = walk(&call.args[0], scope)?.1;
                    let a = walk(&call.args[1], scope)?.1;
                    let b = walk(&call.args[2], scope)?.1;
                    return Ok((args[1].clone(), cond + a.max(b)));
                }
                operators::EQUALS | operators::NOT_EQUALS => (Ty::Bool, ceil_tenth(args[0].size().min(args[1].size()))),
                operators::LESS | operators::LESS_EQUALS | operators::GREATER | operators::GREATER_EQUALS => {
                    let own = match (&args[0], &args[1]) {
                        (Ty::Str(a), Ty::Str(b)) => ceil_tenth((*a).min(*b)),
                        _ => 1,
                    };
                    (Ty::Bool, own)
                }
                operators::LOGICAL_NOT | operators::NOT_STRICTLY_FALSE => (Ty::Bool, 1),
                operators::IN => match &args[1] {
                    Ty::List(_, n) => (Ty::Bool, *n),
                    _ => (Ty::Bool, 1),
                },
                operators::INDEX => match &args[0] {
                    Ty::List(item, _) | Ty::Map(item, _) => ((**item).clone(), 1),
                    _ => (Ty::Dyn(MAX_REQUEST), 1),
                },
                operators::ADD | operators::SUBSTRACT | operators::MULTIPLY | operators::DIVIDE | operators::MODULO => {
                    match (&args[0], &args[1]) {
                        (Ty::Str(a), Ty::Str(b)) => (Ty::Str(a + b), ceil_tenth(a + b)),
                        (t, _) => (t.clone(), 1),
                    }
                }
                operators::NEGATE => (args[0].clone(), 1),
                "size" => (Ty::Int, 1),
                "int" => (Ty::Int, 1),
                "double" => (Ty::Double, 1),
                "duration" => (Ty::Duration, 1),
                "timestamp" => (Ty::Timestamp, 1),
                "startsWith" | "endsWith" => (Ty::Bool, ceil_tenth(args[1].size())),
                "contains" => (Ty::Bool, ceil_tenth(args[0].size()) * ceil_tenth(args[1].size())),
                "matches" => (Ty::Bool, (args[0].size() + 1).div_ceil(10) * (args[1].size()).div_ceil(4)),
                other => return Err(format!("function '{other}' is not modelled; add its cost from cel-go")),
            };
            Ok((ty, cost + own))
        }
        other => Err(format!("expression {other:?} is not modelled")),
    }
}

/// Every rule in a schema: its path, the rule, and its cost times its cardinality, or why the
/// API server would refuse it.
pub fn rules(schema: &Value) -> Vec<(String, String, Result<u64, String>)> {
    let mut out = Vec::new();
    visit(schema, "", &mut Vec::new(), &mut out);
    out
}

fn visit<'a>(
    node: &'a Value,
    path: &str,
    ancestors: &mut Vec<&'a Value>,
    out: &mut Vec<(String, String, Result<u64, String>)>,
) {
    if let Some(list) = node.get("x-kubernetes-validations").and_then(Value::as_array) {
        let ty = type_of(node);
        for r in list {
            let rule = r["rule"].as_str().unwrap_or_default().to_owned();
            let result = match &ty {
                None => Err("unable to convert structural schema to CEL declarations".to_owned()),
                Some(t) => check(&rule, t).map(|cost| cost.saturating_mul(cardinality(ancestors, t))),
            };
            out.push((path.to_owned(), rule, result));
        }
    }
    ancestors.push(node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            visit(v, &format!("{path}.{k}"), ancestors, out);
        }
    }
    if let Some(items) = node.get("items") {
        visit(items, &format!("{path}[*]"), ancestors, out);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        visit(values, &format!("{path}{{*}}"), ancestors, out);
    }
    ancestors.pop();
}
