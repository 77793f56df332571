# Written with AI assistance; review before relying on it.
"""Image captioning as a family: transformers' VisionEncoderDecoderModel, the kind of checkpoint that
nlpconnect/vit-gpt2-image-captioning is (a ViT encoder, a GPT-2 decoder that cross-attends to it).

One image in, a caption out. The prompt is optional: when one is given it is the caption's beginning (a
prefix the decoder continues, "a photo of"), not an instruction, and the answer is only the continuation
(the prefix is not repeated). There is no chat template, no system prompt, no JSON-schema decoding and
no family option: the runner refuses a schema (E1303), a system prompt or num_crops (E1002) before any
work, and `model_inputs` refuses a system prompt again for callers that skip the runner.

It runs on the plain engine: `CaptionModel` (what `plain_model()` returns) looks to
cerebro.generation.generate_tokens like a causal LM. The first call gets `pixel_values`, runs the
encoder once and keeps its output in the request's own cache (`CaptionCache`, an EncoderDecoderCache);
the decoder's cross-attention keys and values are computed on that call and reused from the cache on
every later step. Nothing of a request is kept on the wrapper, so requests run one after another share
no state.

Not here: the batching engine's Decoder (its row cache has no cross-attention part). Other checkpoints
of model_type vision-encoder-decoder load too but are untested here: TrOCR-style text readers should work
(image in, text out); Donut-style parsers do not, since they start from a task token ("<s_cord-v2>")
that a caller cannot type (special tokens in a prompt stay text).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    DynamicCache,
    EncoderDecoderCache,
    VisionEncoderDecoderModel,
)

from cerebro.errors import ImageError, InputError, WeightsError
from cerebro.families.base import Family, LoadOptions, ModelInputs
from cerebro.request import GenerationRequest

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# A fast tokenizer's file, or a slow one's vocabulary (GPT-2: vocab.json with merges.txt; SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")
# Encoder tensors a captioner never uses (ViT's pooler); a checkpoint may leave them out.
UNUSED_PREFIXES = ("encoder.pooler.",)


class CaptionCache(EncoderDecoderCache):
    """One request's cache: the decoder's self-attention and cross-attention keys and values, and the
    encoder's output (projected to the decoder's width) that every decoder step cross-attends to."""

    def __init__(self, config: Any) -> None:
        super().__init__(DynamicCache(config=config), DynamicCache(config=config))
        self.encoder_hidden_states: torch.Tensor | None = None


class CaptionModel:
    """A VisionEncoderDecoderModel called like a causal LM, for the plain engine.

    `model(input_ids=, past_key_values=, use_cache=, logits_to_keep=, pixel_values=)`: with pixel_values
    (the prefill) it runs the encoder and stores the result in the cache, which must be fresh
    (`new_cache()`); without them (a decode step) it reads the encoder output back from that cache.
    Holds no per-request state itself."""

    def __init__(self, model: VisionEncoderDecoderModel) -> None:
        self.model = model
        self.config = model.config.decoder  # generate_tokens reads rope settings here: GPT-2 has none
        encoder_width = model.config.encoder.hidden_size
        decoder_width = model.config.decoder.hidden_size
        # As VisionEncoderDecoderModel.forward does: project when the widths differ and the decoder does
        # not cross-attend at the encoder's width itself.
        self.project = (
            model.enc_to_dec_proj
            if encoder_width != decoder_width
            and getattr(model.config.decoder, "cross_attention_hidden_size", None) is None
            else None
        )
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.decoder.forward).parameters

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def new_cache(self) -> CaptionCache:
        return CaptionCache(self.config)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's output as the decoder cross-attends to it: [1, patches, decoder width]."""
        encoder = self.model.encoder
        hidden: torch.Tensor = encoder(pixel_values=pixel_values.to(self.device, encoder.dtype))[0]
        return hidden if self.project is None else self.project(hidden)

    def __call__(
        self,
        input_ids: torch.Tensor,
        past_key_values: CaptionCache,
        use_cache: bool = True,
        logits_to_keep: int = 0,
        pixel_values: torch.Tensor | None = None,
    ) -> Any:
        cache = past_key_values
        if not isinstance(cache, CaptionCache):
            raise TypeError(f"past_key_values must come from new_cache(); got {type(cache).__name__}")
        if pixel_values is not None:
            if cache.encoder_hidden_states is not None or cache.get_seq_length() != 0:
                raise ValueError("a prefill (pixel_values given) needs a fresh cache from new_cache()")
            cache.encoder_hidden_states = self.encode(pixel_values)
        elif cache.encoder_hidden_states is None:
            raise ValueError("the first call for a request must pass pixel_values")
        kwargs: dict[str, Any] = {"logits_to_keep": logits_to_keep} if self.keeps_logits else {}
        out = self.model.decoder(
            input_ids=input_ids,
            encoder_hidden_states=cache.encoder_hidden_states,
            past_key_values=cache,
            use_cache=use_cache,
            **kwargs,
        )
        if not self.keeps_logits and logits_to_keep > 0:
            out.logits = out.logits[:, -logits_to_keep:]
        return out


