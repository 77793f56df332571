# Written with AI assistance; review before relying on it.
"""The `python -m cerebro` command in subprocesses: write a tiny model, then predict on it in-process.

Each call is a fresh interpreter, so these tests also check that the command imports, sets up and
reports errors on its own, with nothing left over from the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from cerebro.client import EXIT_API, EXIT_USAGE
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.fixtures, pytest.mark.slow]

TIMEOUT_S = 120
SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["colour", "count"],
}


def _cerebro(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEREBRO_")}
    env["CEREBRO_WARMUP"] = "false"
    return subprocess.run(
        [sys.executable, "-m", "cerebro", *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    done = _cerebro("tiny-model", out, "--tokenizer-dir", tokenizer_dir)
    assert done.returncode == 0, done.stderr
    assert f"wrote a tiny random-weight model to {out}" in done.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-images") / "red.png"
    Image.new("RGB", (64, 48), (220, 20, 20)).save(path)
    return path


def _predict(model_dir: Path, image: Path | str, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return _cerebro(
        "predict", "--model-dir", model_dir, "--image", image, "--prompt", "What is this?", *extra
    )


def test_predict_json_prints_status_output_and_metrics(model_dir: Path, image: Path) -> None:
    done = _predict(model_dir, image, "--max-new-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    # One shape for every target: the list of text pieces, as the HTTP API (and --url, --replicate) give.
    output = result["output"]
    assert isinstance(output, list) and output and all(isinstance(piece, str) for piece in output)
    metrics = result["metrics"]
    assert 1 <= metrics["output_token_count"] <= 4
    assert metrics["input_token_count"] > 100  # the image's tokens are in the prompt
    assert metrics["time_to_first_token"] > 0
    assert "Traceback" not in done.stderr


def test_predict_streams_the_same_answer_as_json(model_dir: Path, image: Path) -> None:
    options = ("--max-new-tokens", "4", "--num-crops", "1")
    as_json = _predict(model_dir, image, *options, "--json")
    streamed = _predict(model_dir, image, *options)
    assert as_json.returncode == streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == "".join(json.loads(as_json.stdout)["output"]) + "\n"


def test_predict_with_a_json_schema_prints_valid_json(model_dir: Path, image: Path, tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    done = _predict(
        model_dir, image, "--json-schema", schema_file, "--max-new-tokens", "60", "--num-crops", "1", "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    jsonschema.validate(json.loads("".join(result["output"])), SCHEMA)


def test_a_missing_image_fails_cleanly_naming_the_field(model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    done = _predict(model_dir, missing, "--max-new-tokens", "4")
    assert done.returncode == EXIT_API
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("error: ImageError: E1103 images[0]")
    assert str(missing) in errors[0]
    assert "Traceback" not in done.stderr
    assert done.stdout.strip() == ""


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single `error: ...` line a failed command prints, with no traceback around it."""
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.mark.parametrize("kind", ["missing", "no-tokenizer-json"])
def test_tiny_model_refuses_a_tokenizer_dir_without_tokenizer_json(tmp_path: Path, kind: str) -> None:
    tokenizer_dir = tmp_path / "nonexistent"
    if kind == "no-tokenizer-json":
        tokenizer_dir.mkdir()
        (tokenizer_dir / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "tiny"
    done = _cerebro("tiny-model", out, "--tokenizer-dir", tokenizer_dir)
    assert done.returncode == EXIT_USAGE, done.stdout
    line = _one_error_line(done)
    assert line.startswith("error: WeightsError: E2012 --tokenizer-dir "), line
    assert str(tokenizer_dir) in line and "tokenizer.json" in line
    assert "wrote" not in done.stdout
    assert not out.exists()  # nothing half-written for predict to trip over later


def _copy_without(model_dir: Path, dest: Path, *names: str) -> Path:
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns(*names))
    return dest


def test_predict_on_a_model_without_a_tokenizer_is_one_coded_line(
    model_dir: Path, image: Path, tmp_path: Path
) -> None:
    broken = _copy_without(model_dir, tmp_path / "no-tokenizer", "tokenizer.json")
    done = _predict(broken, image, "--max-new-tokens", "2")
    assert done.returncode == EXIT_API
    line = _one_error_line(done)
    assert line.startswith("error: WeightsError: E2012 --model-dir "), line
    assert str(broken) in line and "tokenizer.json" in line
    assert done.stdout.strip() == ""


@pytest.mark.parametrize(
    ("name", "content"),
    [("tokenizer.json", "not json"), ("config.json", "{"), ("model.safetensors", "truncated")],
    ids=["tokenizer", "config", "weights"],
)
def test_predict_on_a_corrupt_model_folder_is_one_coded_line(
    model_dir: Path, image: Path, tmp_path: Path, name: str, content: str
) -> None:
    broken = _copy_without(model_dir, tmp_path / "corrupt", name)
    (broken / name).write_text(content)
    done = _predict(broken, image, "--max-new-tokens", "2", "--json")
    assert done.returncode == EXIT_API
    line = _one_error_line(done)
    assert line.startswith("error: WeightsError: E201"), line
    assert str(broken) in line
    assert done.stdout.strip() == ""
