# Written with AI assistance; review before relying on it.
"""transformers' own image-text-to-text models as a family: any checkpoint that AutoProcessor and
AutoModelForImageTextToText load from a local folder (SmolVLM / Idefics3, Qwen2-VL, Qwen2.5-VL, LLaVA, ...).

What it does: the request becomes chat messages (one image part per image, then the prompt; the system
prompt as a system message), rendered by the checkpoint's own chat template and run through its own
processor (image placeholders expanded, pixels prepared); the model is the library's, loaded with
local_files_only=True and never with remote code.

Caller text is text: a prompt that types a control token ("<end_of_utterance>", "<|im_end|>") gets the
ids of those characters, not the token, so it cannot end its turn or forge another (`caller_text_ids`).
A prompt that types the image placeholder itself is refused (E1012): images are placed by the server.

Stop tokens: the tokenizer's EOS, the generation config's eos_token_id(s) and the chat template's
end-of-turn token, read off the template itself (`end_of_turn_token`).

Engines: the batching engine drives architectures verified with it (`BATCHED_MODEL_TYPES`: SmolVLM /
Idefics3, a Llama decoder with one position per token; image features scattered over the image token
ids). Every other architecture runs on the plain path with the model itself; Qwen2-VL and Qwen2.5-VL must:
their 3-D M-RoPE gives image tokens (time, height, width) positions and shifts every later position,
which the batching engine's one-integer-per-token rotary policy cannot express. Options: system_prompt
only (num_crops is refused with E1002 by the runner).

Not here: Phi-3.5-vision (phi3_v.py, a native model), captioners (caption.py), the engines themselves.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from jinja2 import TemplateError
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from cerebro.caller_text import TextOnlyEncoder, locate_texts
from cerebro.engine.decoder import Decoder, text_decoder
from cerebro.errors import ConfigError, PromptError, ServerError, WeightsError, excerpt
from cerebro.families.base import Family, LoadOptions, ModelInputs, known_token_ids
from cerebro.request import GenerationRequest

log = logging.getLogger(__name__)

# Architectures the batching engine drives: a text model with embed_tokens / layers / norm / rotary_emb
# whose layers take (hidden, attention_mask=, position_embeddings=, past_key_values=), one RoPE position
# per token, and image features that replace the image token's embeddings one for one (masked_scatter),
# with no other change to embeddings or attention. Checked token for token against the plain path
# (tests/integration/test_hf_vlm_family.py). Others are served on the plain path.
BATCHED_MODEL_TYPES = frozenset({"idefics3", "smolvlm"})
PLACEHOLDER_ATTRIBUTES = ("image_token", "video_token", "audio_token")


def load_processor(model_dir: Path) -> Any:
    """AutoProcessor from the folder, offline. Qwen2-VL-style processors also load a video processor, which
    needs torchvision (not a dependency): without it they are loaded without their video half
    (`images_only_processor`), every image and text path staying the library's."""
    try:
        return AutoProcessor.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    except ImportError as err:
        images_only = images_only_processor(model_dir)
        if images_only is None:
            raise
        log.info("processor=%s without video processor (%s)", images_only.__name__, str(err).strip()[:120])
        return images_only.from_pretrained(str(model_dir), local_files_only=True)


def images_only_processor(model_dir: Path) -> type[ProcessorMixin] | None:
    """The folder's processor class without its video processor, or None when its __init__ is not
    (image_processor, tokenizer, video_processor, ...): ProcessorMixin takes a processor's parts from the
    names in __init__'s signature, so leaving video_processor out of the subclass's drops that part."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    try:
        base: Any = PROCESSOR_MAPPING[type(config)]
    except KeyError:
        return None
    if not (isinstance(base, type) and issubclass(base, ProcessorMixin)):
        return None
    names = list(inspect.signature(base.__init__).parameters)
    if names[:4] != ["self", "image_processor", "tokenizer", "video_processor"]:
        return None

    def __init__(
        self: Any,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: Any = None,
        **kwargs: Any,
    ) -> None:  # chat_template named: from_pretrained passes the folder's template only to a named one
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(f"{base.__name__}ImagesOnly", (base,), {"__init__": __init__})


def end_of_turn_token(processor: Any, added_tokens: Sequence[str]) -> str | None:
    """The added token the chat template writes right after an assistant message's content (SmolVLM's
    `<end_of_utterance>`, Qwen's `<|im_end|>`), read off a rendering with a sentinel answer; None when the
    template writes none or cannot render an answer."""
    sentinel = f"cerebro{secrets.token_hex(16)}"
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": sentinel}]},
    ]
    try:
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except (TemplateError, ValueError, TypeError, KeyError) as err:  # one that renders no answers, say
        log.info("chat template renders no assistant turn (%s)", type(err).__name__)
        return None
    at = text.find(sentinel) if isinstance(text, str) else -1
    if at < 0:
        return None
    rest = text[at + len(sentinel) :].lstrip()
    matches = [t for t in added_tokens if t.strip() and rest.startswith(t)]
    return max(matches, key=len) if matches else None


def chat_messages(request: GenerationRequest, prompt: str, system: str | None) -> list[dict[str, Any]]:
    """Content parts, as processors' templates expect: one image part per image, then the text."""
    user = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": prompt}]
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": user})
    return messages


