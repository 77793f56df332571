# Written with AI assistance; review before relying on it.
"""cerebro.models.phi3_v.weights on tiny checkpoints written here (no ../shared needed): file layouts,
the embedding alias, strict name/shape checks with their error codes, dtypes and attention backends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cerebro.errors import ServerError, WeightsError
from cerebro.models.phi3_v import Phi3VConfig, Phi3VForCausalLM
from cerebro.models.phi3_v.tiny import (
    EMBED_NAME,
    WTE_NAME,
    random_model,
    save_checkpoint,
    tiny_config_dict,
    write_tiny_model,
)
from cerebro.models.phi3_v.weights import load_model

Q_PROJ = "model.layers.0.self_attn.qkv_proj.weight"
LM_HEAD = "lm_head.weight"


@pytest.fixture(scope="module")
def source() -> Phi3VForCausalLM:
    return random_model(Phi3VConfig(**tiny_config_dict()), seed=7)


@pytest.fixture(scope="module")
def saved_state(source: Phi3VForCausalLM) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in source.state_dict().items()}


def _folder(tmp_path: Path, model: Phi3VForCausalLM, **save_kwargs: object) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(tiny_config_dict()))
    save_checkpoint(model, tmp_path, **save_kwargs)  # type: ignore[arg-type]
    return tmp_path


def _assert_same_weights(model: Phi3VForCausalLM, saved: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(saved)
    different = [n for n in saved if not torch.equal(loaded[n], saved[n])]
    assert not different, f"weights differ after loading: {different}"


# ----------------------------------------------------------------- layouts


def test_single_file(tmp_path: Path, source: Phi3VForCausalLM, saved_state: dict) -> None:
    model = load_model(Phi3VForCausalLM, _folder(tmp_path, source), torch_dtype="float32")
    assert isinstance(model, Phi3VForCausalLM)
    assert not model.training
    _assert_same_weights(model, saved_state)


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_with_an_index(
    tmp_path: Path, source: Phi3VForCausalLM, saved_state: dict, shards: int
) -> None:
    folder = _folder(tmp_path, source, shards=shards)
    assert not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == shards
    _assert_same_weights(load_model(Phi3VForCausalLM, folder, torch_dtype="float32"), saved_state)


@pytest.mark.parametrize(
    "embed_names", [(EMBED_NAME,), (WTE_NAME,), (EMBED_NAME, WTE_NAME)], ids=["embed", "wte", "both"]
)
def test_embedding_under_either_name_or_both(
    tmp_path: Path, source: Phi3VForCausalLM, saved_state: dict, embed_names: tuple[str, ...]
) -> None:
    folder = _folder(tmp_path, source, embed_names=embed_names)
    stored = set(load_file(str(folder / "model.safetensors")))
    assert stored & {EMBED_NAME, WTE_NAME} == set(embed_names)
    model = load_model(Phi3VForCausalLM, folder, torch_dtype="float32")
    _assert_same_weights(model, saved_state)
    assert torch.equal(model.model.embed_tokens.weight, saved_state[EMBED_NAME])


def test_embedding_names_in_different_shards(
    tmp_path: Path, source: Phi3VForCausalLM, saved_state: dict
) -> None:
    # The official checkpoint has two shards; the two names of the embedding need not share one.
    folder = _folder(tmp_path, source, embed_names=(EMBED_NAME, WTE_NAME))
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    first = {n: t for n, t in state.items() if n != WTE_NAME}
    second = {WTE_NAME: state[WTE_NAME]}
    save_file(first, str(folder / "a.safetensors"))
    save_file(second, str(folder / "b.safetensors"))
    weight_map = {**dict.fromkeys(first, "a.safetensors"), **dict.fromkeys(second, "b.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _assert_same_weights(load_model(Phi3VForCausalLM, folder, torch_dtype="float32"), saved_state)


def test_write_tiny_model_without_tokenizer_loads(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path, tokenizer_dir=None, seed=3)
    assert not (folder / "tokenizer.json").exists()
    model = load_model(Phi3VForCausalLM, folder)
    assert model.dtype == torch.float32
    want = random_model(Phi3VConfig(**tiny_config_dict()), seed=3).state_dict()
    _assert_same_weights(model, want)
    assert model.generation_config.eos_token_id == 2


def test_from_pretrained_is_the_native_loader(
    tmp_path: Path, source: Phi3VForCausalLM, saved_state: dict
) -> None:
    model = Phi3VForCausalLM.from_pretrained(_folder(tmp_path, source), torch_dtype=torch.float32)
    _assert_same_weights(model, saved_state)


def test_loaded_model_has_no_meta_tensors_and_runs(tmp_path: Path, source: Phi3VForCausalLM) -> None:
    model = load_model(Phi3VForCausalLM, _folder(tmp_path, source), torch_dtype="float32")
    assert not any(t.is_meta for t in model.state_dict().values())
    assert not any(b.is_meta for b in model.buffers())
    ids = torch.tensor([[1, 15043, 29871, 13]])
    torch.testing.assert_close(model(input_ids=ids).logits, source(input_ids=ids).logits, rtol=0, atol=1e-6)


# ----------------------------------------------------------------- mismatches


def _rewrite(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_e2011_naming_it(tmp_path: Path, source: Phi3VForCausalLM) -> None:
    folder = _folder(tmp_path, source)
    _rewrite(folder, lambda s: (s.pop(Q_PROJ), s.pop(LM_HEAD)))
    with pytest.raises(WeightsError) as err:
        load_model(Phi3VForCausalLM, folder)
    assert err.value.code == "E2011"
    assert isinstance(err.value, ServerError)
    assert "missing 2" in err.value.message
    assert Q_PROJ in err.value.message and LM_HEAD in err.value.message


def test_missing_embedding_under_both_names_is_e2011(tmp_path: Path, source: Phi3VForCausalLM) -> None:
    folder = _folder(tmp_path, source, embed_names=())
    with pytest.raises(WeightsError) as err:
        load_model(Phi3VForCausalLM, folder)
    assert err.value.code == "E2011" and EMBED_NAME in err.value.message


def test_unexpected_tensor_is_e2011_naming_it(tmp_path: Path, source: Phi3VForCausalLM) -> None:
    folder = _folder(tmp_path, source)
    extra = "model.layers.7.self_attn.qkv_proj.weight"
    _rewrite(folder, lambda s: s.update({extra: torch.zeros(3, 3)}))
    with pytest.raises(WeightsError) as err:
        load_model(Phi3VForCausalLM, folder)
    assert err.value.code == "E2011"
    assert "unexpected 1" in err.value.message and extra in err.value.message


def test_wrong_shape_is_e2011_naming_it_with_both_shapes(tmp_path: Path, source: Phi3VForCausalLM) -> None:
    folder = _folder(tmp_path, source)
    good = tuple(source.state_dict()[Q_PROJ].shape)
    _rewrite(folder, lambda s: s.update({Q_PROJ: torch.zeros(good[0] + 1, good[1])}))
    with pytest.raises(WeightsError) as err:
        load_model(Phi3VForCausalLM, folder)
    assert err.value.code == "E2011"
    msg = err.value.message
    assert "wrong shape 1" in msg and Q_PROJ in msg
    assert str((good[0] + 1, good[1])) in msg and str(good) in msg


def test_checkpoint_for_another_config_is_e2011(tmp_path: Path, source: Phi3VForCausalLM) -> None:
    folder = _folder(tmp_path, source)
    (folder / "config.json").write_text(json.dumps(tiny_config_dict(num_hidden_layers=3)))
    with pytest.raises(WeightsError) as err:
        load_model(Phi3VForCausalLM, folder)
    assert err.value.code == "E2011" and "model.layers.2." in err.value.message


def test_no_weights_is_e2010_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(tiny_config_dict()))
    with pytest.raises(WeightsError) as err:
        load_model(Phi3VForCausalLM, tmp_path)
    assert err.value.code == "E2010"
    assert str(tmp_path) in err.value.message


def test_no_config_is_e2010_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as err:
        load_model(Phi3VForCausalLM, tmp_path / "nowhere")
    assert err.value.code == "E2010" and "nowhere" in err.value.message


def test_index_naming_a_missing_shard_is_e2010(tmp_path: Path, source: Phi3VForCausalLM) -> None:
    folder = _folder(tmp_path, source, shards=2)
    gone = "model-00002-of-00002.safetensors"
    (folder / gone).unlink()
    with pytest.raises(WeightsError) as err:
        load_model(Phi3VForCausalLM, folder)
    assert err.value.code == "E2010"
    assert gone in err.value.message


# ----------------------------------------------------------------- dtypes and backends


@pytest.mark.parametrize(
    ("dtype", "want"),
    [
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
    ],
)
def test_dtypes(
    tmp_path: Path, source: Phi3VForCausalLM, saved_state: dict, dtype: object, want: torch.dtype
) -> None:
    model = load_model(Phi3VForCausalLM, _folder(tmp_path, source), torch_dtype=dtype)
    dtypes = {t.dtype for t in model.state_dict().values() if t.is_floating_point()}
    assert dtypes == {want}
    _assert_same_weights(model, {n: t.to(want) for n, t in saved_state.items()})


def test_dtype_synonym_and_auto(tmp_path: Path, source: Phi3VForCausalLM) -> None:
    folder = _folder(tmp_path, source)
    assert load_model(Phi3VForCausalLM, folder, dtype="bfloat16").dtype == torch.bfloat16
    assert load_model(Phi3VForCausalLM, folder, dtype="auto").dtype == torch.float32  # config dtype


@pytest.mark.parametrize("dtype", ["float64", "int8", "fp32", torch.float64, torch.int32])
def test_unknown_dtype_is_a_value_error(tmp_path: Path, source: Phi3VForCausalLM, dtype: object) -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_model(Phi3VForCausalLM, _folder(tmp_path, source), torch_dtype=dtype)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_known_attention_backends(tmp_path: Path, source: Phi3VForCausalLM, attn: str) -> None:
    model = load_model(Phi3VForCausalLM, _folder(tmp_path, source), attn_implementation=attn)
    assert model.config._attn_implementation == attn


@pytest.mark.parametrize("attn", ["flash_attention_3", "paged", "SDPA"])
def test_unknown_attention_backend_is_a_value_error(
    tmp_path: Path, source: Phi3VForCausalLM, attn: str
) -> None:
    with pytest.raises(ValueError, match="attn_implementation") as err:
        load_model(Phi3VForCausalLM, _folder(tmp_path, source), attn_implementation=attn)
    assert repr(attn) in str(err.value)


def test_flash_attention_without_the_package_is_a_clear_value_error(
    tmp_path: Path, source: Phi3VForCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # importlib.util.find_spec answers None for a name mapped to None in sys.modules: "not installed".
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    with pytest.raises(ValueError, match="flash") as err:
        load_model(Phi3VForCausalLM, _folder(tmp_path, source), attn_implementation="flash_attention_2")
    assert "not installed" in str(err.value)
