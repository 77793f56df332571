# Written with AI assistance; review before relying on it.
"""Run a Cog runner behind Cog's real HTTP server (coglet) on a machine without Docker or `cog build`.

Why this exists: in Cog 0.23 the OpenAPI schema is written by the Go CLI. `cog build` parses the runner's
source statically and bakes the document into the image as `/src/.cog/openapi_schema.json`; coglet's
worker reads `.cog/openapi_schema.json` relative to its working directory once `setup()` has finished.
Without that file coglet still serves, but validates no input (`n=99` passes `le=10`), answers
`GET /openapi.json` with an error and refuses every server-sent-event request with `406`.

- `openapi_schema(runner_ref)` builds the document the CLI would write. Inputs and output come from Cog's
  own inspector (`cog._inspector.create_predictor` and the `json_type()` methods of `cog._adt`); only the
  envelope around them (paths, request/response components, `x-cog-streaming`) is rebuilt here, after the
  CLI's `pkg/schema/openapi_spec.go`, because that code is Go and ships in no Python package.
- `serve(runner_ref, host=..., port=..., env=...)` writes the schema where coglet looks for it and runs
  `python -m cog.server.http`, returning its exit code. `python -m cerebro.serving --help` is its CLI.

What it is not: a Cog build. No image, no CUDA, no weights, no `cog.yaml` (the caller passes what the
image's environment would hold, such as COG_MAX_CONCURRENCY, in `env`). Unlike the CLI it imports the runner
module, so a runner that cannot import here cannot be served here. Predict mode only; no `train`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cog
from cog import _adt, _inspector
from cog.input import FieldInfo
from cog.predictor import _user_method_owner

logger = logging.getLogger(__name__)

# Relative to the server's working directory; in a Cog image that is /src, the project root. coglet
# 0.23.1 has no setting for another path (it logs "No schema file at .cog/openapi_schema.json").
SCHEMA_RELPATH = Path(".cog", "openapi_schema.json")

_OPTIONAL = (_adt.Repetition.OPTIONAL, _adt.Repetition.OPTIONAL_REPEATED)
_ERROR_422 = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}
_ANY_200 = {"description": "Successful Response", "content": {"application/json": {"schema": {}}}}


@dataclasses.dataclass(frozen=True)
class RunnerFacts:
    """What the schema and the server need to know about one runner class."""

    info: _adt.PredictorInfo
    defaults: dict[str, Any]  # parameter name -> its raw default (a FieldInfo, a literal, or Parameter.empty)
    streaming: bool  # run() carries @cog.streaming
    concurrency_max: int  # from @cog.concurrent(max=N); 1 when absent


def split_runner_ref(runner_ref: str) -> tuple[Path, str]:
    """'cerebro/predict.py:Predictor' -> (Path('cerebro/predict.py'), 'Predictor')."""
    path, sep, name = runner_ref.rpartition(":")
    if not sep or not path.endswith(".py") or not name.isidentifier():
        raise ValueError(f"runner_ref {runner_ref!r} is not of the form 'path/to/file.py:ClassName'")
    return Path(path), name


def inspect_runner(runner_ref: str) -> RunnerFacts:
    """Import the runner's file (relative paths from the current directory) and read its interface."""
    path, class_name = split_runner_ref(runner_ref)
    # A private module name, so that introspecting 'predict.py' never shadows or replaces a real import.
    module_name = f"_cerebro_serving_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import runner file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and get_type_hints look the module up by name
    try:
        spec.loader.exec_module(module)
        info = _inspector.create_predictor(module_name, class_name)
        runner = getattr(module, class_name)
    finally:
        sys.modules.pop(module_name, None)
    if not inspect.isclass(runner):
        raise ValueError(f"{runner_ref} names a {type(runner).__name__}, not a runner class")
    method = getattr(runner, "run" if _user_method_owner(runner, "run") is not None else "predict")
    return RunnerFacts(
        info=info,
        defaults={name: p.default for name, p in inspect.signature(method).parameters.items()},
        streaming=_declares_streaming(method),
        concurrency_max=int(getattr(method, "__cog_concurrent_max__", 1)),
    )


def openapi_schema(runner_ref: str) -> dict[str, Any]:
    """The OpenAPI 3.0.2 document `cog build` would bake into the image for this runner."""
    return build_document(inspect_runner(runner_ref))


