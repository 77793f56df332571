# Written with AI assistance; review before relying on it.
"""Loading the official Phi-3.5-vision checkpoint, unchanged, into Phi3VForCausalLM.

The module tree in modeling.py uses the official parameter names, so the name table is one alias: the
image embedding's `wte` is the same tensor as `model.embed_tokens` and a checkpoint may store it under
either name, or both. Loading is strict: every expected tensor present with its shape, nothing left
over; otherwise one WeightsError lists what is missing, unexpected or mis-shaped.

The model is built on the meta device (no random init of 4B parameters), tensors are read with
safetensors straight onto the target device, and the few non-persistent buffers (RoPE frequencies,
CLIP position ids) are rebuilt there. Not here: downloading weights (cog.yaml does that at build time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import GenerationConfig
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from cerebro.errors import WeightsError
from cerebro.models.attention import resolve_attention
from cerebro.models.phi3_v.configuration import Phi3VConfig

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# checkpoint name -> our name, for tensors a checkpoint may store under another name.
ALIASES = {"model.vision_embed_tokens.wte.weight": "model.embed_tokens.weight"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards named by the index, or the single file."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({model_dir / name for name in weight_map.values()})
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise WeightsError(f"{index} names shards that are not in {model_dir}: {absent}", code="E2010")
        return files
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return [single]
    raise WeightsError(
        f"no weights in {model_dir}: expected {SINGLE_FILE} or {INDEX_FILE} with its shards", code="E2010"
    )


def map_checkpoint_names(names: list[str]) -> dict[str, str]:
    """checkpoint name -> model name. An alias is used only when its target is absent; otherwise the
    duplicate is skipped (it is the same tensor)."""
    present = set(names)
    mapping = {}
    for name in names:
        target = ALIASES.get(name)
        if target is None:
            mapping[name] = name
        elif target not in present:
            mapping[name] = target
    return mapping


def check_names_and_shapes(expected: dict[str, torch.Size], found: dict[str, torch.Size]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = [
        f"{n}: checkpoint {tuple(found[n])}, model {tuple(expected[n])}"
        for n in sorted(set(expected) & set(found))
        if tuple(found[n]) != tuple(expected[n])
    ]
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected}")
        if mis_shaped:
            parts.append(f"wrong shape {len(mis_shaped)}: {mis_shaped}")
        raise WeightsError(
            "the checkpoint does not match the model config; " + "; ".join(parts), code="E2011"
        )


def resolve_dtype(dtype: Any, config: Phi3VConfig) -> torch.dtype:
    if dtype is None or dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype {dtype} is not supported; use one of {sorted(DTYPES)}")
    return dtype


def load_model(
    model_class: Callable[[Phi3VConfig], nn.Module],
    model_dir: str | Path,
    *,
    torch_dtype: Any = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
    device: str | torch.device = "cpu",
    config: Phi3VConfig | None = None,
) -> Any:
    """Build `model_class` (Phi3VForCausalLM, whose from_pretrained calls this) from an official-layout
    folder. `torch_dtype` and `dtype` are synonyms (float32, bfloat16, float16 or "auto" = the config's);
    attention is sdpa unless told otherwise. The class is passed in so this module need not import
    modeling.py (which imports this one)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise WeightsError(f"no config.json in {model_dir}", code="E2010")
    config = config or Phi3VConfig.from_pretrained(str(model_dir))
    target_dtype = resolve_dtype(torch_dtype if torch_dtype is not None else dtype, config)
    attn = resolve_attention(attn_implementation)
    config._attn_implementation = attn
    config.vision_config._attn_implementation = attn  # type: ignore[union-attr]
    device = torch.device(device)

    with torch.device("meta"):
        model: Any = model_class(config)
    expected = {n: t.shape for n, t in model.state_dict().items()}

    files = checkpoint_files(model_dir)
    state: dict[str, torch.Tensor] = {}
    found: dict[str, torch.Size] = {}
    for path in files:
        with _open(path, device) as f:
            names = list(f.keys())
            for ckpt_name, name in map_checkpoint_names(names).items():
                found[name] = torch.Size(f.get_slice(ckpt_name).get_shape())
    check_names_and_shapes(expected, found)
    for path in files:
        with _open(path, device) as f:
            try:
                for ckpt_name, name in map_checkpoint_names(list(f.keys())).items():
                    state[name] = f.get_tensor(ckpt_name).to(target_dtype)
            except (SafetensorError, OSError) as err:
                raise _unreadable(path, err) from err
    model.load_state_dict(state, strict=True, assign=True)
    rebuild_buffers(model, device)
    model.eval().requires_grad_(False)
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(model_dir))
    log.info(
        "loaded model_dir=%s files=%d dtype=%s attn=%s device=%s",
        model_dir,
        len(files),
        target_dtype,
        attn,
        device,
    )
    return model


def _open(path: Path, device: torch.device):  # type: ignore[no-untyped-def]
    try:
        return safe_open(str(path), framework="pt", device=str(device))
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: Exception) -> WeightsError:
    return WeightsError(
        f"{path} is not a readable safetensors file ({err}); download the checkpoint again",
        field="CEREBRO_MODEL_DIR",
        code="E2011",
    )


def rebuild_buffers(model: Any, device: torch.device) -> None:
    """Recreate the non-persistent buffers that stayed on the meta device (they are not in checkpoints)."""
    with torch.device(device):
        model.model.rotary_emb = Phi3RotaryEmbedding(config=model.config)
    embeddings = model.model.vision_embed_tokens.img_processor.vision_model.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
    left = [n for n, b in model.named_buffers() if b.is_meta] + [
        n for n, p in model.named_parameters() if p.is_meta
    ]
    if left:
        raise WeightsError(f"tensors left uninitialized after loading: {left}", code="E2011")
