# Written with AI assistance; review before relying on it.
"""The batching engine on a CUDA GPU: CUDA-graph replay against eager decoding, and against the plain path.

Skips where torch sees no CUDA device (the CPU tests in test_engine_tiny.py cover the scheduling logic).
On a GPU these are the checks that the graphs replay the right thing: the same kernels run eagerly and
from a graph must give the same tokens bit for bit, for one request and for a batch that grows and shrinks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from cerebro.engine import Engine, Job, TokenStream
from cerebro.families.phi3_v import phi3v_decoder
from cerebro.generation import Sampler, SamplingParams, generate_tokens
from cerebro.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.fixtures,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir: Path) -> tuple[Phi3VForCausalLM, Phi3VProcessor]:
    model = Phi3VForCausalLM.from_pretrained(
        tiny_model_dir, torch_dtype=torch.bfloat16, attn_implementation="sdpa", device=CUDA
    )
    return model, Phi3VProcessor.from_pretrained(tiny_model_dir)


def _requests(processor: Phi3VProcessor) -> list[dict[str, torch.Tensor]]:
    out = []
    for k in range(5):
        image = Image.new("RGB", (90 + 40 * k, 60 + 25 * k), (30 * k, 120, 200))
        text = f"<|user|>\n<|image_1|>\nWhat {'is this ' * k}?<|end|>\n<|assistant|>\n"
        out.append(dict(processor(text=text, images=[image])))
    return out


def _engine_tokens(model: Phi3VForCausalLM, requests: list[dict[str, torch.Tensor]], graphs: bool) -> list:
    engine = Engine(phi3v_decoder(model), rows=3, capacity=2048, cuda_graphs=graphs)
    try:
        if graphs:
            count, _ = engine.capture_graphs()
            assert count > 0
        streams = []
        for k, inputs in enumerate(requests):
            stream = TokenStream()
            engine.submit(
                Job(
                    input_ids=inputs["input_ids"],
                    extras={"pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"]},
                    max_new_tokens=12 + 7 * k,  # rows leave at different steps
                    sampler=Sampler(SamplingParams(), CUDA),
                    stop_ids=frozenset(),
                    stream=stream,
                )
            )
            streams.append(stream)
        return [list(s) for s in streams]
    finally:
        engine.close()


def test_graph_replay_gives_the_eager_tokens(model_and_processor: tuple) -> None:
    model, processor = model_and_processor
    requests = _requests(processor)
    eager = _engine_tokens(model, requests, graphs=False)
    graphed = _engine_tokens(model, requests, graphs=True)
    assert graphed == eager
    assert [len(t) for t in graphed] == [12 + 7 * k for k in range(5)]


def test_a_single_graphed_request_gives_the_plain_paths_greedy_tokens(tiny_model_dir: Path) -> None:
    # float32: the plain path attends without a mask and the engine with one (other SDPA kernels); in
    # bf16 their rounding differs enough to flip near-ties of a random model, in float32 it does not.
    model = Phi3VForCausalLM.from_pretrained(
        tiny_model_dir, torch_dtype=torch.float32, attn_implementation="sdpa", device=CUDA
    )
    (inputs,) = _requests(Phi3VProcessor.from_pretrained(tiny_model_dir))[:1]
    plain = list(
        generate_tokens(
            model, inputs, max_new_tokens=12, sampler=Sampler(SamplingParams(), CUDA), stop_ids=frozenset()
        )
    )
    assert _engine_tokens(model, [inputs], graphs=True) == [plain]


def test_a_llama_decoder_family_replays_its_graphs_with_the_eager_and_plain_tokens(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """The model-agnostic engine on another decoder: a tiny SmolVLM (Idefics3, Llama layers) in float32,
    three requests of different lengths; graph replay equals eager decoding, and each equals the plain
    path's greedy tokens."""
    from cerebro.families.base import LoadOptions
    from cerebro.families.hf_vlm import HFVisionLanguageFamily
    from cerebro.models.tiny_hf import write_tiny_smolvlm
    from cerebro.request import GenerationRequest
    from tests.support import greedy_job, plain_tokens

    folder = write_tiny_smolvlm(tmp_path / "smolvlm", tokenizer_dir, seed=5)
    family = HFVisionLanguageFamily.load(folder, LoadOptions(CUDA, torch.float32, "sdpa"))
    requests = [
        GenerationRequest(
            prompt="What is this? " * (k + 1),
            images=(Image.new("RGB", (64 + 16 * k, 48), (60 * k, 120, 200)),),
            max_new_tokens=10 + 5 * k,
        )
        for k in range(3)
    ]

    def engine_tokens(graphs: bool) -> list[list[int]]:
        decoder = family.decoder()
        assert decoder is not None
        engine = Engine(decoder, rows=2, capacity=512, cuda_graphs=graphs)
        try:
            if graphs:
                assert engine.capture_graphs()[0] > 0
            jobs = [greedy_job(family, request) for request in requests]
            for job in jobs:
                engine.submit(job)
            return [list(job.stream) for job in jobs]
        finally:
            engine.close()

    graphed = engine_tokens(graphs=True)
    assert graphed == engine_tokens(graphs=False)
    assert graphed == [plain_tokens(family, r, frozenset()) for r in requests]
