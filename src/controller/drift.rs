//! Whether a live object already holds everything the operator would apply, so a
//! settled cluster is reconciled without a single write.

use serde_json::Value;

use crate::quantity::Quantity;

/// True when `live` contains every field of `desired` with an equal value: the API
/// server adds defaults and status, which do not count as drift. Lists must have the
/// same length, element by element contained, except `ownerReferences`, where others
/// may add entries. Resource quantities compare by value (`0.5` and `500m` are equal).
pub fn contains(live: &Value, desired: &Value) -> bool {
    contains_at(live, desired, "")
}

fn contains_at(live: &Value, desired: &Value, key: &str) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired.iter().all(|(child, value)| {
            // Everything below requests/limits is a quantity.
            let child_key = if matches!(key, "requests" | "limits" | "capacity") {
                key
            } else {
                child
            };
            match live.get(child) {
                Some(live_value) => contains_at(live_value, value, child_key),
                None => value.is_null(),
            }
        }),
        (Value::Array(live), Value::Array(desired)) if key == "ownerReferences" => desired
            .iter()
            .all(|d| live.iter().any(|l| contains_at(l, d, ""))),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len()
                && live.iter().zip(desired).all(|(l, d)| contains_at(l, d, ""))
        }
        (Value::String(live), Value::String(desired))
            if matches!(key, "requests" | "limits" | "capacity") =>
        {
            live == desired
                || matches!(
                    (live.parse::<Quantity>(), desired.parse::<Quantity>()),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        (Value::Number(live), Value::Number(desired)) => {
            live == desired || live.as_f64() == desired.as_f64()
        }
        _ => live == desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_status_added_by_the_server_are_not_drift() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "pg", "image": "x"}]}}}});
        let live = json!({
            "metadata": {"resourceVersion": "7", "uid": "u"},
            "spec": {"replicas": 2, "revisionHistoryLimit": 10,
                     "template": {"spec": {"containers": [{"name": "pg", "image": "x", "terminationMessagePath": "/dev/termination-log"}]}}},
            "status": {"readyReplicas": 1}
        });
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_or_missing_field_is_drift() {
        let desired = json!({"spec": {"replicas": 3}});
        assert!(!contains(&json!({"spec": {"replicas": 2}}), &desired));
        assert!(!contains(&json!({"spec": {}}), &desired));
        assert!(!contains(
            &json!({"data": {"a": "1"}}),
            &json!({"data": {"a": "1", "b": "2"}})
        ));
    }

    #[test]
    fn lists_must_match_element_by_element_except_owner_references() {
        assert!(!contains(
            &json!({"args": ["a", "b", "c"]}),
            &json!({"args": ["a", "b"]})
        ));
        assert!(contains(
            &json!({"args": ["a", "b"]}),
            &json!({"args": ["a", "b"]})
        ));
        let env = json!({"env": [{"name": "A", "value": "1"}, {"name": "STALE", "value": "2"}]});
        assert!(
            !contains(&env, &json!({"env": [{"name": "A", "value": "1"}]})),
            "a removed entry is drift"
        );
        let owners =
            json!({"ownerReferences": [{"uid": "other"}, {"uid": "ours", "kind": "Postgres"}]});
        assert!(contains(
            &owners,
            &json!({"ownerReferences": [{"uid": "ours"}]})
        ));
        assert!(!contains(
            &owners,
            &json!({"ownerReferences": [{"uid": "missing"}]})
        ));
    }

    #[test]
    fn quantities_compare_by_value_only_in_resource_amounts() {
        let live = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}});
        assert!(contains(
            &live,
            &json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}})
        ));
        assert!(!contains(
            &json!({"data": {"x": "500m"}}),
            &json!({"data": {"x": "0.5"}})
        ));
    }

    #[test]
    fn null_in_desired_matches_an_absent_field() {
        assert!(contains(&json!({}), &json!({"storageClassName": null})));
    }
}
