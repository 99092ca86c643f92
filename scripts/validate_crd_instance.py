#!/usr/bin/env python3
"""Validates custom-resource instances against the openAPIV3Schema of their CRD, the way
the API server does it structurally: unknown fields are rejected (objects with
`properties` are closed unless they preserve unknown fields), types, enums, bounds,
patterns and required fields are enforced. CEL rules are checked elsewhere.

usage: validate_crd_instance.py CRDS.yaml INSTANCES.yaml
Exit status 0 when every instance validates; 1 with one line per error otherwise.
"""
import sys

import jsonschema
import yaml


def to_json_schema(node):
    """OpenAPI v3 (Kubernetes dialect) -> JSON Schema."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties",):
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_json_schema(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(child) for child in value]
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format", "description", "default"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
    open_object = node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node and not open_object:
        out["additionalProperties"] = False
    return out


def main():
    crds = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    instances = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
    errors = []
    for index, instance in enumerate(instances, 1):
        group, _, version = str(instance.get("apiVersion", "")).rpartition("/")
        kind = instance.get("kind")
        matches = [c for c in crds if c["spec"]["group"] == group and c["spec"]["names"]["kind"] == kind]
        if not matches:
            errors.append(f"document {index}: no CRD for {kind} in group {group!r}")
            continue
        versions = [v for v in matches[0]["spec"]["versions"] if v["name"] == version]
        if not versions:
            errors.append(f"document {index}: {kind} has no version {version!r}")
            continue
        schema = to_json_schema(versions[0]["schema"]["openAPIV3Schema"])
        # apiVersion, kind and metadata are validated by the API server itself.
        props = schema.setdefault("properties", {})
        props["metadata"] = {"type": "object"}
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        validator = jsonschema.Draft7Validator(schema)
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in error.path) or "<root>"
            errors.append(f"document {index} ({kind}): {path}: {error.message}")
    for line in errors:
        print(line)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
