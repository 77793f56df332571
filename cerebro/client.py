# Written with AI assistance; review before relying on it.
"""The client side of `cerebro predict`: send a prompt and images to a deployed Cerebro, print the answer.

Two targets, one shape of result (`--json`'s `output` is always the list of text pieces):

- `predict_replicate(model_ref, inputs)` talks to Replicate through the official `replicate` client:
  create a prediction on `owner/name` (`POST /v1/models/{owner}/{name}/predictions`) or on
  `owner/name:version` (`POST /v1/predictions` with `"version"`), then either read the prediction's
  `urls.stream` server-sent events (`event: output` / `done` / `error`) or poll
  `GET /v1/predictions/{id}` until it ends. Ctrl-C cancels it (`POST /v1/predictions/{id}/cancel`).
- `predict_url(base_url, inputs)` talks to a self-hosted Cog container (coglet's HTTP server):
  `POST {base_url}/predictions` with `{"input": ...}`. Streaming sends `Accept: text/event-stream`
  and reads Cog's events (`start`, `output` with `{"chunk", "index"}`, `log`, `metric`, `completed`
  with the final prediction); a model without `@cog.streaming` answers 406, and the client falls back
  to one synchronous request. Invalid input comes back as 422 with a JSON `detail`.

`build_inputs` turns command-line values into the predictor's input dict: local image files become
`data:` URIs, http(s) URLs pass through, a JSON schema file is read and checked to be JSON.

Every function here returns a process exit code (`EXIT_*`) and writes the answer to `out` and
messages to `err`; expected failures (missing token, rejected token, API errors, failed predictions)
never raise. `build_inputs` raises `cerebro.errors.InputError` for a bad argument; the CLI prints it
and exits with `EXIT_USAGE`.

This module is not the server: it knows nothing about the model, torch or Cog's runtime, and it does
not validate inputs beyond reading the files it is given (the server validates, and its message is
shown as is). It reads the environment only through the `environ` mapping it is handed.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import httpx
import replicate
from replicate.exceptions import ReplicateError
from replicate.identifier import ModelVersionIdentifier
from replicate.prediction import Prediction
from replicate.stream import ServerSentEvent

from cerebro.errors import ImageError, InputError, SchemaError

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments, unreadable files, missing token: nothing was sent
EXIT_AUTH = 3  # the Replicate API token was rejected
EXIT_API = 4  # API or HTTP error, invalid input, or a failed or canceled prediction
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after canceling the prediction

TOKEN_ENV = "REPLICATE_API_TOKEN"
TOKEN_HELP_URL = "https://replicate.com/account/api-tokens"
DEFAULT_REPLICATE_URL = "https://api.replicate.com"

_TERMINAL = ("succeeded", "failed", "canceled")
# Fields of a prediction that `--json` prints. The input is left out: it carries whole images.
_JSON_FIELDS = ("id", "model", "version", "status", "output", "error", "metrics")
_TIME_FIELDS = ("created_at", "started_at", "completed_at")

# Magic numbers of the image formats a browser or PIL would recognise; the extension is the fallback.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
_PASSTHROUGH = re.compile(r"^(https?://|data:)", re.IGNORECASE)


# --- inputs ---------------------------------------------------------------------------------------


def build_inputs(
    *,
    prompt: str,
    images: list[str],
    system_prompt: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    json_schema_file: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The predictor's input dict. One image goes in `image`, several in `images`; None is omitted.

    Raises `ImageError` for an image that is neither a readable file nor an http(s)/data URL,
    `SchemaError` for a schema file that cannot be read or is not JSON, and `InputError` when
    `extra` repeats a named input.
    """
    encoded = [_image_value(ref, field=f"images[{i}]") for i, ref in enumerate(images)]
    inputs: dict[str, Any] = {
        "prompt": prompt,
        "system_prompt": system_prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "json_schema": _read_schema(json_schema_file) if json_schema_file is not None else None,
    }
    if len(encoded) == 1:
        inputs["image"] = encoded[0]
    elif encoded:
        inputs["images"] = encoded
    for key, value in (extra or {}).items():
        if key in inputs and inputs[key] is not None:
            raise InputError(f"input {key!r} is given twice (as an option and in extra inputs)", field=key)
        inputs[key] = value
    return {key: value for key, value in inputs.items() if value is not None}


