# Written with AI assistance; review before relying on it.
"""cog.yaml for a model: `cerebro cog-yaml MODEL_ID --revision SHA` writes the Cog build recipe that bakes
that checkpoint into the image at a pinned revision.

The project's own cog.yaml is this function's output for Phi-3.5-vision-instruct (a test checks they are
equal), so every deployment shares one recipe: the Python and CUDA versions, the one requirements file, the
runner reference and the concurrency. What changes per model is the download step and `environment:`
(CEREBRO_FAMILY when config.json's model_type should not decide, and any other CEREBRO_* setting).

Not here: validation against Cog's schema (tests/unit/test_cog_yaml.py does it for every family), the
families themselves (cerebro/families).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cerebro.settings import DEFAULT_MODEL_DIR

PHI35_VISION = "microsoft/Phi-3.5-vision-instruct"
# main after the "fix_rope_scaling (#28)" commit: the code our parity fixtures describe.
PHI35_VISION_REVISION = "4a0d683eba9f1d0cbfb6151705d1ee73c25a80ca"
CONCURRENCY = 32  # cerebro/predict.py's @concurrent(max=...) says the same (a test checks)
RUNNER = "cerebro/predict.py:Predictor"
# Weights, configs, tokenizer files (tokenizer.json, *.model, vocab/merges *.txt) and chat templates;
# never the repository's *.py: Cerebro runs no remote code.
INCLUDE = ("*.safetensors", "*.json", "*.model", "*.txt", "*.jinja")

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_ENV_NAME = re.compile(r"^CEREBRO_[A-Z0-9_]+$")

_TEMPLATE = """\
# Written with AI assistance; review before relying on it.
# Cog build recipe for Cerebro serving {model_id}.
# Written by `cerebro cog-yaml` (cerebro/deploy.py); edit the generator, not this file. Schema: Cog's
# pkg/config/data/config_schema_v1.0.json; tests/unit/test_cog_yaml.py validates it.

build:
  gpu: true
  # Equals pyproject's requires-python (==3.11.*), so the image runs the interpreter CI tests with.
  python_version: "3.11"
  # The one list of runtime pins; pyproject.toml reads the same file.
  python_requirements: requirements.txt
  # torch==2.13.0 from PyPI is the CUDA 13.0 build on Linux x86-64 (it requires cuda-toolkit==13.0.3 and
  # nvidia-cudnn-cu13). Named explicitly so the base image never drifts from the wheel.
  cuda: "13.0"
  run:
    # Bake the weights into the image at build time at a pinned revision, so setup() reads a local
    # directory and the server never reaches the Hub. Only weights, configs, tokenizer files and chat
    # templates: Cerebro never runs a repository's remote code, so *.py files stay out of the image.
    - >-
      hf download {model_id}
      --revision {revision}
      --local-dir {model_dir}
      {includes}
      --exclude "*.py"
{environment}
# The Cog boundary: `run` is Cog 0.23's key for the runner (`predict` is its deprecated alias).
run: "{runner}"

# Predictions served at once (cerebro/predict.py's @concurrent(max=CONCURRENCY) says the same; a test
# checks). The engine decodes up to CEREBRO_MAX_BATCH of them together; the rest wait in its queue.
concurrency:
  max: {concurrency}
"""


def cog_yaml(model_id: str, revision: str, environment: Mapping[str, str] | None = None) -> str:
    """The cog.yaml text for `model_id` (a Hub repository) at `revision` (a 40-hex commit: a branch or
    tag name can move, and the image must be reproducible). `environment`: CEREBRO_* settings baked into
    the image, e.g. {"CEREBRO_FAMILY": "hf_vlm"}. Raises ValueError naming the bad argument."""
    if not _MODEL_ID.match(model_id):
        raise ValueError(f"model id {model_id!r} is not of the form OWNER/NAME")
    if not _REVISION.match(revision):
        raise ValueError(
            f"revision {revision!r} is not a 40-character commit hash (pin a commit, not a branch)"
        )
    lines = []
    for name, value in (environment or {}).items():
        if not _ENV_NAME.match(name) or "\n" in value or '"' in value:
            raise ValueError(
                f"environment entry {name!r}: a CEREBRO_* name and a one-line value without quotes"
            )
        lines.append(f'  - "{name}={value}"')
    env_block = ""
    if lines:
        env_block = "\n# Deployment settings (cerebro/settings.py), read once in setup().\nenvironment:\n"
        env_block += "\n".join(lines) + "\n"
    return _TEMPLATE.format(
        model_id=model_id,
        revision=revision,
        model_dir=DEFAULT_MODEL_DIR,
        includes=" ".join(f'--include "{pattern}"' for pattern in INCLUDE),
        environment=env_block,
        runner=RUNNER,
        concurrency=CONCURRENCY,
    )
