# Written with AI assistance; review before relying on it.
"""The user's answer tests: the real Phi-3.5-vision-instruct counts the people in a real photo.

Runs only where CEREBRO_REAL_MODEL_DIR names the real checkpoint (config.json and the real safetensors);
elsewhere it skips with that reason. The predictor runs in this process, as `cerebro predict --model-dir`
does, with every input given explicitly, greedy and at most 8 new tokens; the whole answer (whitespace
stripped) must be exactly the number of people in the photo.

The photo is NASA's public-domain portrait of astronaut Eileen Collins (one person), as scikit-image ships
it in `skimage/data/astronaut.png` (`skimage.data.astronaut()`). It is read from the installed package at
test time, never copied into this repository. Only the file is read: skimage is not imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]

MODEL_DIR_ENV = "CEREBRO_REAL_MODEL_DIR"
PHOTO_PACKAGE, PHOTO_REQUIREMENT = "skimage", "scikit-image==0.26.0"
PHOTO_FILE = Path("data", "astronaut.png")
PEOPLE_IN_PHOTO = 1

PROMPTS = {
    "how_many_people": (
        "Tell me how many people are in this image. Your answer should be just a single number, for example "
        '"2". When I ask you how many people are in the image you must only output a number with no '
        "additional text. For example if I asked you how many people were in an image and there were 2 "
        'people you would only respond with "2".'
    ),
    "foreground_subjects": (
        "Count the number of subjects in the image. There will be an obvious background and foreground, and "
        "you will tell me how many objects you see in the foreground. Your answer should be just a single "
        'number, for example "2". When I ask you how many people are in the image you must only output a '
        "number with no additional text. For example if I asked you how many people were in an image and "
        'there were 2 people you would only respond with "2".'
    ),
}


def real_model_dir() -> Path:
    """The checkpoint folder; skips when the variable is unset, fails when it names no checkpoint."""
    raw = os.environ.get(MODEL_DIR_ENV, "").strip()
    if not raw:
        pytest.skip(f"real weights absent: set {MODEL_DIR_ENV}")
    path = Path(raw).expanduser().resolve()
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        pytest.fail(
            f"{MODEL_DIR_ENV}={raw} is not a checkpoint folder (no config.json or *.safetensors there)"
        )
    return path


def photo_path() -> Path:
    """The photo from the installed package; fails (weights are present by now) when it is missing."""
    spec = importlib.util.find_spec(PHOTO_PACKAGE)  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / PHOTO_FILE
        if candidate.is_file():
            return candidate
    pytest.fail(
        f"the test photo {PHOTO_PACKAGE}/{PHOTO_FILE} is not installed; install {PHOTO_REQUIREMENT} "
        "(requirements-dev.txt) to run the real-weight tests"
    )


@pytest.fixture(scope="module")
def predictor() -> Iterator[Any]:
    model_dir = real_model_dir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CEREBRO_MODEL_DIR", str(model_dir))  # Settings.from_env() reads it in setup()
        from cerebro.predict import Predictor

        class MetricsPredictor(Predictor):
            """Keeps the metrics a Cog server would attach to the prediction."""

            metrics: dict[str, Any]

            def record_metric(self, key: str, value: Any, mode: str = "replace") -> None:
                self.metrics[key] = value

        runner = MetricsPredictor()
        runner.metrics = {}
        runner.setup()
        yield runner


@pytest.mark.parametrize("prompt", list(PROMPTS.values()), ids=list(PROMPTS))
def test_real_model_answers_with_the_number_of_people(predictor: Any, prompt: str) -> None:
    photo = photo_path()
    predictor.metrics = {}

    from cerebro.predict import iterate, run_inputs

    # In-process, Cog's Input() defaults are not filled in: run_inputs gives every input.
    inputs = run_inputs(prompt=prompt, image=photo, max_new_tokens=8, temperature=0.0, seed=0, num_crops=16)
    pieces = list(iterate(predictor.run(**inputs)))

    answer = "".join(pieces)
    assert answer.strip() == str(PEOPLE_IN_PHOTO), f"answer {answer!r}; metrics {predictor.metrics}"
    assert 1 <= predictor.metrics["output_token_count"] <= 8
