# Written with AI assistance; review before relying on it.
"""The json_schema guard (cerebro/schema_guard.py) and its use in cerebro/structured.py.

Fetches are caught by a real loopback HTTP server that records every hit, and a temporary file holding
a secret. The allow-list is proved against the real xgrammar compiler with the tiny fixture's
tokenizer: for each allowed keyword, an instance that jsonschema says breaks the schema is rejected by
the compiled grammar, and one that keeps it is accepted. Not here: the request parser's other checks
(tests/unit/test_request.py) and generation (tests/integration/test_engine_tiny.py).
"""

from __future__ import annotations

import http.server
import json
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing.exceptions import Unresolvable

from cerebro.errors import GenerationError, SchemaError
from cerebro.request import parse_json_schema
from cerebro.schema_guard import MAX_JSON_DEPTH, MAX_SCHEMA_DEPTH, safe_validator, vet_schema
from cerebro.structured import JsonSchemaCompiler, clean_reason, validate_output

INT = {"type": "integer"}
STR = {"type": "string"}


def refused(schema: dict[str, Any], code: str = "E1301") -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        vet_schema(schema)
    error = caught.value
    assert error.code == code, str(error)
    assert error.field == "json_schema"
    assert len(str(error)) < 500
    return error


# ------------------------------------------------------------------------------------------ fetches


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = json.dumps({"type": "integer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_Recorder,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_loopback_server_sees_a_fetch_by_plain_jsonschema(server: tuple[str, list[str]]) -> None:
    # Control: shows the hole exists and that the server would notice it.
    url, hits = server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        jsonschema.validate(1, {"$ref": f"{url}/x.json"})
    assert hits == ["/x.json"]


def remote_schemas(url: str) -> list[dict[str, Any]]:
    return [
        {"$ref": f"{url}/x.json"},
        {"type": "object", "properties": {"a": {"$ref": f"{url}/a.json#/$defs/x"}}},
        {"$defs": {"x": {"$ref": f"{url}/d.json"}}, "$ref": "#/$defs/x"},
        {"$id": f"{url}/root.json", "$ref": "other.json"},
        {"$id": f"{url}/root.json", "anyOf": [{"$ref": "other.json#/x"}]},
        {"type": "object", "properties": {"a": {"$id": f"{url}/sub/", "$ref": "#/x"}}},
        {"$dynamicRef": f"{url}/dyn.json"},
        {"$recursiveRef": "#"},
    ]


def test_a_remote_ref_is_refused_up_front_and_never_fetched(server: tuple[str, list[str]]) -> None:
    url, hits = server
    for schema in remote_schemas(url):
        error = refused(schema)
        assert "$" in error.message, error.message  # names $ref, $id, $dynamicRef...
    assert hits == []


def test_a_remote_ref_is_refused_through_the_request_parser(server: tuple[str, list[str]]) -> None:
    url, hits = server
    with pytest.raises(SchemaError) as caught:
        parse_json_schema(json.dumps({"type": "object", "properties": {"a": {"$ref": f"{url}/x"}}}))
    assert caught.value.code == "E1301" and "/properties/a" in caught.value.message
    assert hits == []


def test_validation_cannot_fetch_even_past_the_guard(server: tuple[str, list[str]]) -> None:
    url, hits = server
    schema = {"type": "object", "properties": {"a": {"$ref": f"{url}/x.json"}}}
    with pytest.raises(Unresolvable):
        safe_validator(schema).is_valid({"a": 1})
    with pytest.raises(SchemaError) as caught:
        validate_output('{"a":1}', schema, max_new_tokens=10)
    assert caught.value.code == "E1301"
    assert hits == []


def test_a_file_ref_is_refused_and_never_read(tmp_path: Path) -> None:
    secret = "TOP-SECRET-7f3a9c"
    target = tmp_path / "secret.json"
    target.write_text(json.dumps({"type": "string", "const": secret}))
    for schema in ({"$ref": target.as_uri()}, {"$ref": f"{target.as_uri()}#/type"}):
        error = refused(schema)
        assert secret not in str(error)
        with pytest.raises(Unresolvable) as unresolved:
            safe_validator(schema).is_valid("x")
        assert secret not in str(unresolved.value)
        with pytest.raises(SchemaError) as caught:
            validate_output('"x"', schema, max_new_tokens=10)
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    "ref",
    ["#foo", "other.json#/x", "urn:example:x", "#/$defs/a~1b", "#/$defs/a%20b", "#/prefixItems/0"],
)
def test_only_plain_pointers_into_the_document_resolve(ref: str) -> None:
    defs = {"foo": INT, "a/b": INT, "a b": INT}
    schema = {"type": "array", "prefixItems": [INT, {"$ref": ref}], "items": False, "$defs": defs}
    assert ref[:30] in refused(schema).message


def test_a_local_ref_that_points_at_nothing_is_malformed() -> None:
    assert "points at nothing" in refused({"$defs": {"x": INT}, "$ref": "#/$defs/y"}, "E1300").message
    refused({"$defs": {"x": INT}, "$ref": "#/$defs"}, "E1300")  # a map of schemas, not a schema


def test_local_refs_resolve_without_fetching() -> None:
    schema = {"$id": "https://example.com/s.json", "$defs": {"x": INT}, "$ref": "#/$defs/x"}
    vet_schema(schema)
    assert safe_validator(schema).is_valid(3) and not safe_validator(schema).is_valid("3")
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"x": STR}}
    draft7["$ref"] = "#/definitions/x"
    vet_schema(draft7)
    assert type(safe_validator(draft7)).__name__ == "Draft7Validator"


