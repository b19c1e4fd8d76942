"""Generate ``schemas/environment-config.json`` from :mod:`tracker_deployer.config.spec`.

Run ``python -m tracker_deployer.config.schema`` after changing the spec (``--check``
only compares); ``tests/unit/test_schema.py`` fails while the file differs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tracker_deployer.config import spec
from tracker_deployer.config.model import COMPRESSIONS, DEFAULT_COMPRESSION
from tracker_deployer.config.spec import NO_DEFAULT, Field, Kind, Section, Union
from tracker_deployer.paths import SCHEMA_FILE

COMMAND = "python -m tracker_deployer.config.schema"
DESCRIPTION = (
    "One deployment environment (envs/NAME.json). Unknown keys are errors everywhere. "
    "The deployer (`inv validate --env NAME`) is the authority: it also checks what this "
    "schema cannot express, such as cron ranges that run backwards, two services on one "
    "port, public_key_path equal to private_key_path, and 7.0 written for 7. The schema "
    "never refuses a config the deployer accepts. See docs/user-guide/configuration.md."
)
Schema = dict[str, Any]


def _when(path: list[str], leaf: Schema) -> Schema:
    """Matches an object whose value at ``path`` matches ``leaf``."""
    node = leaf
    for key in reversed(path):
        node = {"type": "object", "properties": {key: node}, "required": [key]}
    return node


def _field(field: Field, defs: dict[str, Schema]) -> Schema:
    node = _kind(field.kind, defs)
    if field.array:
        node = {"type": "array", "items": node}
    node.update(field.schema)
    node |= {"description": field.doc, "examples": field.examples}
    if field.default is not NO_DEFAULT:
        node["default"] = field.default
    return node


def _kind(kind: Kind | Section | Union, defs: dict[str, Schema]) -> Schema:
    if isinstance(kind, Section):
        node = _object(kind, defs)
    elif isinstance(kind, Union):
        node = _union(kind, defs)
    elif kind.type == "map":
        node = {"type": "object", "additionalProperties": False, **kind.schema}
    else:
        node = {"type": kind.type, **kind.schema}
    if kind.ref is None:
        return node
    if node.keys() - {"type"}:  # the first full definition is the one
        defs.setdefault(kind.ref, node)
    return {"$ref": f"#/$defs/{kind.ref}"}


def _object(section: Section, defs: dict[str, Schema]) -> Schema:
    node: Schema = {"type": "object", "additionalProperties": False}
    required = [field.key for field in section.fields if field.required]
    if required:
        node["required"] = required
    node["properties"] = {field.key: _field(field, defs) for field in section.fields}
    if {"domain", "use_tls_proxy"} <= node["properties"].keys():
        node["if"] = _when(["use_tls_proxy"], {"const": True})
        node["then"] = {"required": ["domain"]}
    return node


def _union(union: Union, defs: dict[str, Schema]) -> Schema:
    owners: dict[str, list[tuple[str, Field]]] = {}
    for name, variant in union.variants.items():
        for field in variant.fields:
            owners.setdefault(field.key, []).append((name, field))
    kinds = list(union.variants)
    properties: Schema = {union.key: {"enum": kinds, "description": union.doc, "examples": kinds}}
    for key, fields in owners.items():
        if len(fields) == 1:
            name, field = fields[0]
            properties[key] = _field(field, defs)
            where = f"{name} only, required there" if field.required else f"{name} only"
            properties[key]["description"] = f"{where}: {field.doc}"
        else:
            properties[key] = {
                "type": _field(fields[0][1], defs).get("type", "string"),
                "description": " ".join(f"{name}: {field.doc}" for name, field in fields),
                "examples": [example for _, field in fields for example in field.examples],
            }
    branches = []
    for name, variant in union.variants.items():
        then: Schema = {}
        required = [field.key for field in variant.fields if field.required]
        if required:
            then["required"] = required
        keys = [union.key, *(field.key for field in variant.fields)]
        if set(keys) != properties.keys():
            then["propertyNames"] = {"enum": keys}
        shared = {f.key: _field(f, defs) for f in variant.fields if len(owners[f.key]) > 1}
        if shared:
            then["properties"] = shared
        branches.append({"if": _when([union.key], {"const": name}), "then": then})
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [union.key],
        "properties": properties,
        "allOf": branches,
    }


def _compression_levels() -> list[Schema]:
    """The level's bounds depend on the compression (absent = the default one)."""
    highest = max(high for _, high, _ in COMPRESSIONS.values())
    rules = []
    for name, (low, high, default) in COMPRESSIONS.items():
        if high == highest:
            continue
        chosen = _when(["compression"], {"const": name})
        absent = {"not": {"required": ["compression"]}}
        level = {
            "minimum": low,
            "maximum": high,
            "description": f"With {name} the level runs from {low} to {high}.",
            "examples": [default],
        }
        condition = {"anyOf": [chosen, absent]} if name == DEFAULT_COMPRESSION else chosen
        rules.append({"if": condition, "then": {"properties": {"compression_level": level}}})
    return rules


def build() -> Schema:
    defs: dict[str, Schema] = {}
    top = _object(spec.ENV, defs)
    top["properties"]["backup"]["allOf"] = _compression_levels()
    driver = ["tracker", "core", "database", "driver"]
    defs["a_service_uses_the_tls_proxy"] = {
        "anyOf": [
            _when(
                ["tracker", "http_trackers"],
                {"type": "array", "contains": _when(["use_tls_proxy"], {"const": True})},
            ),
            *(
                _when([*where, "use_tls_proxy"], {"const": True})
                for where in (["tracker", "http_api"], ["tracker", "health_check_api"], ["grafana"])
            ),
        ]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"GENERATED from lib/tracker_deployer/config/spec.py by `{COMMAND}`: do not edit.",
        "$id": "urn:torrust-tracker-deployer:schemas:environment-config",
        "title": "Torrust Tracker deployer: environment config",
        "description": DESCRIPTION,
        **top,
        "dependentRequired": {"grafana": ["prometheus"]},
        "allOf": [
            {"if": _when(driver, {"const": "mysql"}), "then": {"required": ["mysql"]}},
            {
                "if": _when(driver, {"const": "sqlite3"}),
                "then": {"not": {"type": "object", "required": ["mysql"]}},
            },
            {
                "if": {"$ref": "#/$defs/a_service_uses_the_tls_proxy"},
                "then": {"required": ["https"]},
                "else": {"not": {"type": "object", "required": ["https"]}},
            },
        ],
        "$defs": defs,
    }


def text() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    expected = text()
    if argv == ["--check"]:
        if SCHEMA_FILE.read_text(encoding="utf-8") != expected:
            print(f"{SCHEMA_FILE} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
