# Written with AI assistance; review before relying on it.
"""Vetting of a caller's JSON Schema before any work: only what the constrained decoder really enforces.

The rule: a request with a schema is either guaranteed to produce JSON that validates, or it fails here,
before generating, with E1301 naming the keyword and where it is (a JSON pointer). "Enforced" was decided
by experiment against xgrammar 0.2.8 (compact separators, strict mode): for each allowed keyword the
compiled grammar rejects an instance that breaks it (tests/unit/test_schema_guard.py keeps that proof).
Where xgrammar ignores a keyword, or honours it alone but drops it next to another, the schema is refused.

Also here: no schema can make the server fetch or read anything. Only `#`-pointer references inside the
document resolve, and `safe_validator` validates with a registry whose retrieve function refuses.

Messages quote at most a short prefix of anything the caller sent. Not here: parsing the text
(cerebro/request.py), compiling the grammar and checking the answer (cerebro/structured.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from cerebro.errors import SchemaError

MAX_SCHEMA_DEPTH = 32  # subschema levels from the root, each followed $ref counting as one level
MAX_JSON_DEPTH = 2 * MAX_SCHEMA_DEPTH + 16  # nested JSON containers anywhere in the document
MAX_EXPANDED_NODES = 100_000  # subschemas with every $ref expanded (a diamond of refs doubles per level)
MAX_MULTIPLE_OF = 1000  # xgrammar 0.2.8 enforced multipleOf up to 1024 in our tests, not from 1025 on
_QUOTE_CHARS = 80

# Annotations change nothing the validator checks.
ANNOTATIONS = frozenset(
    {"title", "description", "examples", "default", "$comment", "deprecated", "readOnly", "writeOnly"}
    | {"discriminator"}  # OpenAPI/pydantic: a hint only; oneOf is checked for disjoint branches below
)
STRING_KEYWORDS = frozenset({"minLength", "maxLength", "pattern", "format"})
NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
OBJECT_KEYWORDS = frozenset(
    {"properties", "required", "additionalProperties", "minProperties", "maxProperties"}
)
ARRAY_KEYWORDS = frozenset({"items", "prefixItems", "minItems", "maxItems"})
COMBINATORS = ("$ref", "anyOf", "oneOf", "allOf")
ALLOWED = (
    frozenset({"type", "enum", "const", "$defs", "definitions", "$schema", "$id", *COMBINATORS})
    | STRING_KEYWORDS
    | NUMBER_KEYWORDS
    | OBJECT_KEYWORDS
    | ARRAY_KEYWORDS
)
# What xgrammar 0.2.8 ignores or gets wrong (each was accepted by the grammar while breaking the schema,
# or cannot work without fetching); the reason is shown to the caller.
REFUSED: dict[str, str] = {
    "not": "the decoder cannot enforce negation",
    "if": "the decoder cannot enforce conditionals",
    "then": "the decoder cannot enforce conditionals",
    "else": "the decoder cannot enforce conditionals",
    "uniqueItems": "the decoder cannot enforce unique items",
    "contains": "the decoder cannot enforce contains",
    "minContains": "the decoder cannot enforce contains",
    "maxContains": "the decoder cannot enforce contains",
    "patternProperties": "the decoder does not support patternProperties",
    "propertyNames": "the decoder drops propertyNames next to properties",
    "dependentRequired": "the decoder cannot enforce dependencies",
    "dependentSchemas": "the decoder cannot enforce dependencies",
    "dependencies": "the decoder cannot enforce dependencies",
    "unevaluatedProperties": "use additionalProperties instead",
    "unevaluatedItems": "use items instead",
    "additionalItems": "use prefixItems and items instead",
    "$dynamicRef": "only #/... references inside the schema are supported",
    "$recursiveRef": "only #/... references inside the schema are supported",
    "$dynamicAnchor": "only #/... references inside the schema are supported",
    "$recursiveAnchor": "only #/... references inside the schema are supported",
    "$anchor": "only #/... references inside the schema are supported",
    "$vocabulary": "custom vocabularies are not supported",
    "contentEncoding": "the decoder cannot enforce encoded content",
    "contentMediaType": "the decoder cannot enforce encoded content",
    "contentSchema": "the decoder cannot enforce encoded content",
}
# Formats xgrammar 0.2.8 turns into a grammar (garbage strings were rejected). Others it ignores: the
# final check would not catch that either (jsonschema checks `format` only with a FormatChecker, which
# we do not pass), so an unknown format would silently mean nothing; refuse it instead of pretending.
FORMATS = frozenset(
    {"date", "time", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference"}
    | {"uri-template", "uuid", "json-pointer", "relative-json-pointer"}
)
DIALECTS = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema",
    }
)
_JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})


def vet_schema(schema: dict[str, Any]) -> None:
    """Refuse, before any work, a schema the decoder cannot guarantee or that would fetch something.

    Robust on any parsed JSON (never recurses; safe to run before jsonschema's check_schema, which
    recurses): E1301 for unsupported or unsafe features and nesting limits, E1300 for malformed parts.
    """
    _Vetter(schema).run()  # first: it stops at MAX_SCHEMA_DEPTH and names the place
    check_json_depth(schema)  # then values the walk does not enter (const, enum, default, examples)


def safe_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for the schema's dialect whose registry never retrieves anything."""
    import jsonschema
    from referencing import Registry

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, registry=Registry(retrieve=_refuse_retrieval))  # type: ignore[call-arg]