# ------------------------------------------------------------------------------ recursion and depth


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"type": "object", "properties": {"child": {"$ref": "#"}}},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {
            "$defs": {"node": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            "type": "object",
            "properties": {"tree": {"$ref": "#/$defs/node"}},
        },
    ],
)
def test_recursive_schemas_are_refused(schema: dict[str, Any]) -> None:
    assert "recursive" in refused(schema).message


def test_an_unused_definition_may_point_at_the_root() -> None:
    vet_schema({"$defs": {"unused": {"$ref": "#"}}, "type": "integer"})


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = INT
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_nesting_is_limited_without_recursion_errors() -> None:
    vet_schema(nested(MAX_SCHEMA_DEPTH))
    error = refused(nested(MAX_SCHEMA_DEPTH + 1))
    assert f"the limit is {MAX_SCHEMA_DEPTH}" in error.message
    assert "the limit is" in refused(nested(99)).message
    with pytest.raises(SchemaError) as caught:  # the path that used to raise RecursionError (E2000)
        parse_json_schema(json.dumps(nested(99)))
    # Through the request parser the document's nesting is checked first (before jsonschema's recursive
    # check_schema), so the limit it names is the JSON one.
    assert caught.value.code == "E1301" and f"the limit is {MAX_JSON_DEPTH}" in caught.value.message


def test_nesting_through_refs_counts() -> None:
    defs = {f"d{i}": {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}} for i in range(40)}
    defs["d40"] = INT
    assert "$refs are followed" in refused({"$defs": defs, "$ref": "#/$defs/d0"}).message


def test_a_diamond_of_refs_cannot_blow_up() -> None:
    defs = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(20)}
    defs["d20"] = INT
    assert "expands to more than" in refused({"$defs": defs, "$ref": "#/$defs/d0"}).message


def test_deep_values_are_limited_too() -> None:
    value: Any = 1
    for _ in range(5000):
        value = [value]
    assert str(MAX_JSON_DEPTH) in refused({"const": value}).message


# --------------------------------------------------------------------------------- refused keywords