def build_document(facts: RunnerFacts) -> dict[str, Any]:
    input_schema, enums = _input_schema(facts)
    ref = "#/components/schemas/"
    schemas: dict[str, Any] = {"Input": input_schema, "Output": facts.info.output.json_type(), **enums}
    schemas["PredictionRequest"] = {
        "title": "PredictionRequest",
        "type": "object",
        "properties": {"id": {"title": "Id", "type": "string"}, "input": {"$ref": ref + "Input"}},
    }
    schemas["PredictionResponse"] = {
        "title": "PredictionResponse",
        "type": "object",
        "properties": {
            "input": {"$ref": ref + "Input"},
            "output": {"$ref": ref + "Output"},
            "id": {"title": "Id", "type": "string"},
            "version": {"title": "Version", "type": "string"},
            "created_at": {"title": "Created At", "type": "string", "format": "date-time"},
            "started_at": {"title": "Started At", "type": "string", "format": "date-time"},
            "completed_at": {"title": "Completed At", "type": "string", "format": "date-time"},
            "status": {"title": "Status", "type": "string"},
            "error": {"title": "Error", "type": "string"},
            "logs": {"title": "Logs", "type": "string"},
            "metrics": {"title": "Metrics", "type": "object"},
        },
    }
    schemas["Status"] = {
        "title": "Status",
        "description": "An enumeration.",
        "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
        "type": "string",
    }
    schemas["HTTPValidationError"] = {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {
            "detail": {"title": "Detail", "type": "array", "items": {"$ref": ref + "ValidationError"}}
        },
    }
    schemas["ValidationError"] = {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
    }
    predict: dict[str, Any] = {
        "summary": "Predict",
        "description": "Run a single prediction on the model",
        "operationId": "predict_predictions_post",
        "requestBody": {"content": {"application/json": {"schema": {"$ref": ref + "PredictionRequest"}}}},
        "responses": {
            "200": {
                "description": "Successful Response",
                "content": {"application/json": {"schema": {"$ref": ref + "PredictionResponse"}}},
            },
            "422": _ERROR_422,
        },
    }
    if facts.streaming:
        predict["x-cog-streaming"] = True  # coglet answers `Accept: text/event-stream` only with this
    cancel = {
        "summary": "Cancel",
        "operationId": "cancel_predictions__prediction_id__cancel_post",
        "parameters": [
            {
                "required": True,
                "schema": {"title": "Prediction Id", "type": "string"},
                "name": "prediction_id",
                "in": "path",
            }
        ],
        "responses": {"200": _ANY_200, "422": _ERROR_422},
    }
    document = {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": cog.__version__},
        "paths": {
            "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": {"200": _ANY_200}}},
            "/health-check": {
                "get": {
                    "summary": "Healthcheck",
                    "operationId": "healthcheck_health_check_get",
                    "responses": {"200": _ANY_200},
                }
            },
            "/predictions": {"post": predict},
            "/predictions/{prediction_id}/cancel": {"post": cancel},
        },
        "components": {"schemas": schemas},
    }
    # A fresh copy, so that the two post-processing passes never edit the shared constants above.
    document = json.loads(json.dumps(document))
    _remove_title_next_to_ref(document)
    _fix_nullable_any_of(document)
    return document


def _input_schema(facts: RunnerFacts) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Input component and one enum component per input with choices (named after the input)."""
    properties: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    required: list[str] = []
    for name, field in sorted(facts.info.inputs.items(), key=lambda item: item[1].order):
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices:
            enums[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": list(field.choices),
                "type": field.type.primitive.json_type()["type"],
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
        else:
            prop["title"] = " ".join(word[:1].upper() + word[1:] for word in name.split("_"))
            prop.update(field.type.json_type())

        raw = facts.defaults.get(name, inspect.Parameter.empty)
        has_default = raw is not inspect.Parameter.empty
        nullable = field.type.repetition in _OPTIONAL
        # The CLI's one exception: `key: Secret = Input(default=None)` is an optional credential.
        if (
            field.type.primitive is _adt.PrimitiveType.SECRET
            and field.type.repetition is _adt.Repetition.REQUIRED
            and has_default
            and field.default is None
        ):
            nullable = True
        # A None default on a non-nullable input means "no default" (a seed drawn at run time, say).
        effective_default = has_default and (field.default is not None or nullable)
        if not effective_default and (
            field.type.union_variants is not None
            or field.type.repetition in (_adt.Repetition.REQUIRED, _adt.Repetition.REPEATED)
        ):
            required.append(name)
        if effective_default:
            prop["default"] = _json_default(field)
        if nullable:
            prop["nullable"] = True
        if field.description is not None:
            prop["description"] = field.description
        for key, value in (("minimum", field.ge), ("maximum", field.le)):
            if value is not None:
                prop[key] = int(value) if float(value).is_integer() else value
        for key, value in (("minLength", field.min_length), ("maxLength", field.max_length)):
            if value is not None:
                prop[key] = value
        if field.regex is not None:
            prop["pattern"] = field.regex
        if field.deprecated:
            prop["deprecated"] = True
        if isinstance(raw, FieldInfo) and raw.accept is not None:
            prop["x-cog-accept"] = raw.accept  # the inspector drops `accept`; read it off Input()
        properties[name] = prop

    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _json_default(field: _adt.InputField) -> Any:
    if field.default is None:
        return None
    value = field.type.json_encode(field.default)
    if isinstance(value, list):
        return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _declares_streaming(method: Callable[..., Any]) -> bool:
    """True when run() is decorated `@streaming`, `@cog.streaming` or either with parentheses.

    `cog.streaming` does nothing at run time (see cog/__init__.py); the CLI finds the decorator by reading
    the source, and so does this.
    """
    try:
        source = textwrap.dedent(inspect.getsource(method))
    except (OSError, TypeError):
        name = getattr(method, "__qualname__", method)
        logger.warning("streaming=unknown reason=no_source method=%s", name)
        return False
    node = ast.parse(source).body[0]
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name == "streaming":
            return True
    return False


def _remove_title_next_to_ref(node: Any) -> None:
    """OpenAPI 3.0 allows no sibling keywords next to `$ref`."""
    if isinstance(node, dict):
        if "$ref" in node:
            node.pop("title", None)
        for child in node.values():
            _remove_title_next_to_ref(child)
    elif isinstance(node, list):
        for child in node:
            _remove_title_next_to_ref(child)


def _fix_nullable_any_of(node: Any) -> None:
    """{"anyOf": [{"type": T}, {"type": "null"}]} -> {"type": T, "nullable": true} (OpenAPI 3.0 style)."""
    if isinstance(node, list):
        for child in node:
            _fix_nullable_any_of(child)
        return
    if not isinstance(node, dict):
        return
    for child in node.values():
        _fix_nullable_any_of(child)
    variants = node.get("anyOf")
    if not isinstance(variants, list) or len(variants) != 2 or not all(isinstance(v, dict) for v in variants):
        return
    others = [v for v in variants if v.get("type") != "null"]
    if len(others) == 1:
        del node["anyOf"]
        node.update(others[0])
        node["nullable"] = True


def write_schema(schema: Mapping[str, Any], workdir: Path) -> Path:
    """Write the schema where coglet's worker will read it when started in `workdir`; returns the path."""
    path = workdir / SCHEMA_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(schema, indent=2) + "\n")
    os.replace(partial, path)  # a server starting at this moment never reads half a file
    return path


