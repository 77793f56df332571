# Written with AI assistance; review before relying on it.
"""Every model family behind the real Cog server (coglet), over real HTTP, on tiny random checkpoints.

One server per family, started exactly as a deployment starts it: CEREBRO_MODEL_DIR only, the family
picked from config.json's model_type. Each answers a prediction with its metrics, streams server-sent
events, keeps a JSON schema where the family has constrained decoding, refuses with coded errors what it
cannot honour, and then still serves a normal request. Known truth: the text the server sends equals what
the same runner answers in-process for the same request (greedy), which the family tests in
tests/integration compare with transformers' own `generate`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest

from cerebro.models.tiny_hf import WRITERS
from cerebro.predict import Predictor, iterate, run_inputs

from .conftest import server_log
from .test_cerebro_server import (
    CORRUPT_PNG_URI,
    PNG,
    RUNNER_REF,
    assert_failed,
    assert_succeeded,
    data_uri,
    wait_ready,
)

if TYPE_CHECKING:
    from .conftest import CogHTTP

pytestmark = pytest.mark.fixtures

# kind -> (the family config.json selects, constrained decoding?, a prompt, the engine setup() builds)
FAMILIES: dict[str, tuple[str, bool, str, str]] = {
    "smolvlm": ("hf_vlm", True, "What is in this image?", "Engine"),  # batching: a Llama decoder
    "qwen2_vl": ("hf_vlm", True, "What is in this image?", "PlainEngine"),  # 3-D M-RoPE positions
    "caption": ("caption", False, "", "PlainEngine"),  # an encoder-decoder
}
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "teal"]}},
    "required": ["ok", "color"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(
    request: pytest.FixtureRequest,
    cog_server: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
    tokenizer_dir: Path,
) -> tuple[str, Path, str]:
    """(kind, checkpoint folder, server URL) of one family's server."""
    kind: str = request.param
    folder = WRITERS[kind](tmp_path_factory.mktemp(f"tiny-{kind}"), tokenizer_dir, seed=7)
    url = cog_server(RUNNER_REF, env={"CEREBRO_MODEL_DIR": str(folder), "CEREBRO_LOG_LEVEL": "INFO"})
    return kind, folder, url


def _inputs(kind: str, **overrides: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "prompt": FAMILIES[kind][2],
        "image": data_uri(PNG),
        "max_new_tokens": 6,
        "temperature": 0.0,
        "seed": 0,
    }
    inputs.update(overrides)
    return inputs


def _in_process(folder: Path, monkeypatch: pytest.MonkeyPatch, **inputs: Any) -> str:
    """The same runner's answer in this process (Predictor.setup -> run), for the same request."""
    monkeypatch.setenv("CEREBRO_MODEL_DIR", str(folder))
    monkeypatch.setenv("CEREBRO_WARMUP", "false")
    monkeypatch.delenv("CEREBRO_FAMILY", raising=False)
    predictor = Predictor()
    predictor.setup()
    return "".join(iterate(predictor.run(**run_inputs(**inputs))))


def test_each_family_answers_with_metrics_and_the_in_process_text(
    family: tuple[str, Path, str], cog_http: CogHTTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, folder, url = family
    status, body = cog_http.predict(url, {"input": _inputs(kind)})
    assert_succeeded(status, body, max_new_tokens=6)
    assert "".join(body["output"]) == _in_process(folder, monkeypatch, **_inputs(kind))
    log = server_log(url)
    assert f"family={FAMILIES[kind][0]}" in log  # setup() chose it from config.json
    assert f"engine={FAMILIES[kind][3]} " in log  # and says which engine serves it


def test_each_family_streams_server_sent_events(family: tuple[str, Path, str], cog_http: CogHTTP) -> None:
    kind, _, url = family
    request = {"input": _inputs(kind, max_new_tokens=8)}
    events = list(cog_http.events(f"{url}/predictions", request))
    assert events[0].name == "start" and events[-1].name == "completed"
    outputs = [e.data for e in events if e.name == "output"]
    assert outputs and [o["index"] for o in outputs] == list(range(len(outputs)))
    completed = events[-1].data
    assert completed["status"] == "succeeded", completed.get("error")
    assert completed["output"] == [o["chunk"] for o in outputs]
    status, body = cog_http.predict(url, request)  # greedy: the same text without streaming
    assert status == 200 and "".join(body["output"]) == "".join(o["chunk"] for o in outputs)


def test_json_schema_is_kept_or_refused_by_capability(
    family: tuple[str, Path, str], cog_http: CogHTTP
) -> None:
    kind, _, url = family
    status, body = cog_http.predict(
        url, {"input": _inputs(kind, json_schema=json.dumps(SCHEMA), max_new_tokens=48)}
    )
    if FAMILIES[kind][1]:
        assert_succeeded(status, body, max_new_tokens=48)
        jsonschema.validate(json.loads("".join(body["output"])), SCHEMA)
    else:
        assert_failed(status, body, "E1303")
        assert "json_schema" in body["error"]
    assert_succeeded(*cog_http.predict(url, {"input": _inputs(kind)}), max_new_tokens=6)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"num_crops": 4}, "E1002"),  # Phi-3.5's option: no other family has it
        ({"image": CORRUPT_PNG_URI}, "E1103"),
        ({"image": "/etc/passwd"}, "E1106"),
        ({"images": [data_uri(PNG)] * 20}, "E1100"),
    ],
    ids=["num_crops", "corrupt-image", "local-path", "too-many-images"],
)
def test_coded_errors_then_a_normal_request(
    family: tuple[str, Path, str], cog_http: CogHTTP, overrides: dict[str, Any], code: str
) -> None:
    kind, _, url = family
    assert_failed(*cog_http.predict(url, {"input": _inputs(kind, **overrides)}), code)
    assert wait_ready(url) == "READY"
    assert_succeeded(*cog_http.predict(url, {"input": _inputs(kind)}), max_new_tokens=6)
