# Written with AI assistance; review before relying on it.
"""Tiny random-weight Phi-3.5-vision checkpoints in the official layout, for tests and demos.

The architecture is the real one at toy sizes (hidden 64, two decoder layers, a 32-wide two-layer CLIP
tower at 336 px), so every code path runs in seconds on a CPU. The weights are random: generated text is
meaningless. A tokenizer is copied from a folder the caller names (for example the real tokenizer files
in ../shared/fixtures/phi35v-tiny); nothing is downloaded.

Not here: loading (weights.py does that, and tests load these checkpoints through it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from cerebro.errors import WeightsError
from cerebro.models.phi3_v.configuration import Phi3VConfig
from cerebro.models.phi3_v.modeling import Phi3VForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
REQUIRED_TOKENIZER_FILE = TOKENIZER_FILES[0]  # without it no tokenizer loads: the model cannot run
WTE_NAME = "model.vision_embed_tokens.wte.weight"
EMBED_NAME = "model.embed_tokens.weight"


def tiny_config_dict(**overrides: Any) -> dict[str, Any]:
    """An official-schema config.json at toy sizes; keyword arguments override top-level keys."""
    head_dim = overrides.get("hidden_size", 64) // overrides.get("num_attention_heads", 4)
    half = head_dim // 2
    config: dict[str, Any] = {
        "architectures": ["Phi3VForCausalLM"],
        "model_type": "phi3_v",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 32000,
        "vocab_size": 32064,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "su",
            "short_factor": [1.0 + 0.5 * i for i in range(half)],
            "long_factor": [1.0 + 8.0 * i for i in range(half)],
        },
        "sliding_window": 262144,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "embd_layer": {
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "img_processor": {
            "image_dim_out": 32,
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 336,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
    }
    config.update(overrides)
    return config


def random_model(config: Phi3VConfig, seed: int = 0, std: float = 0.02) -> Phi3VForCausalLM:
    """Phi3VForCausalLM with seeded random weights: normal(0, std) matrices, unit norms, small biases."""
    model = Phi3VForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                param.copy_(
                    1.0 + 0.1 * torch.randn(param.shape, generator=gen)
                    if name.endswith("weight")
                    else 0.02 * torch.randn(param.shape, generator=gen)
                )
            else:
                param.copy_(std * torch.randn(param.shape, generator=gen))
    return model.eval().requires_grad_(False)


def save_checkpoint(
    model: Phi3VForCausalLM,
    out_dir: str | Path,
    *,
    shards: int = 1,
    embed_names: tuple[str, ...] = (EMBED_NAME,),
) -> None:
    """Write safetensors in the official layout: one file, or `shards` files plus an index. The shared
    embedding is stored under each name in `embed_names` (the official file stores both)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {n: t.contiguous().clone() for n, t in model.state_dict().items()}
    embed = state.pop(EMBED_NAME)
    for name in embed_names:
        state[name] = embed.clone()
    names = sorted(state)
    if shards == 1:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_tiny_model(
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    seed: int = 0,
    num_crops: int = 4,
    shards: int = 1,
    **config_overrides: Any,
) -> Path:
    """A complete model folder: config.json, generation/preprocessor configs, weights, tokenizer files.

    Raises `WeightsError` (E2012) before writing anything when `tokenizer_dir` holds no tokenizer.json.
    Without `tokenizer_dir` the folder has weights and configs only (enough for the loader, not to run).
    """
    if tokenizer_dir is not None:
        check_tokenizer_dir(tokenizer_dir, field="tokenizer_dir")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_dict = tiny_config_dict(**config_overrides)
    (out / "config.json").write_text(json.dumps(config_dict, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32000})
    )
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "num_crops": num_crops,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Phi3VImageProcessor",
                "num_img_tokens": 144,
            },
            indent=2,
        )
    )
    model = random_model(Phi3VConfig.from_pretrained(str(out)), seed=seed)
    save_checkpoint(model, out, shards=shards, embed_names=(EMBED_NAME, WTE_NAME))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copyfile(src, out / name)
    return out


def check_tokenizer_dir(folder: str | Path, *, field: str) -> Path:
    """`folder` as a Path when it holds tokenizer.json; else WeightsError E2012 naming the folder."""
    path = Path(folder)
    if not (path / REQUIRED_TOKENIZER_FILE).is_file():
        what = "does not exist" if not path.exists() else f"has no {REQUIRED_TOKENIZER_FILE}"
        raise WeightsError(
            f"{field} {str(path)!r} {what}; it must hold the tokenizer files "
            f"({', '.join(TOKENIZER_FILES[:2])}), for example ../shared/fixtures/phi35v-tiny",
            field=field,
            code="E2012",
        )
    return path
