# Written with AI assistance; review before relying on it.
"""cog.yaml is valid for Cog and agrees with the rest of the project, and so is every recipe
`cerebro cog-yaml` writes for the other model families.

`cog build` cannot run here (no Docker), so these checks stand in for it: the file validates against Cog's own
JSON schema (read from the shared directory, never copied into the project) and repeats no fact differently
from pyproject.toml and requirements.txt.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cerebro.deploy import PHI35_VISION, PHI35_VISION_REVISION, cog_yaml
from cerebro.settings import DEFAULT_MODEL_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
COG_YAML = REPO_ROOT / "cog.yaml"
WEIGHTS_REPO = PHI35_VISION
WEIGHTS_DIR = DEFAULT_MODEL_DIR
# One recipe per family, as a deployer would write them (the revisions of the last two are made up: these
# tests check the recipe's shape, not the Hub).
RECIPES: dict[str, tuple[str, str, dict[str, str]]] = {
    "phi3_v": (PHI35_VISION, PHI35_VISION_REVISION, {}),
    "hf_vlm": ("HuggingFaceTB/SmolVLM-256M-Instruct", "a" * 40, {"CEREBRO_MAX_IMAGES": "4"}),
    "caption": ("nlpconnect/vit-gpt2-image-captioning", "b" * 40, {"CEREBRO_FAMILY": "caption"}),
}

# The CUDA build of each torch release's Linux x86-64 wheel on PyPI, from the wheel's own metadata
# (torch 2.13.0 requires cuda-toolkit==13.0.3 and nvidia-cudnn-cu13). Add a row when torch is bumped.
PYPI_TORCH_CUDA = {"2.13.0": "13.0"}


def shared_dir() -> Path:
    return Path(os.environ.get("CEREBRO_SHARED_DIR") or REPO_ROOT.parent / "shared")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return dict(yaml.safe_load(COG_YAML.read_text()))


@pytest.fixture(scope="module")
def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[name.lower()] = version
    return pins


def _cog_schema() -> dict[str, Any]:
    schema_path = shared_dir() / "cog" / "config_schema_v1.0.json"
    if not schema_path.is_file():
        reason = f"Cog's cog.yaml schema not found at {schema_path} (set CEREBRO_SHARED_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return dict(json.loads(schema_path.read_text()))


def test_cog_yaml_validates_against_cogs_schema(config: dict[str, Any]) -> None:
    jsonschema.validate(config, _cog_schema(), cls=jsonschema.Draft7Validator)


def test_cog_yaml_is_the_generators_output_for_phi35() -> None:
    """One recipe for every deployment: the committed file is exactly what `cerebro cog-yaml` writes."""
    assert COG_YAML.read_text() == cog_yaml(PHI35_VISION, PHI35_VISION_REVISION)


@pytest.mark.parametrize("family", sorted(RECIPES))
def test_each_familys_recipe_is_valid_cog_and_pins_its_model(family: str) -> None:
    model_id, revision, environment = RECIPES[family]
    recipe = yaml.safe_load(cog_yaml(model_id, revision, environment))
    jsonschema.validate(recipe, _cog_schema(), cls=jsonschema.Draft7Validator)
    (step,) = recipe["build"]["run"]
    argv = shlex.split(step)
    assert argv[:3] == ["hf", "download", model_id]
    assert argv[argv.index("--revision") + 1] == revision
    assert argv[argv.index("--local-dir") + 1] == WEIGHTS_DIR
    assert recipe.get("environment") == ([f"{k}={v}" for k, v in environment.items()] or None)
    config = dict(yaml.safe_load(COG_YAML.read_text()))
    for key in ("run", "concurrency"):
        assert recipe[key] == config[key]
    assert {k: v for k, v in recipe["build"].items() if k != "run"} == {
        k: v for k, v in config["build"].items() if k != "run"
    }


@pytest.mark.parametrize(
    ("model_id", "revision", "environment", "named"),
    [
        ("not a repo", "a" * 40, {}, "model id"),
        ("owner/name", "main", {}, "revision"),
        ("owner/name", "A" * 40, {}, "revision"),
        ("owner/name", "a" * 40, {"PATH": "/tmp"}, "PATH"),
        ("owner/name", "a" * 40, {"CEREBRO_FAMILY": 'x"\nrun: evil'}, "CEREBRO_FAMILY"),
    ],
)
def test_the_generator_refuses_what_would_not_pin_or_would_inject(
    model_id: str, revision: str, environment: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        cog_yaml(model_id, revision, environment)


def test_python_version_is_the_projects(config: dict[str, Any]) -> None:
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r"==(\d+\.\d+)\.\*", requires)
    assert match, f"requires-python {requires!r} is not of the form '==X.Y.*'"

    assert str(config["build"]["python_version"]) == match.group(1)


def test_python_requirements_is_the_one_pin_list(config: dict[str, Any]) -> None:
    assert config["build"]["python_requirements"] == "requirements.txt"
    assert (REPO_ROOT / "requirements.txt").is_file()


def test_cuda_matches_the_torch_wheel(config: dict[str, Any], requirement_pins: dict[str, str]) -> None:
    torch_pin = requirement_pins["torch"]
    assert torch_pin in PYPI_TORCH_CUDA, f"torch=={torch_pin}: add its PyPI wheel's CUDA to PYPI_TORCH_CUDA"

    assert config["build"]["gpu"] is True
    assert config["build"]["cuda"] == PYPI_TORCH_CUDA[torch_pin]


def test_runner_reference_names_an_existing_class(config: dict[str, Any]) -> None:
    runner_ref = config.get("run") or config.get("predict")
    assert runner_ref, "cog.yaml names no runner (`run:`)"
    path, _, class_name = runner_ref.partition(":")
    source = REPO_ROOT / path
    assert source.is_file(), f"cog.yaml runs {runner_ref}, but {path} does not exist"

    tree = ast.parse(source.read_text())
    classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert class_name in classes, f"{path} defines no class {class_name!r} (it has {sorted(classes)})"


def test_weights_step_downloads_the_pinned_revision(config: dict[str, Any]) -> None:
    commands = [step if isinstance(step, str) else step["command"] for step in config["build"].get("run", [])]
    downloads = [shlex.split(c) for c in commands if WEIGHTS_REPO in c]
    assert len(downloads) == 1, f"expected one build step that downloads {WEIGHTS_REPO}: {commands}"
    argv = downloads[0]

    assert argv[:3] == ["hf", "download", WEIGHTS_REPO]
    assert re.fullmatch(r"[0-9a-f]{40}", argv[argv.index("--revision") + 1]), "pin a full commit SHA"
    assert argv[argv.index("--local-dir") + 1] == WEIGHTS_DIR
    included = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--include"]
    assert "*.safetensors" in included
    assert not any(pattern.endswith(".py") for pattern in included), "the remote code must stay out"


def test_concurrency_max_is_the_runners(config: dict[str, Any]) -> None:
    """Replicate reads concurrency.max from cog.yaml; `cog build` and our server read the decorator on
    run(). Both must say the same, or the deployment queues what the runner could serve."""
    from cerebro.predict import CONCURRENCY, Predictor

    assert config["concurrency"]["max"] == CONCURRENCY
    assert Predictor.run.__cog_concurrent_max__ == CONCURRENCY  # type: ignore[attr-defined]
    assert CONCURRENCY > 1


def test_the_cli_writes_the_same_recipe_and_refuses_a_branch(tmp_path: Path) -> None:
    import io

    from cerebro.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    assert main(["cog-yaml", PHI35_VISION, "--revision", PHI35_VISION_REVISION], out=out, err=err) == 0
    assert out.getvalue() == COG_YAML.read_text()
    target = tmp_path / "cog.yaml"
    argv = ["cog-yaml", "o/n", "--revision", "c" * 40, "--env", "CEREBRO_FAMILY=caption"]
    argv += ["--out", str(target)]
    assert main(argv, out=out, err=err) == 0
    assert yaml.safe_load(target.read_text())["environment"] == ["CEREBRO_FAMILY=caption"]
    assert main(["cog-yaml", "o/n", "--revision", "main"], out=out, err=err) == 2
    assert err.getvalue().startswith("error: InputError: E1001 revision 'main' is not a 40-character")