def _refuse_retrieval(uri: str) -> Any:
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(uri)  # referencing reports this as an unresolvable reference; nothing fetched


# ----------------------------------------------------------------------------------------- messages


def _quote(value: Any) -> str:
    """A short, escaped prefix of a caller's value."""
    text = value if isinstance(value, str) else type(value).__name__
    clipped = text[:_QUOTE_CHARS]
    return json.dumps(clipped) + ("…" if len(text) > _QUOTE_CHARS else "")


def _where(path: tuple[str, ...]) -> str:
    """The JSON pointer of a subschema, escaped and shortened to about _QUOTE_CHARS."""
    pointer = json.dumps("#" + "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path))[1:-1]
    if len(pointer) > _QUOTE_CHARS:
        pointer = pointer[: _QUOTE_CHARS // 2] + "…" + pointer[-_QUOTE_CHARS // 2 :]
    return pointer


def _refuse(path: tuple[str, ...], what: str, code: str = "E1301") -> SchemaError:
    message = f"json_schema at {_where(path)} {what}"
    return SchemaError(message[:400], field="json_schema", code=code)


def _unsupported(path: tuple[str, ...], keyword: str, reason: str) -> SchemaError:
    return _refuse(path, f"uses {_quote(keyword)}, which the constrained decoder cannot guarantee: {reason}")


# ---------------------------------------------------------------------------------------- structure


def check_json_depth(document: Any) -> None:
    """E1301 when JSON containers nest deeper than MAX_JSON_DEPTH (iterative: safe at any depth). Run it
    before anything that recurses through the document, such as jsonschema's check_schema."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise SchemaError(
                f"json_schema nests JSON objects and arrays more than {MAX_JSON_DEPTH} levels deep; the "
                f"limit is {MAX_JSON_DEPTH}",
                field="json_schema",
                code="E1301",
            )
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _types(node: dict[str, Any], path: tuple[str, ...]) -> set[str] | None:
    raw = node.get("type")
    if raw is None:
        return None
    names = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else None
    if not names or not all(isinstance(n, str) and n in _JSON_TYPES for n in names):
        raise _refuse(path, 'has a malformed "type"', code="E1300")
    return set(names)


def _conforms(value: Any, types: set[str]) -> bool:
    """Whether jsonschema would count `value` as one of `types` (1.0 is an integer, True is not)."""
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, int):
        return bool(types & {"integer", "number"})
    if isinstance(value, float):
        return "number" in types or ("integer" in types and value.is_integer())
    kinds = {str: "string", list: "array", dict: "object", type(None): "null"}
    return kinds.get(type(value)) in types


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _scalar_key(value: Any) -> tuple[str, Any] | None:
    """An equality key matching jsonschema's (1 == 1.0, True != 1); None for objects and arrays."""
    if isinstance(value, (list, dict)):
        return None
    return (_kind(value), value)


# (child, its path, evaluated?, may it be the schema false?)
_Children = Iterator[tuple[Any, tuple[str, ...], bool, bool]]


class _Vetter:
    """One pass over every subschema (iterative), then the reference graph from the root."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.paths: dict[int, tuple[str, ...]] = {}  # id(node) -> where it sits
        self.edges: dict[int, list[Any]] = {}  # id(node) -> subschemas that are evaluated
        self.refs: dict[int, Any] = {}  # id(node) -> the node its $ref points at
        self.one_ofs: list[tuple[tuple[str, ...], list[Any]]] = []

    def run(self) -> None:
        pending: list[tuple[Any, tuple[str, ...], int]] = [(self.root, (), 0)]
        while pending:
            node, path, depth = pending.pop()
            if depth > MAX_SCHEMA_DEPTH:
                raise _refuse(
                    path,
                    f"nests subschemas more than {MAX_SCHEMA_DEPTH} levels deep; the limit is "
                    f"{MAX_SCHEMA_DEPTH}",
                )
            self.paths[id(node)] = path
            if isinstance(node, bool):
                self.edges[id(node)] = []
                continue
            self.edges[id(node)] = []
            for child, child_path, evaluated, may_be_false in self._check_node(node, path):
                if child is False and not may_be_false:
                    raise _refuse(
                        child_path,
                        "is the schema false, which the constrained decoder cannot "
                        "compile there (false is supported for additionalProperties and items)",
                    )
                if evaluated:
                    self.edges[id(node)].append(child)
                pending.append((child, child_path, depth + 1))
        self._resolve_refs()
        self._check_graph()
        for path, branches in self.one_ofs:
            self._check_disjoint(path, branches)

    def _check_node(self, node: Any, path: tuple[str, ...]) -> _Children:
        """Check one subschema's keywords, then yield its subschemas."""
        if not isinstance(node, dict):
            raise _refuse(path, f"is a {type(node).__name__}, not a schema", code="E1300")
        for key in node:
            if key in ANNOTATIONS or key.startswith("x-"):
                continue
            if key in REFUSED:
                if key == "uniqueItems" and node[key] is False:
                    continue  # uniqueItems: false asks for nothing
                raise _unsupported(path, key, REFUSED[key])
            if key not in ALLOWED:
                raise _unsupported(path, key, "it is not a keyword the decoder knows")
        if path and ("$schema" in node or "$id" in node):
            raise _unsupported(path, "$id" if "$id" in node else "$schema", "only the root may set it")
        if "$schema" in node and str(node["$schema"]).rstrip("#") not in DIALECTS:
            raise _unsupported(
                path,
                "$schema",
                f"dialect {_quote(node['$schema'])} is not one of 2020-12, 2019-09, draft-07, draft-06",
            )
        types = _types(node, path)
        self._check_types_present(node, path, types)
        self._check_values(node, path, types)
        self._check_strings(node, path)
        self._check_numbers(node, path, types)
        self._check_objects(node, path)
        self._check_combinators(node, path)
        yield from self._children(node, path)

    def _check_types_present(
        self, node: dict[str, Any], path: tuple[str, ...], types: set[str] | None
    ) -> None:
        # Without an explicit type xgrammar dropped minLength, minimum, minItems... (it guessed the type).
        for keywords, needs in (
            (STRING_KEYWORDS, {"string"}),
            (NUMBER_KEYWORDS, {"integer", "number"}),
            (OBJECT_KEYWORDS, {"object"}),
            (ARRAY_KEYWORDS, {"array"}),
        ):
            for key in keywords & node.keys():
                if types is None or not types & needs:
                    wanted = " or ".join(sorted(needs))
                    raise _refuse(
                        path,
                        f'uses {_quote(key)} without "type": {wanted}; the constrained '
                        "decoder enforces it only next to an explicit type",
                    )

    def _check_values(self, node: dict[str, Any], path: tuple[str, ...], types: set[str] | None) -> None:
        present = [k for k in ("enum", "const") if k in node]
        if not present:
            return
        key = present[0]
        # xgrammar emits the listed values and drops every other keyword beside them.
        others = [
            k
            for k in node
            if k not in ANNOTATIONS
            and k not in ("type", "enum", "const", "$defs", "definitions", "$schema", "$id")
        ]
        if len(present) > 1 or others:
            other = present[1] if len(present) > 1 else others[0]
            raise _unsupported(
                path, other, f"the decoder only lists the {key} values and drops other keywords beside them"
            )
        values = node["enum"] if key == "enum" else [node["const"]]
        if not isinstance(values, list) or not values:
            raise _refuse(path, f"has a malformed {_quote(key)}", code="E1300")
        if types is not None and not all(_conforms(v, types) for v in values):
            raise _unsupported(path, key, 'a listed value is not of the "type" beside it')

    def _check_strings(self, node: dict[str, Any], path: tuple[str, ...]) -> None:
        # xgrammar honours pattern, format and the length bounds alone, and drops lengths or the pattern
        # when two of them meet.
        if "pattern" in node or "format" in node:
            clash = sorted(STRING_KEYWORDS & node.keys())
            if len(clash) > 1:
                raise _unsupported(path, clash[1], f"the decoder drops it next to {_quote(clash[0])}")
        if "format" in node and not (isinstance(node["format"], str) and node["format"] in FORMATS):
            raise _unsupported(
                path, "format", f"format {_quote(node['format'])} is not one the decoder enforces"
            )
        if "pattern" in node:
            pattern = node["pattern"]
            if not isinstance(pattern, str):
                raise _refuse(path, 'has a malformed "pattern"', code="E1300")
            problem = _pattern_problem(pattern)
            if problem:
                raise _unsupported(path, "pattern", f"{problem} is not supported in patterns")

    def _check_numbers(self, node: dict[str, Any], path: tuple[str, ...], types: set[str] | None) -> None:
        for key in NUMBER_KEYWORDS & node.keys():
            value = node[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _refuse(path, f"has a malformed {_quote(key)}", code="E1300")
        if "multipleOf" in node:
            step = node["multipleOf"]
            # xgrammar dropped multipleOf beside a single bound (minimum 10: 15 passed), and beyond 1024.
            bounds = sorted(NUMBER_KEYWORDS & node.keys() - {"multipleOf"})
            if bounds:
                raise _unsupported(path, bounds[0], 'the decoder drops "multipleOf" beside numeric bounds')
            integer_only = types in ({"integer"}, {"integer", "null"})
            if not (integer_only and step == int(step) and 1 <= step <= MAX_MULTIPLE_OF):
                raise _unsupported(
                    path,
                    "multipleOf",
                    f'only a whole step from 1 to {MAX_MULTIPLE_OF} on "type": "integer" is enforced',
                )

    def _check_objects(self, node: dict[str, Any], path: tuple[str, ...]) -> None:
        properties = node.get("properties", {})
        if not isinstance(properties, dict):
            raise _refuse(path, 'has a malformed "properties"', code="E1300")
        required = node.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _refuse(path, 'has a malformed "required"', code="E1300")
        for name in required:
            if name not in properties:
                # xgrammar let {} through for a required name that is not listed in properties.
                raise _unsupported(
                    path, "required", f"property {_quote(name)} is required but not listed in properties"
                )

    def _check_combinators(self, node: dict[str, Any], path: tuple[str, ...]) -> None:
        present = [k for k in COMBINATORS if k in node]
        if not present:
            return
        key = present[0]
        # xgrammar drops keywords beside $ref, anyOf, oneOf and allOf (tested: maxLength, maximum, type).
        structural = ("$defs", "definitions", "$schema", "$id")
        others = [k for k in node if k != key and k not in ANNOTATIONS and k not in structural]
        if others:
            raise _unsupported(
                path, others[0], f"the decoder drops it beside {_quote(key)}; move it into the subschemas"
            )
        if key == "$ref":
            return
        branches = node[key]
        if not isinstance(branches, list) or not branches:
            raise _refuse(path, f"has a malformed {_quote(key)}", code="E1300")
        if key == "allOf" and len(branches) != 1:
            raise _unsupported(path, "allOf", "only one subschema is enforced; merge them into one")
        if key == "oneOf":
            self.one_ofs.append((path, branches))

    def _children(self, node: dict[str, Any], path: tuple[str, ...]) -> _Children:
        for key in ("properties", "$defs", "definitions"):
            if key in node:
                mapping = node[key]
                if not isinstance(mapping, dict):
                    raise _refuse(path, f"has a malformed {_quote(key)}", code="E1300")
                for name, child in mapping.items():
                    yield child, (*path, key, name), key == "properties", False
        for key in ("additionalProperties", "items"):
            if key in node:
                if isinstance(node[key], list):
                    raise _unsupported(path, key, "the array form is not supported; use prefixItems")
                yield node[key], (*path, key), True, True  # false: enforced here
        for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
            if key in node:
                if not isinstance(node[key], list):
                    raise _refuse(path, f"has a malformed {_quote(key)}", code="E1300")
                for i, child in enumerate(node[key]):
                    yield child, (*path, key, str(i)), True, False

    # ------------------------------------------------------------------------------------ references

    def _resolve_refs(self) -> None:
        nodes = [n for n in self._all_nodes() if isinstance(n, dict) and "$ref" in n]
        for node in nodes:
            path = self.paths[id(node)]
            ref = node["$ref"]
            if not isinstance(ref, str):
                raise _refuse(path, 'has a malformed "$ref"', code="E1300")
            if ref != "#" and not ref.startswith("#/"):
                raise _unsupported(
                    path,
                    "$ref",
                    f"reference {_quote(ref)} is not a #/ pointer into this "
                    "schema; nothing is fetched or read",
                )
            segments = ref[2:].split("/") if ref != "#" else []
            if any("~" in s or "%" in s for s in segments):
                raise _unsupported(path, "$ref", f"reference {_quote(ref)} uses ~ or % escapes")
            target: Any = self.root
            for segment in segments:
                if isinstance(target, list):
                    raise _unsupported(
                        path, "$ref", f"reference {_quote(ref)} points into an array; point at $defs instead"
                    )
                if not isinstance(target, dict) or segment not in target:
                    raise _refuse(path, f"has $ref {_quote(ref)}, which points at nothing", code="E1300")
                target = target[segment]
            if id(target) not in self.paths:
                raise _refuse(
                    path,
                    f"has $ref {_quote(ref)}, which points at something that is not a subschema",
                    code="E1300",
                )
            self.refs[id(node)] = target

    def _all_nodes(self) -> Iterator[Any]:
        seen: set[int] = set()
        stack: list[Any] = [self.root]
        while stack:
            node = stack.pop()
            if id(node) in seen or id(node) not in self.paths:
                continue
            seen.add(id(node))
            yield node
            if isinstance(node, dict):
                stack.extend(c for c in _subschemas(node))

    def _successors(self, node: Any) -> list[Any]:
        target = self.refs.get(id(node))
        return [*self.edges.get(id(node), []), *([target] if target is not None else [])]

    def _check_graph(self) -> None:
        """Refuse $ref cycles, and measure depth and size with every $ref expanded (iteratively)."""
        depth: dict[int, int] = {}
        size: dict[int, int] = {}
        on_path: set[int] = set()
        stack: list[tuple[Any, Iterator[Any]]] = [(self.root, iter(self._successors(self.root)))]
        on_path.add(id(self.root))
        while stack:
            node, successors = stack[-1]
            child = next(successors, None)
            if child is None:
                stack.pop()
                on_path.discard(id(node))
                kids = self._successors(node)
                depth[id(node)] = max((depth[id(k)] + 1 for k in kids), default=0)
                size[id(node)] = min(MAX_EXPANDED_NODES + 1, 1 + sum(size[id(k)] for k in kids))
                if depth[id(node)] > MAX_SCHEMA_DEPTH:
                    raise _refuse(
                        self.paths[id(node)],
                        f"nests more than {MAX_SCHEMA_DEPTH} levels deep once "
                        f"its $refs are followed; the limit is {MAX_SCHEMA_DEPTH}",
                    )
                if size[id(node)] > MAX_EXPANDED_NODES:
                    raise _refuse(
                        self.paths[id(node)],
                        f"expands to more than {MAX_EXPANDED_NODES} subschemas "
                        f"once its $refs are followed; the limit is {MAX_EXPANDED_NODES}",
                    )
                continue
            if id(child) in on_path:
                ref = node.get("$ref", "") if isinstance(node, dict) else ""
                raise _unsupported(
                    self.paths[id(node)],
                    "$ref",
                    f"reference {_quote(ref)} makes the schema "
                    "recursive, so the output could nest without end",
                )
            if id(child) not in depth:
                on_path.add(id(child))
                stack.append((child, iter(self._successors(child))))

    def _resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and id(node) in self.refs:  # acyclic: checked before
            node = self.refs[id(node)]
        return node

    # ------------------------------------------------------------------------------------------ oneOf

    def _check_disjoint(self, path: tuple[str, ...], branches: list[Any]) -> None:
        # xgrammar treats oneOf as anyOf; that is the same only when no value can match two branches.
        for i, a in enumerate(branches):
            for b in branches[i + 1 :]:
                if not self._disjoint(self._resolve(a), self._resolve(b)):
                    raise _unsupported(
                        path,
                        "oneOf",
                        "its branches may overlap (the decoder enforces only "
                        "anyOf); give each branch a distinct type or a required const property",
                    )

    def _disjoint(self, a: Any, b: Any) -> bool:
        kinds_a, kinds_b = self._kinds(a), self._kinds(b)
        if kinds_a is not None and kinds_b is not None and not kinds_a & kinds_b:
            return True
        values_a, values_b = self._values(a), self._values(b)
        if values_a is not None and values_b is not None and not values_a & values_b:
            return True
        if kinds_a == {"object"} and kinds_b == {"object"}:
            shared = set(a.get("required", [])) & set(b.get("required", []))
            for name in shared:
                tag_a = self._values(self._resolve(a["properties"][name]))
                tag_b = self._values(self._resolve(b["properties"][name]))
                if tag_a is not None and tag_b is not None and not tag_a & tag_b:
                    return True
        return False

    @staticmethod
    def _kinds(node: Any) -> set[str] | None:
        if not isinstance(node, dict) or any(k in node for k in COMBINATORS):
            return None
        if "const" in node or "enum" in node:
            return {_kind(v) for v in (node["enum"] if "enum" in node else [node["const"]])}
        raw = node.get("type")
        if raw is None:
            return None
        names = {raw} if isinstance(raw, str) else set(raw)
        return {"number" if n == "integer" else n for n in names}

    @staticmethod
    def _values(node: Any) -> set[tuple[str, Any]] | None:
        if not isinstance(node, dict) or not ("const" in node or "enum" in node):
            return None
        keys: set[tuple[str, Any]] = set()
        for value in node["enum"] if "enum" in node else [node["const"]]:
            key = _scalar_key(value)
            if key is None:
                return None
            keys.add(key)
        return keys


def _subschemas(node: dict[str, Any]) -> Iterator[Any]:
    for key in ("properties", "$defs", "definitions"):
        yield from node.get(key, {}).values()
    for key in ("additionalProperties", "items"):
        if key in node:
            yield node[key]
    for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
        yield from node.get(key, [])


# ----------------------------------------------------------------------------------------- patterns

_SIMPLE_ESCAPES = frozenset("tnrfv")
_CLASS_ESCAPES = frozenset("dws")  # xgrammar's are ASCII, Python's Unicode: a subset, so sound
_HEX = frozenset("0123456789abcdefABCDEF")


def _pattern_problem(pattern: str) -> str | None:
    """The first construct xgrammar 0.2.8 gets wrong against Python's re.search, or None.

    Experiments: xgrammar read \\Z, \\A and \\z as letters, let \\D, \\S, \\W and [^\\d] match Unicode
    digits and spaces that Python excludes, ignored lookahead, and ignored ^ and $ inside the pattern.
    """
    i, n = 0, len(pattern)
    in_class = negated = False
    while i < n:
        char = pattern[i]
        if char == "\\":
            escape = pattern[i + 1 : i + 2]
            if not escape:
                return "a trailing backslash"
            width = {"x": 2, "u": 4}.get(escape, 0)
            if width:
                digits = pattern[i + 2 : i + 2 + width]
                if len(digits) != width or not set(digits) <= _HEX:
                    return f"the escape {_quote(pattern[i : i + 2 + width])}"
                i += 2 + width
                continue
            shown = _quote(pattern[i : i + 2])
            if escape in _CLASS_ESCAPES and in_class and negated:
                return f"{shown} inside a negated class"
            punctuation = escape.isascii() and not escape.isalnum()
            if not (escape in _CLASS_ESCAPES or escape in _SIMPLE_ESCAPES or punctuation):
                return f"the escape {shown}"
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class, negated = True, pattern[i + 1 : i + 2] == "^"
            i += 2 if negated else 1
            continue
        elif char == "(" and pattern[i + 1 : i + 2] == "?":
            rest = pattern[i + 2 : i + 4]
            if not (rest[:1] == ":" or rest == "P<" or (rest[:1] == "<" and rest[1:2] not in ("=", "!"))):
                return f"the group {_quote(pattern[i : i + 4])} (lookaround, flags or backreferences)"
        elif char == "^" and i != 0:
            return "^ other than at the very start"
        elif char == "$" and i != n - 1:
            return "$ other than at the very end"
        i += 1
    return None
