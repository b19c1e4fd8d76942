"""schemas/environment-config.json is generated from the spec and agrees with the parser.

The file is generated (``python -m tracker_deployer.config.schema``) from
``tracker_deployer.config.spec``, the table the parser walks too; a test regenerates
it and compares. The schema may be looser than the parser (it cannot compare ports,
for one), never stricter: whatever the schema refuses, the parser refuses too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from tracker_deployer.config import schema
from tracker_deployer.config.model import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DEFAULT_DOWNTIME_BUDGET_SECONDS,
    DEFAULT_DRILL_SCHEDULE,
    DEFAULT_IMAGES,
    DEFAULT_MAX_DOWNTIME_SECONDS,
    DEFAULT_OFFSITE_CHECK_READ_DATA,
    DEFAULT_OFFSITE_CHECK_SCHEDULE,
    DEFAULT_OFFSITE_KEEP,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_SCHEDULE,
    MAX_MAX_DOWNTIME_SECONDS,
)
from tracker_deployer.errors import ConfigError
from tracker_deployer.paths import SCHEMA_FILE

from tests.helpers import InvalidCase, invalid_cases, parse, valid_configs

SCHEMA: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)
VALID = valid_configs()
CASES = invalid_cases()

# Refusals about the shape of a config, as opposed to the shape of a string.
STRUCTURAL = {
    "type",
    "required",
    "additionalProperties",
    "propertyNames",
    "dependentRequired",
    "enum",
    "const",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
}


def _errors(instance: object) -> list[ValidationError]:
    return sorted(VALIDATOR.iter_errors(instance), key=lambda error: error.json_path)


def _describe(errors: list[ValidationError]) -> str:
    return "\n".join(f"{error.json_path}: {error.message[:200]}" for error in errors)


# --------------------------------------------------------------------------- the schema itself


def test_schema_file_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema.text(), (
        f"{SCHEMA_FILE} is out of date: run `{schema.COMMAND}`"
    )


def test_key_table_in_the_configuration_guide_is_the_generated_one() -> None:
    guide = schema.DOCS_FILE.read_text(encoding="utf-8")
    assert schema.BEGIN in guide
    assert guide == schema.docs(guide), f"the key table is out of date: run `{schema.COMMAND}`"


def test_schema_check_mode_reports_nothing_when_up_to_date() -> None:
    assert schema.main(["--check"]) == 0


def test_schema_says_it_is_generated_in_its_first_lines() -> None:
    head = SCHEMA_FILE.read_text(encoding="utf-8").splitlines()[:3]
    assert any("GENERATED" in line and schema.COMMAND in line for line in head)


def test_schema_description_does_not_contradict_the_accepted_schema_key() -> None:
    assert "$schema" in SCHEMA["properties"]
    assert "$schema" not in SCHEMA["description"]
    parse({**VALID["create-template-sqlite3"], "$schema": "../schemas/environment-config.json"})


def test_schema_is_valid_draft_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)


def test_top_level_description_says_the_deployer_checks_the_rest() -> None:
    description = SCHEMA["description"]
    for rule in ("inv validate", "port", "cron", "private_key_path"):
        assert rule in description


# Where properties are documented: properties, items, the branches of allOf/if-then-else,
# and $defs. Conditions (if, not, anyOf, contains) only test values; they document nothing.
def _schemas(node: object, pointer: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    yield pointer, node
    for key, sub in node.get("properties", {}).items():
        yield from _schemas(sub, f"{pointer}/properties/{key}")
    if "items" in node:
        yield from _schemas(node["items"], f"{pointer}/items")
    for index, sub in enumerate(node.get("allOf", [])):
        yield from _schemas(sub, f"{pointer}/allOf/{index}")
    for key in ("then", "else"):
        if key in node:
            yield from _schemas(node[key], f"{pointer}/{key}")
    for name, sub in node.get("$defs", {}).items():
        yield from _schemas(sub, f"{pointer}/$defs/{name}")


SCHEMAS = dict(_schemas(SCHEMA, ""))
PROPERTIES = {
    pointer: node
    for pointer, node in SCHEMAS.items()
    if pointer.split("/")[-2:-1] == ["properties"]
}


def test_the_walk_sees_every_section_and_definition() -> None:
    assert "/properties/backup/properties/retention_days" in PROPERTIES
    assert "/$defs/http_tracker/properties/use_tls_proxy" in PROPERTIES
    assert "/properties/provider/properties/api_token" in PROPERTIES
    assert len(PROPERTIES) >= 50


@pytest.mark.parametrize("pointer", sorted(PROPERTIES))
def test_every_property_has_a_description_and_examples(pointer: str) -> None:
    node = PROPERTIES[pointer]
    assert isinstance(node.get("description"), str)
    assert len(node["description"].strip()) >= 10
    assert isinstance(node.get("examples"), list)
    assert node["examples"]


@pytest.mark.parametrize("pointer", sorted(PROPERTIES))
def test_examples_and_default_of_every_property_are_valid(pointer: str) -> None:
    node = PROPERTIES[pointer]
    registry: Registry[Any] = Registry().with_resource(
        SCHEMA["$id"], DRAFT202012.create_resource(SCHEMA)
    )
    validator = Draft202012Validator({"$ref": f"{SCHEMA['$id']}#{pointer}"}, registry=registry)
    values = list(node["examples"]) + ([node["default"]] if "default" in node else [])
    for value in values:
        assert not list(validator.iter_errors(value)), f"{pointer}: {value!r}"


def test_every_object_refuses_unknown_keys() -> None:
    objects = [pointer for pointer, node in SCHEMAS.items() if node.get("type") == "object"]
    assert len(objects) >= 15
    for pointer in objects:
        assert SCHEMAS[pointer].get("additionalProperties") is False, pointer


def test_defaults_are_the_models() -> None:
    backup = SCHEMA["properties"]["backup"]["properties"]
    assert backup["schedule"]["default"] == DEFAULT_SCHEDULE
    assert backup["retention_days"]["default"] == DEFAULT_RETENTION_DAYS
    assert backup["compression"]["default"] == DEFAULT_COMPRESSION
    assert backup["compression"]["enum"] == list(COMPRESSIONS)
    # the level's range and default depend on the compression: the description says which
    assert backup["compression_level"]["maximum"] == max(
        high for _, high, _ in COMPRESSIONS.values()
    )
    for name, (low, high, default) in COMPRESSIONS.items():
        assert f"{name} {low}" in backup["compression_level"]["description"]
        assert f"to {high}" in backup["compression_level"]["description"]
        assert f"default {default}" in backup["compression_level"]["description"]
    assert (
        SCHEMA["properties"]["backup"]["allOf"][0]["then"]["properties"]["compression_level"][
            "maximum"
        ]
        == (COMPRESSIONS["gzip"][1])
    )
    assert backup["max_downtime_seconds"]["default"] == DEFAULT_MAX_DOWNTIME_SECONDS
    assert backup["max_downtime_seconds"]["maximum"] == MAX_MAX_DOWNTIME_SECONDS
    assert backup["mailto"]["default"] == ""
    assert backup["drill_schedule"]["default"] == DEFAULT_DRILL_SCHEDULE
    assert backup["downtime_budget_seconds"]["default"] == DEFAULT_DOWNTIME_BUDGET_SECONDS
    offsite = backup["offsite"]["properties"]
    assert offsite["keep"]["default"] == dict(DEFAULT_OFFSITE_KEEP)
    assert offsite["check_schedule"]["default"] == DEFAULT_OFFSITE_CHECK_SCHEDULE
    assert offsite["check_read_data"]["default"] == DEFAULT_OFFSITE_CHECK_READ_DATA
    images = SCHEMA["properties"]["images"]["properties"]
    assert {key: value["default"] for key, value in images.items()} == DEFAULT_IMAGES
    assert SCHEMA["properties"]["ssh_credentials"]["properties"]["port"]["default"] == 22
    prometheus = SCHEMA["properties"]["prometheus"]["properties"]
    assert prometheus["scrape_interval_in_secs"]["default"] == 15


# --------------------------------------------------------------------------- valid configs


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_config_matches_the_schema_and_parses(name: str) -> None:
    data = VALID[name]

    assert not _errors(data), _describe(_errors(data))
    parse(data)


def test_valid_configs_cover_both_drivers_both_providers_and_every_section() -> None:
    assert {"create-template-sqlite3", "create-template-mysql"} <= set(VALID)
    drivers = {data["tracker"]["core"]["database"]["driver"] for data in VALID.values()}
    providers = {data["provider"]["provider"] for data in VALID.values()}
    sections = set().union(*(data.keys() for data in VALID.values()))
    assert drivers == {"sqlite3", "mysql"}
    assert providers == {"lxd", "hetzner"}
    assert sections == set(SCHEMA["properties"])


@pytest.mark.parametrize("mailto", [" ops@example.com", "ops@example.com ", "a@b.co , c@d.co"])
def test_schema_takes_the_spaces_the_parser_drops_around_mailto_addresses(mailto: str) -> None:
    data = copy.deepcopy(VALID["manual-test-sqlite"])
    data["backup"]["mailto"] = mailto

    assert parse(data).backup.mailto == mailto.replace(" ", "")  # type: ignore[union-attr]
    assert not _errors(data), _describe(_errors(data))


# --------------------------------------------------------------------------- invalid corpus


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_schema_verdict_on_invalid_case_is_as_recorded(case: InvalidCase) -> None:
    errors = _errors(case.data())

    if case.schema_rejects:
        assert errors, f"{case.name}: the schema accepts it, but schema_rejects is true"
    else:
        assert not errors, (
            f"{case.name}: the schema now rejects it; set schema_rejects to true\n"
            + _describe(errors)
        )


# --------------------------------------------------------------------------- mutations

_SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.integers(min_value=-(2**40), max_value=2**40),
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "string": st.text(max_size=16),
}
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.one_of(*_SCALARS.values()),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=6,
)
_OF_TYPE: dict[str, st.SearchStrategy[Any]] = {
    **_SCALARS,
    "array": st.lists(_JSON, max_size=3),
    "object": st.dictionaries(st.text(max_size=10), _JSON, max_size=3),
}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _slots(node: object, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The path of every value inside ``node`` (keys of objects, items of arrays)."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, list):
        children = list(enumerate(node))
    for key, child in children:
        yield (*path, key)
        yield from _slots(child, (*path, key))


def _at(data: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


@st.composite
def mutated_configs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid config with one key dropped, one unknown key added, or one value retyped."""
    name = draw(st.sampled_from(sorted(VALID)))
    data = copy.deepcopy(VALID[name])
    slots = list(_slots(data))
    kind = draw(st.sampled_from(("drop", "add", "replace")))
    if kind == "drop":
        path = draw(st.sampled_from([slot for slot in slots if isinstance(slot[-1], str)]))
        del _at(data, path[:-1])[path[-1]]
    elif kind == "add":
        objects = [()] + [slot for slot in slots if isinstance(_at(data, slot), dict)]
        target = _at(data, draw(st.sampled_from(objects)))
        key = draw(st.text(min_size=1, max_size=16).filter(lambda key: key not in target))
        target[key] = draw(_JSON)
        path = ()
    else:
        path = draw(st.sampled_from(slots))
        old = _at(data, path)
        new_type = draw(st.sampled_from(sorted(set(_OF_TYPE) - {_json_type(old)})))
        _at(data, path[:-1])[path[-1]] = draw(_OF_TYPE[new_type])
    return f"{kind} {'.'.join(map(str, path))} in {name}", data


@settings(max_examples=200, deadline=None)
@given(mutated_configs())
def test_schema_is_never_stricter_than_the_parser(mutation: tuple[str, dict[str, Any]]) -> None:
    label, data = mutation

    try:
        parse(data)
        accepted = True
    except ConfigError:  # anything else is a parser bug and fails the test
        accepted = False

    errors = _errors(data)
    structural = [error for error in errors if error.validator in STRUCTURAL]
    assert not (structural and accepted), (
        f"{label}: the schema refuses it, the parser accepts it\n{_describe(structural)}"
    )
    assert not (errors and accepted), f"{label}: the schema refuses it\n{_describe(errors)}"