REFUSED = [
    ("not", {"type": "integer", "not": {"const": 3}}),
    ("if", {"type": "integer", "if": {"type": "integer", "minimum": 5}, "then": {"maximum": 6}}),
    ("uniqueItems", {"type": "array", "items": INT, "uniqueItems": True}),
    ("contains", {"type": "array", "items": INT, "contains": {"const": 3}}),
    ("patternProperties", {"type": "object", "patternProperties": {"^x": INT}}),
    ("propertyNames", {"type": "object", "properties": {"bb": INT}, "propertyNames": {"maxLength": 1}}),
    ("dependentRequired", {"type": "object", "properties": {"a": INT}, "dependentRequired": {"a": ["b"]}}),
    ("unevaluatedProperties", {"type": "object", "unevaluatedProperties": False}),
    ("allOf", {"allOf": [{"type": "integer", "minimum": 0}, {"type": "integer", "maximum": 9}]}),
    ("maximum", {"maximum": 3, "allOf": [{"type": "integer", "minimum": 0}]}),
    ("type", {"type": "integer", "maximum": 3, "allOf": [{"type": "integer", "minimum": 0}]}),
    ("minimum", {"type": "integer", "multipleOf": 7, "minimum": 10}),
    ("maxLength", {"$defs": {"s": STR}, "$ref": "#/$defs/s", "maxLength": 2}),
    ("type", {"type": "integer", "anyOf": [{"type": "integer", "minimum": 5}]}),
    ("oneOf", {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "integer", "maximum": 10}]}),
    ("multipleOf", {"type": "number", "multipleOf": 0.5}),
    ("multipleOf", {"type": "integer", "multipleOf": 4096}),
    ("minLength", {"minLength": 2}),
    ("minimum", {"minimum": 2}),
    ("minItems", {"minItems": 1}),
    ("required", {"type": "object", "required": ["z"]}),
    ("enum", {"type": "string", "enum": ["a", 1]}),
    ("minimum", {"type": "integer", "enum": [1, 2], "minimum": 2}),
    ("maxLength", {"type": "string", "pattern": "^a*$", "maxLength": 2}),
    ("maxLength", {"type": "string", "format": "date", "maxLength": 3}),
    ("pattern", {"type": "string", "format": "date", "pattern": "^1"}),
    ("format", {"type": "string", "format": "password"}),
    ("items", {"type": "array", "items": [INT]}),
    ("additionalItems", {"type": "array", "prefixItems": [INT], "additionalItems": False}),
    ("$anchor", {"$defs": {"x": {"$anchor": "x", "type": "integer"}}, "$ref": "#x"}),
    ("$schema", {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"}),
    ("nullable", {"type": "string", "nullable": True}),
]


@pytest.mark.parametrize(("keyword", "schema"), REFUSED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(REFUSED)])
def test_unenforced_keywords_are_refused_with_their_name_and_place(
    keyword: str, schema: dict[str, Any]
) -> None:
    wrapped = {"type": "object", "properties": {"field": schema}, "required": ["field"]}
    if "$defs" in schema or "$schema" in schema:
        wrapped = schema  # pointers and dialects live at the root
    message = refused(wrapped).message
    assert f'"{keyword}"' in message
    assert ("#/properties/field" if wrapped is not schema else "at #") in message


@pytest.mark.parametrize(
    "pattern", [r"^a\Z", r"\Aa", r"^\D$", r"^\S$", r"^\W$", r"^[^\d]$", r"^(?!a).$", r"^(?i)a$", "a^b", "a$b"]
)
def test_patterns_xgrammar_reads_differently_are_refused(pattern: str) -> None:
    assert '"pattern"' in refused({"type": "string", "pattern": pattern}).message


@pytest.mark.parametrize("where", ["properties", "prefixItems", "anyOf", "$defs"])
def test_the_schema_false_is_refused_where_it_cannot_compile(where: str) -> None:
    holder: Any = {"x": False} if where in ("properties", "$defs") else [False]
    schema = {"type": "object", where: holder} if where == "properties" else {where: holder}
    if where == "prefixItems":
        schema["type"] = "array"
    refused(schema)


def test_messages_quote_only_a_prefix_of_caller_values() -> None:
    for schema in (
        {"x" * 5000: 1},
        {"$ref": "http://" + "a" * 5000},
        {"type": "string", "format": "f" * 5000},
        {"type": "object", "properties": {"p" * 5000: {"not": INT}}},
    ):
        assert len(refused(schema).message) < 400


# ------------------------------------------------------------ allowed keywords: the grammar enforces


@pytest.fixture(scope="module")
def compiler(request: pytest.FixtureRequest) -> JsonSchemaCompiler:
    from transformers import PreTrainedTokenizerFast

    fixtures: Path = request.getfixturevalue("fixtures_dir")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(fixtures / "phi35v-tiny")
    return JsonSchemaCompiler(tokenizer, 32064, [int(tokenizer.eos_token_id)])


def grammar_accepts(compiler: JsonSchemaCompiler, schema: dict[str, Any], text: str) -> bool:
    matcher = compiler.compile(schema).matcher
    return bool(matcher.accept_string(text)) and bool(matcher.is_completed())