def plain_reason_for(model: Any) -> str:
    """Why this model cannot be driven by the batching engine; "" when it can (by architecture)."""
    model_type = str(model.config.model_type)
    text_config = model.config.get_text_config()
    rope = getattr(text_config, "rope_parameters", None) or {}
    if "mrope_section" in rope or hasattr(getattr(model, "model", None), "rope_deltas"):
        return (
            f"{model_type} uses 3-D M-RoPE: image tokens get (time, height, width) positions and every later "
            "position shifts by a per-request delta, which the batching engine's one-position-per-token "
            "rotary policy cannot express"
        )
    if model_type not in BATCHED_MODEL_TYPES:
        return (
            f"{model_type} is not among the architectures verified with the batching engine "
            f"({', '.join(sorted(BATCHED_MODEL_TYPES))})"
        )
    text_model = model.get_decoder()
    missing = [a for a in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(text_model, a)]
    if missing:
        return f"its text model {type(text_model).__name__} has no {', '.join(missing)}"
    return ""


class HFVisionLanguageFamily(Family):
    name: ClassVar[str] = "hf_vlm"
    # The system prompt goes to the chat template as a system message; a template that has no system
    # role refuses it per request (E1010, field system_prompt). No image options: num_crops is refused.
    options: ClassVar[frozenset[str]] = frozenset({"system_prompt"})
    max_images: ClassVar[int] = 8
    json_schema: ClassVar[bool] = True
    plain_reason: ClassVar[str] = (
        "Qwen2-VL-style 3-D M-RoPE positions, or an architecture not verified with the batching engine "
        "(the setup log's `decoder` line says which)"
    )

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.text_config = model.config.get_text_config()
        added = list(self.tokenizer.get_added_vocab())
        # What a caller's text must not turn into: every added token (control tokens, image tags).
        self.added_tokens = tuple(t for t in added if t.strip())
        self.placeholders = tuple(
            token
            for attribute in PLACEHOLDER_ATTRIBUTES
            if isinstance(token := getattr(processor, attribute, None), str) and token
        )
        image_token_id = getattr(processor, "image_token_id", None)
        if image_token_id is None:
            image_token_id = getattr(model.config, "image_token_id", None)
        self.image_token_id = None if image_token_id is None else int(image_token_id)
        self.end_of_turn = end_of_turn_token(processor, self.added_tokens)
        stop_names = tuple(t for t in (self.tokenizer.eos_token, self.end_of_turn) if t)
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(generation_eos, int):
            generation_eos = [generation_eos]
        self.stop_ids = known_token_ids(self.tokenizer, stop_names) | frozenset(
            int(i) for i in (generation_eos or ()) if int(i) >= 0
        )
        head = model.get_output_embeddings()
        width = getattr(head, "out_features", None) or getattr(self.text_config, "vocab_size", None)
        if not width:
            raise WeightsError("the model's vocabulary size (logits width) cannot be read", code="E2011")
        self.vocab_size = int(width)
        self.max_positions = int(self.text_config.max_position_embeddings)
        self.decoder_reason = plain_reason_for(model)
        self._feature_params = frozenset(inspect.signature(model.get_image_features).parameters)
        try:
            self.text_encoder: TextOnlyEncoder | None = TextOnlyEncoder(self.tokenizer)
        except ServerError as err:  # then caller text with control tokens is refused (caller_text_ids)
            log.warning("caller text cannot be tokenized literally for this tokenizer: %s", err.message)
            self.text_encoder = None

    @classmethod
    def load(cls, model_dir: Path, options: LoadOptions) -> HFVisionLanguageFamily:
        attention = options.attention  # resolved and checked by the core
        try:
            processor = load_processor(model_dir)
        except (OSError, ValueError, ImportError) as err:
            raise WeightsError(
                f"{model_dir}: the processor (tokenizer, image processor, chat template) does not load: "
                f"{type(err).__name__}: {str(err)[:300]}",
                field="CEREBRO_MODEL_DIR",
                code="E2012",
            ) from None
        parts = (getattr(processor, "tokenizer", None), getattr(processor, "image_processor", None))
        if any(part is None for part in parts):
            raise WeightsError(
                f"{model_dir}: {type(processor).__name__} is not an image-and-text processor",
                field="CEREBRO_MODEL_DIR",
                code="E2012",
            )
        if not (
            getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
        ):
            raise WeightsError(
                f"{model_dir} has no chat template (chat_template.jinja, chat_template.json or "
                "tokenizer_config.json's chat_template): prompts cannot be laid out for this model",
                field="CEREBRO_MODEL_DIR",
                code="E2012",
            )
        try:
            loaded: Any = AutoModelForImageTextToText.from_pretrained(
                str(model_dir),
                dtype=options.dtype,
                attn_implementation=attention,
                local_files_only=True,
                trust_remote_code=False,
                output_loading_info=True,
            )
        except OSError as err:
            raise WeightsError(
                f"{model_dir}: the weights do not load: {str(err)[:300]}",
                field="CEREBRO_MODEL_DIR",
                code="E2010",
            ) from None
        except RuntimeError as err:  # tensors of the wrong shape (transformers refuses to load them)
            raise WeightsError(
                f"{model_dir}: the checkpoint does not match its config: {str(err)[:300]}",
                field="CEREBRO_MODEL_DIR",
                code="E2011",
            ) from None
        except ValueError as err:
            if "attn" in str(err) or "attention" in str(err):
                raise ConfigError(
                    f"CEREBRO_ATTENTION={attention}: {str(err)[:300]}", field="CEREBRO_ATTENTION"
                ) from None
            raise WeightsError(
                f"{model_dir}: not an image-text-to-text checkpoint transformers serves: {str(err)[:300]}",
                field="CEREBRO_MODEL_DIR",
                code="E2013",
            ) from None
        model, info = loaded
        broken = {k: sorted(info.get(k) or ())[:5] for k in ("missing_keys", "mismatched_keys")}
        if any(broken.values()):
            raise WeightsError(
                f"{model_dir}: the checkpoint does not match its config: {broken}",
                field="CEREBRO_MODEL_DIR",
                code="E2011",
            )
        model = model.to(options.device).eval()
        return cls(model, processor)

    def describe(self) -> dict[str, str]:
        return {
            "model_type": str(self.model.config.model_type),
            "attention": str(self.model.config._attn_implementation),
            "decoder": "batching" if not self.decoder_reason else f"plain: {self.decoder_reason}",
            "end_of_turn": str(self.end_of_turn),
        }

    # ------------------------------------------------------------------------------------------ prompts

    def model_inputs(self, request: GenerationRequest) -> ModelInputs:
        callers = [("prompt", request.prompt)]
        if request.system_prompt is not None:
            callers.insert(0, ("system_prompt", request.system_prompt))
        for field, text in callers:
            for token in self.placeholders:
                if token in text:
                    raise PromptError(
                        f"{field} contains {token!r}, this model's image placeholder; leave it out: the "
                        "server places one image before the prompt for each image given",
                        field=field,
                        code="E1012",
                    )
        prompt, spans = self.render(request)
        inputs = self.processor(
            text=[prompt],
            images=[list(request.images)],
            return_tensors="pt",
            return_text_replacement_offsets=True,
        )
        input_ids: torch.Tensor = inputs["input_ids"]
        extras = {
            k: v
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor) and k not in ("input_ids", "attention_mask")
        }
        offsets = inputs.get("text_replacement_offsets")
        literal = self.caller_text_ids(prompt, spans, offsets, input_ids, extras, callers)
        if literal is not None:
            input_ids, extras = literal
        image_tokens = 0 if self.image_token_id is None else int((input_ids == self.image_token_id).sum())
        return ModelInputs(input_ids, extras, image_tokens=image_tokens)

    def render(self, request: GenerationRequest) -> tuple[str, tuple[tuple[int, int], ...] | None]:
        """The templated prompt and the [start, end) span of each caller text in it (system prompt, prompt),
        or None for the spans when the template does not place each exactly once, verbatim.

        Rendered once with unguessable sentinels for the caller texts, which shows where they land whatever
        the template's markup; the real texts then replace them and the result must equal a direct
        rendering (a template that trims or rewrites contents fails that check)."""
        system = request.system_prompt
        texts = ([system] if system is not None else []) + [request.prompt]

        def render(contents: Sequence[str]) -> str:
            return self._render(
                chat_messages(request, contents[-1], contents[0] if system is not None else None),
                system is not None,
            )

        return locate_texts(render, texts)

    def _render(self, messages: list[dict[str, Any]], has_system: bool) -> str:
        try:
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError as err:  # raise_exception in the template (e.g. "no system role")
            field = "system_prompt" if has_system else "prompt"
            raise PromptError(
                f"this model's chat template refuses the request: {excerpt(str(err), 200)}",
                field=field,
                code="E1010",
            ) from None
        if not isinstance(prompt, str):
            raise ServerError(f"the chat template rendered {type(prompt).__name__}, not a string")
        return prompt

    def caller_text_ids(
        self,
        prompt: str,
        spans: tuple[tuple[int, int], ...] | None,
        offsets: Any,
        input_ids: torch.Tensor,
        extras: dict[str, torch.Tensor],
        callers: list[tuple[str, str]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """New (input_ids, extras) that keep the caller's text literal, or None when the processor's are
        already right.

        The processor tokenizes the whole expanded prompt, so a control token typed by the caller would
        become that token. Its expanded text is rebuilt from the processor's own replacement offsets, the
        caller spans shifted into it, and tokenized by TextOnlyEncoder (cerebro/models/phi3_v/processing.py:
        the tokenizer's own pipeline, with added tokens looked for only outside the caller spans). That
        result is used only when the same encoder reproduces the processor's ids exactly without spans and
        the image token count is unchanged, so everything but the caller's text is the processor's. When
        that cannot be done (a template that rewrites contents, a tokenizer the encoder cannot reproduce,
        a per-token input the processor computes in its own way), a caller text that holds a control token
        is refused (E1010) rather than tokenized as one; one without is exactly the processor's."""
        processor_ids = input_ids[0].tolist()
        expanded = _expanded(prompt, spans, offsets)
        if expanded is not None and self.text_encoder is not None:
            text, shifted = expanded
            literal = self.text_encoder.encode(text, shifted)
            if literal == processor_ids:
                return None
            if self.text_encoder.encode(text) == processor_ids and (
                self.image_token_id is None
                or literal.count(self.image_token_id) == processor_ids.count(self.image_token_id)
            ):
                self._check_plain_text_ids(callers)
                new_ids = torch.tensor([literal], dtype=input_ids.dtype)
                new_extras = self._per_token_extras(new_ids, input_ids, extras)
                if new_extras is not None:
                    return new_ids, new_extras
        for field, value in callers:
            typed = [t for t in self.added_tokens if t in value]
            if typed:
                raise PromptError(
                    f"{field} contains {excerpt(max(typed, key=len))}, a control token of this model, which "
                    "cannot be kept as plain text for this checkpoint; remove it",
                    field=field,
                    code="E1010",
                )
        return None

    def _check_plain_text_ids(self, callers: list[tuple[str, str]]) -> None:
        """Refuse (E1010) a caller text whose plain-text tokenization still holds an added token's id:
        a vocabulary whose ordinary pieces spell a control token cannot keep it as text."""
        assert self.text_encoder is not None
        affixes = set(self.text_encoder.encode(""))  # BOS and the like, added around every encoding
        added = set(self.tokenizer.get_added_vocab().values()) - affixes
        for field, value in callers:
            made = added.intersection(self.text_encoder.encode(value, [(0, len(value))]))
            if made:
                token = self.tokenizer.convert_ids_to_tokens(min(made))
                raise PromptError(
                    f"{field}: this model's tokenizer makes the control token {excerpt(token)} from plain "
                    "text; remove it from the text",
                    field=field,
                    code="E1010",
                )

    def _per_token_extras(
        self, new_ids: torch.Tensor, old_ids: torch.Tensor, extras: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        """Extras for new_ids: unchanged, except per-token ones ([1, T] like input_ids), which are
        recomputed when the processor uses the library's generic rule (mm_token_type_ids); None otherwise."""
        out = dict(extras)
        for key, value in extras.items():
            if tuple(value.shape) != tuple(old_ids.shape):
                continue
            generic = type(self.processor).create_mm_token_type_ids is ProcessorMixin.create_mm_token_type_ids
            if key != "mm_token_type_ids" or not generic:
                return None
            types = self.processor.create_mm_token_type_ids(new_ids.tolist())
            out[key] = torch.tensor(types, dtype=value.dtype)
        return out

    # ------------------------------------------------------------------------------------------ engines

    def decoder(self) -> Decoder | None:
        if self.decoder_reason:
            return None
        text_model = self.model.get_decoder()
        decoder = text_decoder(
            text_model, self.model.get_output_embeddings(), self.text_config, self.embed_prompt
        )
        if decoder is None:
            self.decoder_reason = "its rope type changes with the sequence length"
        return decoder

    def embed_prompt(
        self, input_ids: torch.Tensor, extras: Mapping[str, torch.Tensor], reuse: Any
    ) -> tuple[torch.Tensor, Any]:
        """Token embeddings with the image features in place of the image token's, one for one and in
        order, as the model's own merge does (masked_scatter at image_token_id). `reuse`: the features of
        an earlier prefill of this prompt, so a re-encode (extras empty) skips the vision tower; only the
        first len(features) image ids are replaced, so an image id the model generated stays a token."""
        embeds = self.model.get_input_embeddings()(input_ids)  # 1, T, D
        features = reuse
        if features is None and extras.get("pixel_values") is not None:
            features = self.image_features(extras)
        if features is None or self.image_token_id is None:
            return embeds, features
        slots = (input_ids[0] == self.image_token_id).nonzero().squeeze(1)
        count = int(features.shape[0])
        if slots.numel() < count or (reuse is None and slots.numel() != count):
            raise ServerError(
                f"{slots.numel()} image tokens in the prompt for {count} image features", code="E2030"
            )
        embeds[0, slots[:count]] = features.to(embeds.dtype)
        return embeds, features

    def image_features(self, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[N, D]: every image's features, in the order of their image tokens (get_image_features' pooled
        output, as the model's own forward uses it)."""
        device = self.model.device
        kwargs = {k: v.to(device) for k, v in extras.items() if k in self._feature_params}
        out = self.model.get_image_features(**kwargs, return_dict=True)
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out
        if isinstance(pooled, (list, tuple)):
            pooled = torch.cat([p.reshape(-1, p.shape[-1]) for p in pooled])
        return pooled.reshape(-1, pooled.shape[-1])

    def plain_model(self) -> Any:
        # The model itself: transformers' forward takes (input_ids, past_key_values, use_cache,
        # logits_to_keep, **processor outputs) on prefill and one token later. Qwen2-VL's M-RoPE keeps its
        # per-request position delta on the model (rope_deltas, set at each prefill, read by later steps):
        # right because the plain engine runs one request at a time.
        return self.model


def _expanded(
    prompt: str, spans: tuple[tuple[int, int], ...] | None, offsets: Any
) -> tuple[str, list[tuple[int, int]]] | None:
    """The processor's expanded prompt (its placeholders replaced as its offsets say) and the caller
    spans moved into it; None when it cannot be rebuilt with certainty."""
    if spans is None or not isinstance(offsets, list) or len(offsets) != 1:
        return None
    replacements = sorted(offsets[0], key=lambda r: r["span"][0])
    parts: list[str] = []
    shifts: list[tuple[int, int]] = []  # (original end of a replacement, total shift after it)
    last = shift = 0
    for r in replacements:
        start, end = (int(x) for x in r["span"])
        if start < last or prompt[start:end] != r["text"]:
            return None
        if any(a < end and start < b for a, b in spans):  # a placeholder inside caller text
            return None
        parts += [prompt[last:start], r["replacement"]]
        shift += len(r["replacement"]) - (end - start)
        shifts.append((end, shift))
        last = end
    parts.append(prompt[last:])
    text = "".join(parts)
    moved = []
    for a, b in spans:
        delta = 0
        for end, total in shifts:  # the shift after the last replacement before this span
            if end <= a:
                delta = total
        moved.append((a + delta, b + delta))
    for r in replacements:
        new_start, new_end = (int(x) for x in r["new_span"])
        if text[new_start:new_end] != r["replacement"]:
            return None
    for (a, b), (c, d) in zip(spans, moved, strict=True):
        if text[c:d] != prompt[a:b]:
            return None
    return text, moved
