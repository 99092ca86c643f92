//! The OpenAPI part of what the API server checks on `kubectl apply`, against our own
//! CRD schema: types, unknown fields, enums, bounds, required fields. CEL rules are
//! evaluated separately ([`crate::validate::validate_with_crd_rules`]).

use serde_json::Value;

use crate::validate::FieldError;

/// Checks `value` against the OpenAPI v3 `schema`, collecting every violation with the
/// path of the offending field (`path` is the path of `value` itself).
pub fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let open = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if value.is_null() {
        let nullable = schema
            .get("nullable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !nullable && !open {
            errors.push(error(path, "must not be null"));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(error(
                path,
                &format!("must be an integer or a string, got {}", describe(value)),
            ));
        }
        return;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => check_object(schema, value, path, errors, open),
        Some("array") => check_array(schema, value, path, errors),
        Some("string") => match value.as_str() {
            Some(text) => check_string(schema, text, path, errors),
            None => errors.push(error(
                path,
                &format!("must be a string, got {}", describe(value)),
            )),
        },
        Some("integer") => {
            if value.is_i64() || value.is_u64() {
                check_number(schema, value, path, errors);
            } else {
                errors.push(error(
                    path,
                    &format!("must be an integer, got {}", describe(value)),
                ));
            }
        }
        Some("number") => {
            if value.is_number() {
                check_number(schema, value, path, errors);
            } else {
                errors.push(error(
                    path,
                    &format!("must be a number, got {}", describe(value)),
                ));
            }
        }
        Some("boolean") if !value.is_boolean() => {
            errors.push(error(
                path,
                &format!("must be true or false, got {}", describe(value)),
            ));
        }
        _ => {}
    }
}

fn check_object(
    schema: &Value,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
    open: bool,
) {
    let Some(map) = value.as_object() else {
        errors.push(error(
            path,
            &format!("must be an object, got {}", describe(value)),
        ));
        return;
    };
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && map.len() as u64 > max
    {
        errors.push(error(
            path,
            &format!("must have at most {max} entries, got {}", map.len()),
        ));
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(field) {
                errors.push(error(&join(path, field), "is required"));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    for (key, child) in map {
        let child_path = join(path, key);
        if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
            check(child_schema, child, &child_path, errors);
        } else if let Some(child_schema) = additional.filter(|a| a.is_object()) {
            check(child_schema, child, &keyed(path, key), errors);
        } else if properties.is_some() && !open {
            let known: Vec<&str> = properties
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            errors.push(error(
                &child_path,
                &format!("unknown field; allowed fields here: {}", known.join(", ")),
            ));
        }
    }
}

fn check_array(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(items) = value.as_array() else {
        errors.push(error(
            path,
            &format!("must be a list, got {}", describe(value)),
        ));
        return;
    };
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && items.len() as u64 > max
    {
        errors.push(error(
            path,
            &format!("must have at most {max} items, got {}", items.len()),
        ));
    }
    if let Some(item_schema) = schema.get("items") {
        for (index, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{index}]"), errors);
        }
    }
}

fn check_string(schema: &Value, text: &str, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.iter().any(|a| a.as_str() == Some(text))
    {
        let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
        errors.push(error(
            path,
            &format!(
                "unsupported value {text:?}; allowed values: {}",
                names.join(", ")
            ),
        ));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && text.chars().count() as u64 > max
    {
        errors.push(error(path, &format!("must be at most {max} characters")));
    }
}

fn check_number(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(number) = value.as_f64() else { return };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && number < min
    {
        errors.push(error(path, &format!("must be at least {min}, got {value}")));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && number > max
    {
        errors.push(error(path, &format!("must be at most {max}, got {value}")));
    }
    if schema.get("format").and_then(Value::as_str) == Some("int32")
        && value.as_i64().is_none_or(|i| i32::try_from(i).is_err())
    {
        errors.push(error(
            path,
            &format!("must fit in a 32-bit integer, got {value}"),
        ));
    }
}

fn error(path: &str, message: &str) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.to_string(),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Map entries with arbitrary keys (user names can contain dots) are shown quoted.
fn keyed(path: &str, key: &str) -> String {
    format!("{path}[{key:?}]")
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}
