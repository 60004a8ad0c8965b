//! Several policies at once: each item is judged against each policy in a
//! prompt of its own, and the verdicts are combined into one. The rule,
//! strongest first:
//!
//! 1. **violates** when any policy says it violates;
//! 2. **no verdict** when any policy gave none (a parse failure or a cut-off
//!    answer): whether the item violates is then unknown, and hiding that
//!    behind an escalation or a "safe" would let a broken policy pass a gate;
//! 3. **escalate** when any policy escalates;
//! 4. **safe** when every policy says safe.
//!
//! P(violation) of the whole is the largest of the policies' (defined when
//! each has one): a threshold on it flags exactly the items that the same
//! threshold flags under some policy, which is what "violates any" means.
//!
//! Combining works on the result lines (`classify --json`), so the CLI, the
//! eval cache and the server, which each hold results as those lines,
//! combine them by the same code.

use serde_json::{json, Map, Value};

use super::policy::Policy;

/// The combined result of one item: the fields of a single-policy result
/// line for the whole, plus `policies` holding each policy's own line with
/// its `name` and `sha256` added.
pub fn combine(id: &str, judged: &[(&Policy, Value)]) -> Value {
    let outcome = |v: &Value| v["outcome"].as_str().map(str::to_string);
    let outcomes: Vec<Option<String>> = judged.iter().map(|(_, v)| outcome(v)).collect();
    let any = |o: Option<&str>| outcomes.iter().any(|x| x.as_deref() == o);
    let combined = if any(Some("violates")) {
        Some("violates")
    } else if any(None) {
        None
    } else if any(Some("escalate")) {
        Some("escalate")
    } else {
        Some("safe")
    };
    let label = match combined {
        Some("violates") => Some(1),
        Some("safe") => Some(0),
        _ => None,
    };
    let p_violation = judged
        .iter()
        .map(|(_, v)| p_violation(v))
        .collect::<Option<Vec<f64>>>()
        .and_then(|ps| ps.into_iter().reduce(f64::max));
    let confidence = match (label, p_violation) {
        (Some(1), Some(p)) => Some(p),
        (Some(_), Some(p)) => Some(1.0 - p),
        _ => None,
    };
    // What explains the outcome: the policies that decided it.
    let deciding: Vec<&(&Policy, Value)> = judged
        .iter()
        .filter(|(_, v)| outcome(v).as_deref() == combined)
        .collect();
    let by_policy = |key: &str, list: &[&(&Policy, Value)]| -> Vec<String> {
        list.iter()
            .filter_map(|(p, v)| {
                Some(format!(
                    "{}: {}",
                    p.name,
                    v[key].as_str().filter(|s| !s.is_empty())?
                ))
            })
            .collect()
    };
    let all: Vec<&(&Policy, Value)> = judged.iter().collect();
    let error = (combined.is_none()).then(|| {
        let missing: Vec<String> = deciding
            .iter()
            .map(|(p, v)| {
                format!(
                    "no verdict from policy {}: {}",
                    p.name,
                    v["error"].as_str().unwrap_or("the answer has no label")
                )
            })
            .collect();
        missing.join("; ")
    });
    let finish_reason = match combined {
        None if deciding.iter().any(|(_, v)| v["finish_reason"] == "length") => json!("length"),
        _ => deciding
            .first()
            .map_or(Value::Null, |(_, v)| v["finish_reason"].clone()),
    };
    let list = |key: &str| -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for (_, v) in judged {
            for id in v[key].as_array().into_iter().flatten() {
                if !out.contains(id) {
                    out.push(id.clone());
                }
            }
        }
        out
    };
    let sum = |pick: &dyn Fn(&Value) -> &Value| -> Option<f64> {
        judged.iter().map(|(_, v)| pick(v).as_f64()).sum()
    };
    let mut usage = Map::new();
    for key in [
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "answer_tokens",
    ] {
        if let Some(total) = sum(&|v| &v["usage"][key]) {
            usage.insert(key.into(), json!(total as u64));
        }
    }
    let policies: Vec<Value> = judged
        .iter()
        .map(|(policy, v)| {
            let mut entry = Map::new();
            entry.insert("name".into(), json!(policy.name));
            entry.insert("sha256".into(), json!(policy.sha256()));
            if let Value::Object(fields) = v {
                entry.extend(fields.clone());
            }
            Value::Object(entry)
        })
        .collect();
    let join = |parts: Vec<String>, separator: &str| (!parts.is_empty()).then(|| parts.join(separator));
    json!({
        "id": id,
        "label": label,
        "violation": label.map(|l| l == 1),
        "outcome": combined,
        "policy_category": deciding.iter().find_map(|(_, v)| v["policy_category"].as_str()),
        "rule_ids": list("rule_ids"),
        "confidence": confidence,
        "rationale": join(by_policy("rationale", &deciding), "; "),
        "reasoning": join(by_policy("reasoning", &all), "\n\n").unwrap_or_default(),
        "answer": join(by_policy("answer", &all), "\n").unwrap_or_default(),
        "error": error,
        "undeclared_ids": list("undeclared_ids"),
        "finish_reason": finish_reason,
        "usage": usage,
        "latency_ms": sum(&|v| &v["latency_ms"]),
        "policies": policies,
    })
}

/// A result line's P(violation): its confidence in its label, turned
/// around for a 0.
fn p_violation(result: &Value) -> Option<f64> {
    let confidence = result["confidence"].as_f64()?;
    match result["label"].as_u64()? {
        1 => Some(confidence),
        _ => Some(1.0 - confidence),
    }
}
