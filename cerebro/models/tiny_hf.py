# Written with AI assistance; review before relying on it.
"""Tiny random-weight checkpoints of three transformers-native vision-language families, for tests and demos.

    kind       model_type               architecture (what AutoModelForImageTextToText returns)
    smolvlm    idefics3                 Idefics3ForConditionalGeneration: SigLIP-style tower, Llama decoder
    qwen2_vl   qwen2_vl                 Qwen2VLForConditionalGeneration: Qwen2-VL tower and decoder, M-RoPE
    caption    vision-encoder-decoder   VisionEncoderDecoderModel: ViT encoder, GPT-2 decoder

Each folder is what the hub would hold: config.json, generation_config.json, model.safetensors, the
processor's files and a tokenizer, all loadable offline through transformers' Auto classes. Sizes are toys
(decoders of width 64 with two layers, vision towers of width 32 on 32-pixel crops or 28-pixel merged
patches), so a whole generate call takes well under a second on a CPU. The weights are random (seeded):
generated text is meaningless.

Tokenizers are derived from the real Phi-3.5 tokenizer in a folder the caller names (for example
../shared/fixtures/phi35v-tiny): its 32045 ids are kept and each family's special tokens are appended after
them, so the ids below are fixed. Nothing is downloaded.

Two choices forced by transformers 5.23 in this environment:
- "smolvlm" is written as model_type "idefics3" (SmolVLM v1's own model_type, the same architecture):
  SmolVLMProcessor refuses to start without the num2words package, which is not a dependency.
- Qwen2VLProcessor always loads a video processor, and video processors need torchvision, which is not a
  dependency either: without it AutoProcessor.from_pretrained fails on a Qwen2-VL folder (any Qwen2-VL
  folder, the hub's too). `qwen2_vl_processor` returns the same processor without its video half then.

Not here: Phi-3.5-vision (phi3_v/tiny.py); loading and serving a family (cerebro/families/).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GPT2Config,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessorPil,
)
from transformers.utils import logging as hf_logging

from cerebro.models.phi3_v.tiny import REQUIRED_TOKENIZER_FILE, check_tokenizer_dir

# The Phi-3.5 tokenizer's own special tokens, kept in every derived tokenizer.
BOS, END_OF_TEXT, UNK = "<s>", "<|endoftext|>", "<unk>"  # ids 1, 32000, 0

# Decoder sizes shared by the three families: small enough for a CPU, big enough for real attention shapes.
TEXT_SIZES: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as the real Llama and Qwen2 decoders use
    "max_position_embeddings": 2048,
}

# --- SmolVLM (Idefics3) ---------------------------------------------------------------------------------
SMOLVLM_IMAGE = "<image>"
SMOLVLM_END_OF_TURN = "<end_of_utterance>"
SMOLVLM_TOKENS = (  # appended in this order: <|im_start|> 32045, <fake_token_around_image> 32046, ...
    "<|im_start|>",
    "<fake_token_around_image>",
    SMOLVLM_IMAGE,  # 32047
    SMOLVLM_END_OF_TURN,  # 32048
    "<global-img>",
    # The processor looks up a tag for every tile of a split image, up to 6 x 6 tiles.
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)
SMOLVLM_CROP = 32  # pixels per side of one crop, as the vision tower sees it
SMOLVLM_PATCH = 8  # 4 x 4 patches per crop
SMOLVLM_SCALE = 2  # pixel shuffle: 2 x 2 patches become one token, so 4 image tokens per crop
SMOLVLM_LONGEST_EDGE = 2 * SMOLVLM_CROP  # images are resized to this, so at most 2 x 2 tiles plus the global
# SmolVLM's own template (HuggingFaceTB/SmolVLM-Instruct), for content parts or plain strings.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# --- Qwen2-VL -------------------------------------------------------------------------------------------
QWEN_IMAGE = "<|image_pad|>"
QWEN_END_OF_TURN = "<|im_end|>"
QWEN_TOKENS = (  # appended in this order: <|im_start|> 32045, <|im_end|> 32046, ...
    "<|im_start|>",
    QWEN_END_OF_TURN,
    "<|vision_start|>",  # 32047
    "<|vision_end|>",  # 32048
    QWEN_IMAGE,  # 32049
    "<|video_pad|>",  # 32050
)
QWEN_PATCH = 14  # the real patch size; 2 x 2 patches merge into one token, so one token per 28 x 28 pixels
QWEN_MIN_PIXELS = 28 * 28  # at least one image token
QWEN_MAX_PIXELS = 16 * 28 * 28  # at most 16 image tokens: a 64x48 image becomes 56x56, 4 tokens
# The decoder's head is 16 wide: M-RoPE splits its 8 frequencies over (time, height, width) as the real
# checkpoints split 64 into [16, 24, 24].
QWEN_MROPE_SECTION = [2, 3, 3]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# --- Captioner ------------------------------------------------------------------------------------------
CAPTION_IMAGE = 32  # ViT input side; 8-pixel patches give 16 patches plus the class token


def write_tiny_smolvlm(out_dir: str | Path, tokenizer_dir: str | Path, *, seed: int = 0) -> Path:
    """A SmolVLM-style folder (model_type idefics3): Idefics3ForConditionalGeneration with a Llama decoder.

    A 64x48 image is resized to 64x48, padded to 64x64, split into 2 x 2 crops of 32 plus the whole image
    at 32: 5 crops of 4 image tokens each. Raises `WeightsError` (E2012) before writing anything when
    `tokenizer_dir` holds no tokenizer.json.
    """
    check_tokenizer_dir(tokenizer_dir, field="tokenizer_dir")
    tokenizer = derived_tokenizer(tokenizer_dir, SMOLVLM_TOKENS, end_of_turn=SMOLVLM_END_OF_TURN)
    tokenizer.chat_template = SMOLVLM_CHAT_TEMPLATE
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": SMOLVLM_LONGEST_EDGE},
        max_image_size={"longest_edge": SMOLVLM_CROP},
        do_image_splitting=True,
    )
    tokens_per_crop = (SMOLVLM_CROP // SMOLVLM_PATCH) ** 2 // SMOLVLM_SCALE**2
    processor = Idefics3Processor(
        image_processor, tokenizer, image_seq_len=tokens_per_crop, chat_template=SMOLVLM_CHAT_TEMPLATE
    )
    config = Idefics3Config(
        text_config={"model_type": "llama", **TEXT_SIZES, **_token_fields(tokenizer), "rms_norm_eps": 1e-5},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": SMOLVLM_CROP,
            "patch_size": SMOLVLM_PATCH,
        },
        scale_factor=SMOLVLM_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids(SMOLVLM_IMAGE),
        # Idefics3Config keeps a deprecated pad id of its own, 128002 (outside this vocabulary) unless given;
        # its typed signature does not list it, hence the unpacking.
        **{"pad_token_id": tokenizer.pad_token_id},
    )
    model = _seeded_model(Idefics3ForConditionalGeneration, config, seed)
    out = _save(model, tokenizer, out_dir)
    processor.save_pretrained(str(out))  # processor_config.json (with the image processor), chat template
    return out


def write_tiny_qwen2_vl(out_dir: str | Path, tokenizer_dir: str | Path, *, seed: int = 0) -> Path:
    """A Qwen2-VL folder: Qwen2VLForConditionalGeneration, image processor limited to 16 image tokens.

    The processor files are laid out as the hub's Qwen2-VL checkpoints lay them out (preprocessor_config.json,
    a processor_config.json naming Qwen2VLProcessor, the chat template beside the tokenizer), so with
    torchvision installed AutoProcessor loads them; without it use `qwen2_vl_processor`. Raises
    `WeightsError` (E2012) before writing anything when `tokenizer_dir` holds no tokenizer.json.
    """
    check_tokenizer_dir(tokenizer_dir, field="tokenizer_dir")
    tokenizer = derived_tokenizer(tokenizer_dir, QWEN_TOKENS, end_of_turn=QWEN_END_OF_TURN)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS, patch_size=QWEN_PATCH, merge_size=2
    )
    ids = dict(zip(QWEN_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_TOKENS)), strict=True))
    config = Qwen2VLConfig(
        text_config={
            **TEXT_SIZES,
            **_token_fields(tokenizer),
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": QWEN_MROPE_SECTION,
            },
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "hidden_size": TEXT_SIZES["hidden_size"],  # the merger projects into the decoder's width
            "patch_size": QWEN_PATCH,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids[QWEN_IMAGE],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = _seeded_model(Qwen2VLForConditionalGeneration, config, seed)
    out = _save(model, tokenizer, out_dir)  # the tokenizer writes chat_template.jinja, read by both
    image_processor.save_pretrained(str(out))
    # Written by hand: saving a Qwen2VLProcessor needs its video processor, which needs torchvision.
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2))
    return out


def write_tiny_captioner(out_dir: str | Path, tokenizer_dir: str | Path, *, seed: int = 0) -> Path:
    """An image captioner: VisionEncoderDecoderModel of a ViT encoder and a cross-attending GPT-2 decoder.

    No prompt and no chat template: `generate(pixel_values=...)` starts from `<s>` (decoder_start_token_id
    1) and stops at `<|endoftext|>` (32000, also the pad id). Raises `WeightsError` (E2012) before writing
    anything when `tokenizer_dir` holds no tokenizer.json.
    """
    check_tokenizer_dir(tokenizer_dir, field="tokenizer_dir")
    tokenizer = derived_tokenizer(tokenizer_dir, (), end_of_turn=END_OF_TEXT)
    fields = _token_fields(tokenizer)
    encoder = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=CAPTION_IMAGE,
        patch_size=8,
    )
    decoder = GPT2Config(
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        add_cross_attention=True,  # is_decoder is set by from_encoder_decoder_configs below
        # Untied: with GPT-2's tied embeddings, small random weights make every step repeat the last token.
        tie_word_embeddings=False,
        **fields,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    # generate() reads these from the top-level config, not the decoder's.
    config.decoder_start_token_id = fields["bos_token_id"]
    config.bos_token_id = fields["bos_token_id"]
    config.eos_token_id = fields["eos_token_id"]
    config.pad_token_id = fields["pad_token_id"]
    model = _seeded_model(VisionEncoderDecoderModel, config, seed)
    model.generation_config.decoder_start_token_id = fields["bos_token_id"]
    out = _save(model, tokenizer, out_dir)
    ViTImageProcessorPil(size={"height": CAPTION_IMAGE, "width": CAPTION_IMAGE}).save_pretrained(str(out))
    return out


WRITERS: dict[str, Callable[..., Path]] = {
    "smolvlm": write_tiny_smolvlm,
    "qwen2_vl": write_tiny_qwen2_vl,
    "caption": write_tiny_captioner,
}


def derived_tokenizer(
    tokenizer_dir: str | Path, new_tokens: tuple[str, ...], *, end_of_turn: str
) -> PreTrainedTokenizerFast:
    """The Phi-3.5 tokenizer from `tokenizer_dir`/tokenizer.json with `new_tokens` appended as special tokens.

    Built from tokenizer.json alone, on purpose: the folder's tokenizer_config.json names Phi-3.5's remote
    processor code (auto_map), which would make AutoTokenizer ask to trust remote code, and which must not
    travel into the new folder. No BOS is added when encoding: the chat templates start each prompt
    themselves, as the real SmolVLM and Qwen2-VL tokenizers do. `end_of_turn` becomes the EOS token.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(tokenizer_dir) / REQUIRED_TOKENIZER_FILE),
        bos_token=BOS,
        unk_token=UNK,
        pad_token=END_OF_TEXT,
        add_bos_token=False,
    )
    if new_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(new_tokens)})
    tokenizer.eos_token = end_of_turn  # set after the additions, so the new tokens' ids follow their order
    return tokenizer