OBJ = {"type": "object", "properties": {"a": INT, "b": STR}, "required": ["a"]}
CAT = {"type": "object", "properties": {"t": {"const": "cat", "type": "string"}, "n": INT}, "required": ["t"]}
DOG = {"type": "object", "properties": {"t": {"const": "dog", "type": "string"}}, "required": ["t"]}
# keyword: (schema, instances that keep it, instances that break it); all compact JSON.
ALLOWED: dict[str, tuple[dict[str, Any], list[str], list[str]]] = {
    "type": ({"type": "string"}, ['"a"'], ["1", "null", "true"]),
    "type list": ({"type": ["string", "null"]}, ['"a"', "null"], ["1", "[]"]),
    "integer": (INT, ["1", "-3"], ["1.5", '"1"']),
    "number": ({"type": "number"}, ["1", "1.5", "-2e3"], ['"1"', "null"]),
    "boolean": ({"type": "boolean"}, ["true"], ["1", "null"]),
    "null": ({"type": "null"}, ["null"], ["0", '""']),
    "enum": ({"enum": ["a", 1, None]}, ['"a"', "1", "null"], ['"b"', "2"]),
    "enum with type": ({"type": ["string", "null"], "enum": ["a", None]}, ['"a"', "null"], ['"c"']),
    "const": ({"const": {"a": [1, 2]}}, ['{"a":[1,2]}'], ['{"a":[1]}', "{}"]),
    "minLength": ({"type": "string", "minLength": 2}, ['"ab"'], ['"a"', '"😀"', r'"\ud83d\ude00"']),
    "maxLength": ({"type": "string", "maxLength": 2}, ['"ab"', '"é😀"'], ['"abc"']),
    "pattern": ({"type": "string", "pattern": "^[a-c]+[0-9]?$"}, ['"ab1"'], ['"d"', '"a12"', '""']),
    "pattern unanchored": ({"type": "string", "pattern": "b"}, ['"b"'], ['"a"']),
    "pattern dot": ({"type": "string", "pattern": "^.$"}, ['"a"'], [r'"\n"', r'"\u000a"']),
    "format": ({"type": "string", "format": "date"}, ['"2020-01-02"'], ['"x"', '"2020-1-2"']),
    "format email": ({"type": "string", "format": "email"}, ['"a@b.co"'], ['"x"']),
    "format uuid": (
        {"type": "string", "format": "uuid"},
        ['"123e4567-e89b-12d3-a456-426614174000"'],
        ['"x"'],
    ),
    "minimum": ({"type": "integer", "minimum": 2}, ["2", "30"], ["1", "-5"]),
    "maximum": ({"type": "number", "maximum": 2}, ["2", "1.5"], ["2.1", "1e5", "3"]),
    "exclusiveMinimum": ({"type": "number", "exclusiveMinimum": 2}, ["2.1"], ["2", "2.0", "1"]),
    "exclusiveMaximum": ({"type": "integer", "exclusiveMaximum": 2}, ["1"], ["2", "3"]),
    "fractional bounds": ({"type": "number", "minimum": 0.5, "maximum": 1.5}, ["1"], ["0.4", "1.6"]),
    "multipleOf": ({"type": "integer", "multipleOf": 7}, ["14", "-7", "1001", "0"], ["15", "-8", "1000"]),
    "multipleOf 1000": (
        {"type": ["integer", "null"], "multipleOf": 1000},
        ["3000", "null"],
        ["3001", "-999"],
    ),
    "properties": (OBJ, ['{"a":1}', '{"a":1,"b":"x"}'], ['{"a":"x"}', '{"b":"x"}', "1"]),
    "required": (OBJ, ['{"a":1}'], ["{}", '{"b":"x"}']),
    "additionalProperties false": (
        {**OBJ, "additionalProperties": False},
        ['{"a":1}'],
        ['{"a":1,"c":1}'],
    ),
    "additionalProperties schema": (
        {"type": "object", "properties": {"a": INT}, "additionalProperties": STR},
        ['{"a":1,"z":"x"}'],
        ['{"z":1}'],
    ),
    "minProperties": (
        {"type": "object", "properties": {"a": INT, "b": INT}, "minProperties": 1},
        ['{"a":1}'],
        ["{}"],
    ),
    "maxProperties": (
        {"type": "object", "additionalProperties": INT, "maxProperties": 1},
        ['{"a":1}'],
        ['{"a":1,"b":2}'],
    ),
    "items": ({"type": "array", "items": INT}, ["[]", "[1,2]"], ['["a"]', "[1,null]"]),
    "prefixItems": (
        {"type": "array", "prefixItems": [INT, STR], "items": False},
        ['[1,"a"]', "[1]"],
        ['["a"]', '[1,"a",2]'],
    ),
    "minItems": ({"type": "array", "items": INT, "minItems": 2}, ["[1,2]"], ["[1]", "[]"]),
    "maxItems": ({"type": "array", "items": INT, "maxItems": 1}, ["[1]"], ["[1,2]"]),
    "anyOf": ({"anyOf": [INT, STR]}, ["1", '"a"'], ["null", "[]"]),
    "oneOf disjoint": ({"oneOf": [INT, STR], "title": "t"}, ["1", '"a"'], ["null"]),
    "oneOf discriminated": (
        {"$defs": {"Cat": CAT, "Dog": DOG}, "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]},
        ['{"t":"cat","n":1}', '{"t":"dog"}'],
        ['{"t":"cow"}', '{"n":1}', '{"t":"cat","n":"x"}'],
    ),
    "allOf single": (
        {
            "description": "d",
            "allOf": [{"$ref": "#/$defs/x"}],
            "$defs": {"x": {"type": "integer", "minimum": 0}},
        },
        ["5"],
        ["-1", '"a"'],
    ),
    "$ref": (
        {
            "$defs": {"x": INT},
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/x"}},
            "required": ["a"],
        },
        ['{"a":1}'],
        ['{"a":"z"}'],
    ),
    "$ref deep pointer": (
        {
            "definitions": {"x": {"type": "object", "properties": {"y": INT}}},
            "$ref": "#/definitions/x/properties/y",
        },
        ["1"],
        ['"a"'],
    ),
    "length range": ({"type": "string", "minLength": 1, "maxLength": 2}, ['"a"', '"ab"'], ['""', '"abc"']),
    "number range": (
        {"type": "number", "exclusiveMinimum": -1, "maximum": 1},
        ["0", "1", "-0.5"],
        ["-1", "1.01", "2"],
    ),
    "items range": (
        {"type": "array", "items": INT, "minItems": 1, "maxItems": 2},
        ["[1]"],
        ["[]", "[1,2,3]"],
    ),
    "format nullable": ({"type": ["string", "null"], "format": "ipv4"}, ['"1.2.3.4"', "null"], ['"1.2.3"']),
    "true subschema": (
        {"type": "object", "properties": {"a": True}, "required": ["a"]},
        ['{"a":[1]}'],
        ["{}"],
    ),
    "annotations": (
        {"type": "integer", "title": "t", "description": "d", "default": 1, "examples": [1]},
        ["1"],
        ['"1"'],
    ),
}


@pytest.mark.parametrize("name", list(ALLOWED))
def test_allowed_keywords_are_enforced_by_the_grammar(compiler: JsonSchemaCompiler, name: str) -> None:
    schema, good, bad = ALLOWED[name]
    vet_schema(schema)
    # With a FormatChecker, so that "breaks the schema" covers format too; local refs only, no fetch.
    validator = safe_validator(schema).evolve(format_checker=jsonschema.FormatChecker())
    for text in good:
        assert validator.is_valid(json.loads(text)), text  # the example itself is right
        assert grammar_accepts(compiler, schema, text), text
    for text in bad:
        assert not validator.is_valid(json.loads(text)), text  # it really breaks the schema
        assert not grammar_accepts(compiler, schema, text), text  # and the grammar cannot produce it


# ------------------------------------------------------------------------------ compiler messages


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 1.5},
        {"type": "integer", "maximum": 10**20},
        {"type": "string", "pattern": "^(a)\\1$"},
        {"type": "string", "minLength": 5, "maxLength": 2},
    ],
)
def test_compiler_messages_carry_no_paths_or_internals(
    compiler: JsonSchemaCompiler, schema: dict[str, Any]
) -> None:
    with pytest.raises(SchemaError) as caught:
        compiler.compile(schema)
    message = str(caught.value)
    assert caught.value.code == "E1301"
    assert len(message) < 500
    for internal in ("/project", ".cc", "cpp/", "Check failed", "["):
        assert internal not in message, message


def test_clean_reason_strips_log_prefix_and_paths() -> None:
    raw = "[12:00:00] /project/cpp/json_schema_converter.cc:123: Check failed: (x) is false: " + "y" * 900
    reason = clean_reason(RuntimeError(raw))
    assert reason.startswith("yyy") and len(reason) <= 200 and "/" not in reason


# ------------------------------------------------------------------------------- the final check


def test_validate_output_bounds_its_message_and_survives_deep_answers() -> None:
    schema = {"type": "string", "maxLength": 3}
    with pytest.raises(GenerationError) as caught:
        validate_output(json.dumps("z" * 5000), schema, max_new_tokens=10)
    assert caught.value.code == "E2032" and len(str(caught.value)) < 500
    with pytest.raises(GenerationError) as deep:
        validate_output("[" * 100_000 + "]" * 100_000, {}, max_new_tokens=10)
    assert deep.value.code == "E2032"
    assert validate_output('{"a":1}', OBJ, max_new_tokens=10) == {"a": 1}