def serve(
    runner_ref: str,
    *,
    host: str,
    port: int,
    env: Mapping[str, str],
    workdir: Path | None = None,
) -> int:
    """Serve `runner_ref` on host:port until the server exits; returns the server's exit code.

    `runner_ref` is relative to the current directory, the project root (as `run:` is in cog.yaml).
    `env` is added to this process's environment for the server (settings, COG_MAX_CONCURRENCY, ...).
    `workdir` is the server's working directory and where `.cog/openapi_schema.json` goes; it defaults to
    the project root, as in a Cog image (`.cog/` is git-ignored). Pass another directory to keep the
    checkout untouched or to run several servers at once. SIGTERM and SIGINT are passed on to the server.
    """
    project_dir = Path.cwd()
    path, class_name = split_runner_ref(runner_ref)
    facts = inspect_runner(runner_ref)
    workdir = (workdir or project_dir).resolve()
    schema_path = write_schema(build_document(facts), workdir)

    child_env = {**os.environ, **env}
    child_env["COG_PREDICT_TYPE_STUB"] = f"{(project_dir / path).resolve()}:{class_name}"
    child_env["PORT"] = str(port)
    # coglet starts its worker as `python -c ...` from PATH: put this interpreter's directory first so the
    # worker sees the same packages. The runner's own imports (`import cerebro`) resolve from the project.
    child_env["PATH"] = _prepend(str(Path(sys.executable).parent), child_env.get("PATH"))
    child_env["PYTHONPATH"] = _prepend(str(project_dir), child_env.get("PYTHONPATH"))
    # `cog build` bakes @cog.concurrent(max=N) into the image as COG_MAX_CONCURRENCY; an explicit value wins.
    if facts.concurrency_max > 1:
        child_env.setdefault("COG_MAX_CONCURRENCY", str(facts.concurrency_max))

    command = [sys.executable, "-m", "cog.server.http", "--host", host]
    logger.info(
        "serve runner=%s host=%s port=%d workdir=%s schema=%s streaming=%s",
        runner_ref,
        host,
        port,
        workdir,
        schema_path,
        facts.streaming,
    )
    process = subprocess.Popen(command, cwd=workdir, env=child_env)
    with _forward_signals(process, (signal.SIGTERM, signal.SIGINT)):
        return process.wait()


def _prepend(entry: str, search_path: str | None) -> str:
    return os.pathsep.join([entry, search_path]) if search_path else entry


@contextmanager
def _forward_signals(process: subprocess.Popen[bytes], signals: Sequence[signal.Signals]) -> Iterator[None]:
    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: nothing to install, the caller owns signals
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cerebro.serving",
        description="Serve a Cog runner with coglet, writing the OpenAPI schema `cog build` would bake in.",
    )
    parser.add_argument("runner_ref", help="path/to/file.py:ClassName, relative to the project root")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")))
    parser.add_argument("--workdir", type=Path, default=None, help="server working directory (default: .)")
    parser.add_argument("--print-schema", action="store_true", help="print the schema and exit")
    args = parser.parse_args(argv)
    if args.print_schema:
        sys.stdout.write(json.dumps(openapi_schema(args.runner_ref), indent=2) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return serve(args.runner_ref, host=args.host, port=args.port, env={}, workdir=args.workdir)


if __name__ == "__main__":
    sys.exit(main())