def qwen2_vl_processor(folder: str | Path) -> ProcessorMixin:
    """The processor of a Qwen2-VL folder as the hf_vlm family loads it: AutoProcessor's where torchvision
    is importable, else the same processor without its video half (cerebro/families/hf_vlm.py)."""
    from cerebro.families.hf_vlm import load_processor

    processor: ProcessorMixin = load_processor(Path(folder))
    return processor


def _token_fields(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Vocabulary size (every id the tokenizer can produce) and BOS, EOS and pad ids, as decoder config
    keyword arguments."""
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "pad_token_id": int(tokenizer.pad_token_id),
    }


def _seeded_model(cls: type[PreTrainedModel], config: Any, seed: int) -> PreTrainedModel:
    """`cls(config)` with weights from transformers' own initialisation, drawn from torch's global RNG seeded
    with `seed`. The caller's RNG state is restored afterwards: building a model changes no one's random
    stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """Weights (model.safetensors), config.json, generation_config.json and the tokenizer into `out_dir`.

    Generation stops at the family's end-of-turn token or at `<|endoftext|>`, whichever comes first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stops = list(dict.fromkeys([tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TEXT)]))
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = stops if len(stops) > 1 else stops[0]
    generation.pad_token_id = tokenizer.pad_token_id
    with _quiet_progress():
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """No "Writing model shards" progress bar on stderr: the CLI prints one line of its own."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