def _image_value(ref: str, *, field: str) -> str:
    if _PASSTHROUGH.match(ref):
        return ref
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ImageError(
            f"{field} {ref!r} is not a file here and not an http(s):// or data: URL",
            field=field,
            code="E1103",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(
            f"{field} {ref!r} cannot be read: {exc.strerror}", field=field, code="E1103"
        ) from exc
    return f"data:{_media_type(path, data)};base64,{base64.b64encode(data).decode('ascii')}"


def _media_type(path: Path, data: bytes) -> str:
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _read_schema(filename: str) -> str:
    try:
        text = Path(filename).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise SchemaError(
            f"JSON schema file {filename!r} cannot be read: {reason}", field="json_schema"
        ) from exc
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise SchemaError(
            f"JSON schema file {filename!r} is not valid JSON: {exc.msg} at {where}", field="json_schema"
        ) from exc
    return text


# --- Replicate --------------------------------------------------------------------------------------


def predict_replicate(
    model_ref: str,
    inputs: Mapping[str, Any],
    *,
    stream: bool = True,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    environ: Mapping[str, str] = os.environ,
    base_url: str | None = None,
) -> int:
    """Run one prediction on Replicate and print it. Returns an `EXIT_*` code.

    `model_ref` is `owner/name` (the model's latest version) or `owner/name:version`. The token comes
    from `environ["REPLICATE_API_TOKEN"]`; the API from `base_url`, else `REPLICATE_BASE_URL`, else
    api.replicate.com. With `as_json`, nothing is streamed and the whole prediction is printed as JSON.
    """
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        _error(err, f"{TOKEN_ENV} is not set. Create a token at {TOKEN_HELP_URL}, then export {TOKEN_ENV}.")
        return EXIT_USAGE
    try:
        owner, name, version = ModelVersionIdentifier.parse(model_ref)
    except ValueError:
        _error(err, f"model {model_ref!r} is not of the form owner/name or owner/name:version")
        return EXIT_USAGE
    api = base_url or environ.get("REPLICATE_BASE_URL") or DEFAULT_REPLICATE_URL
    client = replicate.Client(api_token=token, base_url=api)
    client.poll_interval = _float(environ.get("REPLICATE_POLL_INTERVAL"), default=client.poll_interval)

    streaming = stream and not as_json
    prediction: Prediction | None = None
    try:
        # `stream: true` asks for `urls.stream` (current Replicate returns it regardless).
        options: dict[str, Any] = {"stream": True} if streaming else {}
        if version:
            prediction = client.predictions.create(version=version, input=dict(inputs), **options)
        else:
            prediction = client.models.predictions.create(model=(owner, name), input=dict(inputs), **options)
        printed = None
        if streaming and prediction.urls and prediction.urls.get("stream"):
            printed = _stream_replicate(prediction, out, err)
            prediction.reload()  # the stream has ended: read the final state now rather than after a poll
        prediction.wait()
        return _report(_replicate_record(prediction), printed=printed, as_json=as_json, out=out, err=err)
    except KeyboardInterrupt:
        return _interrupted_replicate(prediction, err)
    except ReplicateError as exc:
        if exc.status == 401:
            _error(
                err,
                f"the Replicate API token in {TOKEN_ENV} was rejected (401). "
                f"Check it, or create a new one at {TOKEN_HELP_URL}.",
            )
            return EXIT_AUTH
        where = f" (prediction {prediction.id})" if prediction is not None else f" (model {model_ref})"
        _error(err, f"Replicate API error{_status(exc.status)}: {_replicate_message(exc)}{where}")
        return EXIT_API
    except httpx.HTTPError as exc:
        where = f" (prediction {prediction.id})" if prediction is not None else ""
        _error(err, f"could not talk to the Replicate API at {api}: {exc or type(exc).__name__}{where}")
        return EXIT_API


def _stream_replicate(prediction: Prediction, out: TextIO, err: TextIO) -> str:
    """Print output events as they come; return what was printed. The final state is read after."""
    printed: list[str] = []
    try:
        for event in prediction.stream():
            if event.event == ServerSentEvent.EventType.OUTPUT:
                # `replicate` wraps tokens that look like URLs in FileOutput; str() gives the text back.
                _write(out, str(event.data), printed)
    except RuntimeError:
        # `event: error`: the prediction failed. Its error is reported from its final state, after wait().
        pass
    except httpx.TransportError as exc:
        # A dropped or idle stream (cold boots can be quiet for minutes): fall back to polling.
        _note(err, f"note: stream interrupted ({type(exc).__name__}); waiting for prediction {prediction.id}")
    return "".join(printed)


def _interrupted_replicate(prediction: Prediction | None, err: TextIO) -> int:
    if prediction is None:
        _note(err, "interrupted before a prediction was created")
        return EXIT_INTERRUPTED
    try:
        prediction.cancel()
        _note(err, f"interrupted; canceled prediction {prediction.id}")
    except (ReplicateError, httpx.HTTPError) as exc:
        _note(err, f"interrupted; could not cancel prediction {prediction.id}: {exc}")
    return EXIT_INTERRUPTED


def _replicate_record(prediction: Prediction) -> dict[str, Any]:
    return {key: getattr(prediction, key, None) for key in (*_JSON_FIELDS, *_TIME_FIELDS)}


def _replicate_message(exc: ReplicateError) -> str:
    parts = list(dict.fromkeys(part for part in (exc.title, exc.detail) if part))  # unique, in order
    return ": ".join(parts) if parts else "no message"


# --- a self-hosted Cog server ------------------------------------------------------------------------


def predict_url(
    base_url: str,
    inputs: Mapping[str, Any],
    *,
    stream: bool = True,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    timeout_s: float = 600,
) -> int:
    """Run one prediction on a Cog HTTP server at `base_url` and print it. Returns an `EXIT_*` code.

    `timeout_s` bounds the wait for each response (and, when streaming, for each event).
    """
    base = base_url.rstrip("/")
    if not re.match(r"^https?://[^/]", base):
        _error(err, f"URL {base_url!r} must start with http:// or https://")
        return EXIT_USAGE
    body = {"input": dict(inputs)}
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
    state: dict[str, Any] = {}
    with httpx.Client(timeout=timeout) as http:
        try:
            if stream and not as_json:
                code = _stream_cog(http, base, body, state, out, err)
                if code is not None:
                    return code
            # Synchronous: the server answers once the prediction ends. Dropping the connection
            # (Ctrl-C) cancels a synchronous prediction on the server.
            response = http.post(f"{base}/predictions", json=body)
            return _finish_json(response, base, as_json=as_json, out=out, err=err)
        except KeyboardInterrupt:
            return _interrupted_cog(http, base, state.get("id"), err)
        except httpx.TimeoutException:
            _error(err, f"no answer from {base} within {timeout_s:g} s")
            return EXIT_API
        except httpx.HTTPError as exc:
            _error(err, f"could not talk to {base}: {exc or type(exc).__name__}")
            return EXIT_API


def _stream_cog(
    http: httpx.Client, base: str, body: dict[str, Any], state: dict[str, Any], out: TextIO, err: TextIO
) -> int | None:
    """Stream over Cog's SSE. Returns an exit code, or None to fall back to a synchronous request."""
    headers = {"Accept": "text/event-stream"}
    printed: list[str] = []
    with http.stream("POST", f"{base}/predictions", json=body, headers=headers) as response:
        if response.status_code == 406:
            # The model's predict() lacks @cog.streaming: the server can only answer in one piece.
            response.read()
            _note(err, "note: this server does not stream this model; waiting for the whole answer")
            return None
        if response.status_code >= 400 or not _is_event_stream(response):
            response.read()
            return _finish_json(response, base, as_json=False, out=out, err=err)
        for event, data in _sse_events(response.iter_lines()):
            payload = _loads(data)
            if event == "start" and isinstance(payload, dict):
                state["id"] = payload.get("id")
            elif event == "output" and isinstance(payload, dict):
                chunk = payload.get("chunk")
                _write(out, chunk if isinstance(chunk, str) else json.dumps(chunk), printed)
            elif event == "completed" and isinstance(payload, dict):  # the final prediction
                return _report(payload, printed="".join(printed), as_json=False, out=out, err=err)
            elif event == "error":
                message = payload.get("error") if isinstance(payload, dict) else data
                _end_line(out, printed)
                _error(err, f"stream error from {base}{_for(state.get('id'))}: {message or data}")
                return EXIT_API
    _end_line(out, printed)
    _error(err, f"the event stream from {base} ended before the prediction completed{_for(state.get('id'))}")
    return EXIT_API


def _finish_json(response: httpx.Response, base: str, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Report a prediction that came back as one JSON object (or an HTTP error)."""
    if response.status_code >= 400:
        return _http_error(response, base, err)
    record = _json_object(response)
    if record is None:
        _error(err, f"{base}/predictions answered {response.status_code} with a body that is not JSON")
        return EXIT_API
    return _report(record, printed=None, as_json=as_json, out=out, err=err)


def _is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from server-sent event lines, per the WHATWG event-stream format."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def _interrupted_cog(http: httpx.Client, base: str, prediction_id: str | None, err: TextIO) -> int:
    if prediction_id is None:
        _note(err, "interrupted")
        return EXIT_INTERRUPTED
    try:
        http.post(f"{base}/predictions/{prediction_id}/cancel", timeout=10.0)
        _note(err, f"interrupted; canceled prediction {prediction_id}")
    except httpx.HTTPError as exc:
        _note(err, f"interrupted; could not cancel prediction {prediction_id}: {exc}")
    return EXIT_INTERRUPTED


def _http_error(response: httpx.Response, base: str, err: TextIO) -> int:
    payload = _json_object(response)
    if response.status_code == 422 and payload is not None and isinstance(payload.get("detail"), list):
        problems = []
        for item in payload["detail"]:
            if isinstance(item, dict):
                loc = [str(part) for part in item.get("loc", []) if part not in ("body", "input")]
                problems.append(f"{'.'.join(loc) or 'input'}: {item.get('msg', item)}")
        _error(err, "the server refused the input (422): " + "; ".join(problems))
        return EXIT_API
    message = None
    if payload is not None:
        message = payload.get("error") or payload.get("detail")
    _error(
        err,
        f"{base}/predictions answered {response.status_code}: {message or response.text[:500] or 'no body'}"
        f"{_for(payload.get('id') if payload else None)}",
    )
    return EXIT_API


# --- shared ---------------------------------------------------------------------------------------


def _report(
    record: Mapping[str, Any], *, printed: str | None, as_json: bool, out: TextIO, err: TextIO
) -> int:
    """Print a finished prediction; `printed` is what streaming already showed (None: nothing)."""
    status = record.get("status")
    if as_json:
        shown = {key: record.get(key) for key in (*_JSON_FIELDS, *_TIME_FIELDS) if key in record}
        if "output" in shown:
            shown["output"] = output_pieces(shown["output"])
        out.write(json.dumps(shown, indent=2, ensure_ascii=False, default=str) + "\n")
        out.flush()
    else:
        shown_text = [printed or ""]
        if status == "succeeded":
            text = render_output(record.get("output"))
            if printed is None:
                _write(out, text, shown_text)
            elif text.startswith(printed):  # print what the stream missed, if anything
                _write(out, text[len(printed) :], shown_text)
        _end_line(out, shown_text)
    prediction_id = record.get("id")
    if status == "succeeded":
        return EXIT_OK
    if status == "failed":
        _error(err, f"prediction failed{_for(prediction_id)}: {record.get('error') or 'no error message'}")
    elif status == "canceled":
        _error(err, f"prediction was canceled{_for(prediction_id)}")
    elif status not in _TERMINAL:
        _error(err, f"prediction ended in an unexpected state {status!r}{_for(prediction_id)}")
    return EXIT_API


def output_pieces(output: Any) -> Any:
    """`--json`'s one shape for a text answer: the list of pieces, as the HTTP API gives it (a server that
    answered one string gives one piece; nothing gives []). Other JSON values are left as they are."""
    if output is None:
        return []
    if isinstance(output, str):
        return [output]
    return output


def render_output(output: Any) -> str:
    """A prediction's output as text: token lists are joined, other JSON values are pretty-printed."""
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(item, str) for item in output):
        return "".join(output)
    return json.dumps(output, indent=2, ensure_ascii=False, default=str)


def _write(out: TextIO, text: str, printed: list[str]) -> None:
    if text:
        out.write(text)
        out.flush()
        printed.append(text)


def _end_line(out: TextIO, printed: list[str]) -> None:
    """End the answer with a newline unless it already ends with one (or nothing was printed)."""
    last = next((part for part in reversed(printed) if part), "")
    if last and not last.endswith("\n"):
        out.write("\n")
        out.flush()


def _error(err: TextIO, message: str) -> None:
    _note(err, f"error: {message}")


def _note(err: TextIO, message: str) -> None:
    err.write(message + "\n")
    err.flush()


def _for(prediction_id: Any) -> str:
    return f" (prediction {prediction_id})" if prediction_id else ""


def _status(status: int | None) -> str:
    return f" {status}" if status else ""


def _loads(data: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        return None


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _float(value: str | None, *, default: float) -> float:
    try:
        return float(value) if value else default
    except ValueError:
        return default
