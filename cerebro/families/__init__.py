# Written with AI assistance; review before relying on it.
"""Registry of model families: which module serves which checkpoint.

    family      module:Class                                        model_type in config.json
    phi3_v      cerebro.families.phi3_v:Phi3VFamily                 phi3_v
    hf_vlm      cerebro.families.hf_vlm:HFVisionLanguageFamily      transformers image-text-to-text types
    caption     cerebro.families.caption:CaptionFamily              vision-encoder-decoder

`CEREBRO_FAMILY=auto` (the default) reads `model_type` from the checkpoint's config.json; a family name
overrides it. Adding a family: one module with a Family subclass (cerebro/families/base.py) and one line
in `FAMILIES` (and `MODEL_TYPES` when it claims a model_type). Families are imported only when chosen.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from cerebro.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from cerebro.families.base import Family

FAMILIES: dict[str, str] = {
    "phi3_v": "cerebro.families.phi3_v:Phi3VFamily",
    "hf_vlm": "cerebro.families.hf_vlm:HFVisionLanguageFamily",
    "caption": "cerebro.families.caption:CaptionFamily",
}
MODEL_TYPES: dict[str, str] = {  # config.json model_type -> family; hf_vlm also takes transformers' list
    "phi3_v": "phi3_v",
    "vision-encoder-decoder": "caption",
}
AUTO = "auto"


def names() -> list[str]:
    return sorted(FAMILIES)


def image_text_to_text_types() -> frozenset[str]:
    """The model types transformers serves through AutoModelForImageTextToText (its own list)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return frozenset(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def read_model_type(model_dir: Path) -> str:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(
            f"{path} cannot be read as JSON ({type(err).__name__})", field="CEREBRO_MODEL_DIR", code="E2012"
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise WeightsError(f"{path} has no model_type", field="CEREBRO_MODEL_DIR", code="E2013")
    return model_type


def family_name_for(model_type: str) -> str:
    """The family that serves a checkpoint's model_type; E2013 listing what is supported otherwise."""
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    if model_type in image_text_to_text_types():
        return "hf_vlm"
    raise WeightsError(
        f"model_type {model_type!r} is not served by Cerebro. Supported: "
        f"{', '.join(sorted(MODEL_TYPES))}, and transformers' image-text-to-text types (for example "
        "idefics3, smolvlm, qwen2_vl, llava); set CEREBRO_FAMILY to one of "
        f"{names()} to override",
        field="CEREBRO_MODEL_DIR",
        code="E2013",
    )


def get_family(name: str, model_dir: Path) -> type[Family]:
    """The Family class for CEREBRO_FAMILY=`name` (auto: from model_dir/config.json)."""
    if name == AUTO:
        name = family_name_for(read_model_type(model_dir))
    entry = FAMILIES.get(name)
    if entry is None:
        raise ConfigError(
            f"CEREBRO_FAMILY={name!r} is not a model family; use {AUTO} or one of {names()}",
            field="CEREBRO_FAMILY",
        )
    module, _, cls = entry.partition(":")
    family: type[Family] = getattr(importlib.import_module(module), cls)
    return family