def _ids(value: Any) -> list[int]:
    """An eos/start id setting (None, an int or a list of ints) as a list."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _first(*values: Any) -> int | None:
    for value in values:
        ids = _ids(value)
        if ids:
            return ids[0]
    return None


def stop_ids_of(model: VisionEncoderDecoderModel, tokenizer: Any) -> frozenset[int]:
    """The end-of-sequence ids generate() stops at: the generation config's, else the model config's,
    else the decoder config's, else the tokenizer's."""
    for source in (
        model.generation_config.eos_token_id,
        model.config.eos_token_id,
        model.config.decoder.eos_token_id,
        getattr(tokenizer, "eos_token_id", None),
    ):
        ids = _ids(source)
        if ids:
            return frozenset(ids)
    return frozenset()


def _weights_error(model_dir: Path, what: str, err: BaseException) -> WeightsError:
    detail = " ".join(str(err).split())[:200] or "no message"
    return WeightsError(
        f"{model_dir}: {what} does not load ({type(err).__name__}: {detail})",
        field="CEREBRO_MODEL_DIR",
        code="E2012",
    )


class CaptionFamily(Family):
    name: ClassVar[str] = "caption"
    options: ClassVar[frozenset[str]] = frozenset()
    max_images: ClassVar[int] = 1
    json_schema: ClassVar[bool] = False
    prompt_required: ClassVar[bool] = False
    plain_reason: ClassVar[str] = (
        "an encoder-decoder: the decoder cross-attends to the image encoder's output, which the batching "
        "engine's row cache does not hold"
    )

    def __init__(self, model: VisionEncoderDecoderModel, image_processor: Any, tokenizer: Any) -> None:
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        decoder = model.config.decoder
        start = _first(
            model.generation_config.decoder_start_token_id,
            model.config.decoder_start_token_id,
            model.generation_config.bos_token_id,
            decoder.bos_token_id,
        )
        if start is None:
            raise WeightsError(
                "the captioner's config names no decoder_start_token_id (nor a bos_token_id) to start a "
                "caption with",
                field="CEREBRO_MODEL_DIR",
                code="E2011",
            )
        self.start_id = start
        self.stop_ids = stop_ids_of(model, tokenizer)
        if not self.stop_ids:
            raise WeightsError(
                "the captioner's config and tokenizer name no eos_token_id to end a caption with",
                field="CEREBRO_MODEL_DIR",
                code="E2011",
            )
        self.vocab_size = int(decoder.vocab_size)
        self.max_positions = int(
            getattr(decoder, "max_position_embeddings", None) or getattr(decoder, "n_positions", 0)
        )
        self._plain = CaptionModel(model)
        self._split_special = hasattr(tokenizer, "split_special_tokens")

    @classmethod
    def load(cls, model_dir: Path, options: LoadOptions) -> CaptionFamily:
        attention = options.attention  # resolved and checked by the core
        if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
            raise WeightsError(
                f"{model_dir} holds no weights (looked for {', '.join(WEIGHT_FILES)})",
                field="CEREBRO_MODEL_DIR",
                code="E2010",
            )
        if not (model_dir / IMAGE_PROCESSOR_FILE).is_file():
            raise WeightsError(
                f"{model_dir} has no {IMAGE_PROCESSOR_FILE}; copy the checkpoint's image processor file "
                "into it",
                field="CEREBRO_MODEL_DIR",
                code="E2012",
            )
        if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
            raise WeightsError(
                f"{model_dir} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); copy the "
                "checkpoint's tokenizer files into it",
                field="CEREBRO_MODEL_DIR",
                code="E2012",
            )
        try:
            loaded: Any = VisionEncoderDecoderModel.from_pretrained(
                model_dir,
                local_files_only=True,
                dtype=options.dtype,
                attn_implementation=attention,
                output_loading_info=True,
            )
            model, info = loaded
        except (OSError, ValueError) as err:
            raise _weights_error(model_dir, "the vision-encoder-decoder model", err) from None
        missing = sorted(k for k in info["missing_keys"] if not k.startswith(UNUSED_PREFIXES))
        if missing:
            raise WeightsError(
                f"{model_dir}: the checkpoint lacks {len(missing)} tensors the config needs (first: "
                f"{missing[0]})",
                field="CEREBRO_MODEL_DIR",
                code="E2011",
            )
        try:
            image_processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as err:
            raise _weights_error(model_dir, "the image processor", err) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as err:
            raise _weights_error(model_dir, "the tokenizer", err) from None
        return cls(model.to(options.device).eval(), image_processor, tokenizer)

    def describe(self) -> dict[str, str]:
        config = self.model.config
        return {
            "encoder": str(config.encoder.model_type),
            "decoder": str(config.decoder.model_type),
            "attention": str(config.decoder._attn_implementation),
        }

    def plain_model(self) -> CaptionModel:
        return self._plain

    def prefix_ids(self, prompt: str) -> list[int]:
        """The prompt as caption text: no special tokens added, and none read from the caller's text."""
        if not prompt.strip():
            return []
        extra = {"split_special_tokens": True} if self._split_special else {}
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=False, **extra)["input_ids"]
        return ids

    def model_inputs(self, request: GenerationRequest) -> ModelInputs:
        """pixel_values of the one image, and the decoder's start token followed by the prompt's tokens:
        a prompt is the caption's beginning, which the caption continues ("a photo of" -> " a dog ...")."""
        if request.system_prompt:
            raise InputError(
                "system_prompt is not an option of the model this server runs (an image captioner); "
                "leave it empty",
                field="system_prompt",
                code="E1002",
            )
        if len(request.images) != 1:
            raise ImageError(
                f"{len(request.images)} images given; this captioner takes exactly 1",
                field="images",
                code="E1100",
            )
        image = request.images[0]
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        ids = [self.start_id, *self.prefix_ids(request.prompt)]
        return ModelInputs(
            torch.tensor([ids], dtype=torch.long), {"pixel_values": pixel_values}, image_tokens=0
        )

    def warmup_request(self) -> GenerationRequest:
        from PIL import Image

        return GenerationRequest(prompt="", images=(Image.new("RGB", (64, 48), "gray"),), max_new_tokens=2)
