# Written with AI assistance; review before relying on it.
"""The `cerebro` command (also `python -m cerebro`): serve, predict, tiny-model, cog-yaml.

    cerebro serve --model-dir DIR [--host 127.0.0.1] [--port 5000]
    cerebro predict (--model-dir DIR | --url http://HOST:PORT | --replicate OWNER/NAME[:VERSION])
                    --image FILE_OR_URL [--image ...] --prompt "..." [--json-schema FILE] [options]
    cerebro tiny-model OUT_DIR --tokenizer-dir DIR [--kind phi3_v|smolvlm|qwen2_vl|caption]
                                                      (DIR must hold tokenizer.json)
    cerebro cog-yaml OWNER/NAME --revision SHA [--env CEREBRO_NAME=VALUE ...] [--out cog.yaml]

`predict` is one verb for every target: in-process on local weights, a self-hosted Cog container, or a
model deployed on Replicate (token from REPLICATE_API_TOKEN). Argument parsing and dispatch only; the
work is in cerebro/client.py, cerebro/serving.py, cerebro/predict.py, cerebro/models/phi3_v/tiny.py and
cerebro/models/tiny_hf.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cerebro import client
from cerebro.errors import CerebroError, InputError, WeightsError

RUNNER_REF = "cerebro/predict.py:Predictor"
# Named here, not imported from tiny_hf: building the parser must not import transformers.
TINY_KINDS = ("phi3_v", "smolvlm", "qwen2_vl", "caption")
log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cerebro", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="run the Cog HTTP server (coglet) on this runner, without Docker")
    serve.add_argument(
        "--model-dir", required=True, help="folder with the checkpoint (sets CEREBRO_MODEL_DIR)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 = all)"
    )
    serve.add_argument("--port", type=int, default=5000)

    predict = verbs.add_parser("predict", help="run one prediction (in-process, self-hosted or on Replicate)")
    target = predict.add_mutually_exclusive_group(required=True)
    target.add_argument("--model-dir", help="run in this process on the checkpoint in this folder")
    target.add_argument(
        "--url", help="a self-hosted Cerebro container (Cog HTTP API), e.g. http://localhost:5000"
    )
    target.add_argument("--replicate", metavar="OWNER/NAME[:VERSION]", help="a model deployed on Replicate")
    predict.add_argument(
        "--image",
        action="append",
        default=[],
        required=True,
        help="image file, http(s) URL or data URI; repeat for several images",
    )
    predict.add_argument("--prompt", default="", help="the question (optional for a captioning model)")
    predict.add_argument("--system-prompt")
    predict.add_argument("--json-schema", metavar="FILE", help="a JSON Schema file: the answer will validate")
    predict.add_argument("--max-new-tokens", type=int)
    predict.add_argument("--temperature", type=float)
    predict.add_argument("--top-p", type=float)
    predict.add_argument("--top-k", type=int)
    predict.add_argument("--repetition-penalty", type=float)
    predict.add_argument("--seed", type=int)
    predict.add_argument("--num-crops", type=int)
    predict.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print tokens as they arrive (default) or the whole answer at the end",
    )
    predict.add_argument(
        "--json", action="store_true", help="print the whole prediction (output, metrics) as JSON"
    )

    tiny = verbs.add_parser("tiny-model", help="write a tiny random-weight checkpoint (meaningless output)")
    tiny.add_argument("out_dir")
    tiny.add_argument(
        "--tokenizer-dir",
        required=True,
        help="folder with tokenizer.json (e.g. the real tokenizer): copied for --kind phi3_v, with "
        "tokenizer_config.json; the base of the tokenizer for the other kinds",
    )
    tiny.add_argument(
        "--kind",
        choices=TINY_KINDS,
        default="phi3_v",
        help="phi3_v (default): Phi-3.5-vision in the official layout; smolvlm (model_type idefics3), "
        "qwen2_vl, caption (ViT + GPT-2): transformers-native folders with a tokenizer derived from DIR",
    )
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--num-crops", type=int, help="phi3_v only (default 4)")
    tiny.add_argument("--shards", type=int, help="phi3_v only (default 1)")

    recipe = verbs.add_parser("cog-yaml", help="write the cog.yaml that bakes a checkpoint into the image")
    recipe.add_argument("model_id", metavar="OWNER/NAME", help="the checkpoint's Hugging Face repository")
    recipe.add_argument("--revision", required=True, help="the commit to pin (40 hex characters)")
    recipe.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="CEREBRO_NAME=VALUE",
        help="a deployment setting baked into the image, e.g. CEREBRO_FAMILY=hf_vlm; repeatable",
    )
    recipe.add_argument("--out", default="-", help="file to write (default: standard output)")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb == "serve":
            return _serve(args)
        if args.verb == "tiny-model":
            return _tiny_model(args, out, err)
        if args.verb == "cog-yaml":
            return _cog_yaml(args, out)
        return _predict(args, out, err)
    except CerebroError as error:
        print(f"error: {error.describe()}", file=err)
        return client.EXIT_USAGE if error.is_caller_error else client.EXIT_API
    except KeyboardInterrupt:
        return client.EXIT_INTERRUPTED


def _serve(args: argparse.Namespace) -> int:
    from cerebro import serving

    model_dir = Path(args.model_dir).resolve()
    runner = Path(__file__).resolve().parent / "predict.py"
    project = runner.parent.parent
    os.chdir(project)  # the runner reference and the schema's .cog/ folder are relative to the project root
    return serving.serve(
        RUNNER_REF, host=args.host, port=args.port, env={"CEREBRO_MODEL_DIR": str(model_dir)}
    )


def _tiny_model(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from cerebro.models.phi3_v.tiny import check_tokenizer_dir, write_tiny_model

    try:
        # Checked before anything is written: a model without a tokenizer cannot answer anything.
        check_tokenizer_dir(args.tokenizer_dir, field="--tokenizer-dir")
    except CerebroError as error:
        print(f"error: {error.describe()}", file=err)
        return client.EXIT_USAGE
    if args.kind != "phi3_v":
        return _tiny_hf_model(args, out)
    path = write_tiny_model(
        args.out_dir,
        args.tokenizer_dir,
        seed=args.seed,
        num_crops=4 if args.num_crops is None else args.num_crops,
        shards=1 if args.shards is None else args.shards,
    )
    print(f"wrote a tiny random-weight model to {path} (its answers are meaningless text)", file=out)
    return client.EXIT_OK


def _tiny_hf_model(args: argparse.Namespace, out: TextIO) -> int:
    """A transformers-native tiny model (--kind smolvlm, qwen2_vl or caption)."""
    for flag, value in (("--num-crops", args.num_crops), ("--shards", args.shards)):
        if value is not None:  # refused rather than ignored: the caller would not get what they asked for
            raise InputError(
                f"{flag} applies to --kind phi3_v only, not to --kind {args.kind}", field=flag, code="E1001"
            )
    from cerebro.models.tiny_hf import WRITERS

    path = WRITERS[args.kind](args.out_dir, args.tokenizer_dir, seed=args.seed)
    print(
        f"wrote a tiny random-weight {args.kind} model to {path} (its answers are meaningless text)", file=out
    )
    return client.EXIT_OK


def _cog_yaml(args: argparse.Namespace, out: TextIO) -> int:
    from cerebro.deploy import cog_yaml

    environment = dict(entry.partition("=")[::2] for entry in args.env)
    try:
        text = cog_yaml(args.model_id, args.revision, environment)
    except ValueError as error:
        raise InputError(str(error), field="cog-yaml", code="E1001") from None
    if args.out == "-":
        out.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out} for {args.model_id} at {args.revision}", file=out)
    return client.EXIT_OK


def _predict(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    extra = {
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "num_crops": args.num_crops,
    }
    if args.model_dir:
        return _predict_local(args, out, err, {k: v for k, v in extra.items() if v is not None})
    inputs = client.build_inputs(
        prompt=args.prompt,
        images=args.image,
        system_prompt=args.system_prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        json_schema_file=args.json_schema,
        extra={k: v for k, v in extra.items() if v is not None},
    )
    if args.url:
        return client.predict_url(args.url, inputs, stream=args.stream, as_json=args.json, out=out, err=err)
    return client.predict_replicate(
        args.replicate, inputs, stream=args.stream, as_json=args.json, out=out, err=err
    )


def _predict_local(args: argparse.Namespace, out: TextIO, err: TextIO, extra: dict[str, Any]) -> int:
    os.environ["CEREBRO_MODEL_DIR"] = str(Path(args.model_dir).resolve())
    # In this process the images are the user's own files: the one place a path is allowed.
    os.environ["CEREBRO_ALLOW_LOCAL_FILES"] = "true"
    from cerebro.predict import Predictor, iterate, run_inputs

    class LocalPredictor(Predictor):
        """Keeps the metrics that a Cog server would attach to the prediction."""

        metrics: dict[str, Any]

        def record_metric(self, key: str, value: Any, mode: str = "replace") -> None:
            self.metrics[key] = value

    model_dir = Path(args.model_dir)
    if (model_dir / "config.json").is_file() and not (model_dir / "tokenizer.json").is_file():
        raise WeightsError(
            f"--model-dir {str(model_dir)!r} has a config.json but no tokenizer.json: copy the "
            "checkpoint's tokenizer files into it, or write a tiny model again with "
            "cerebro tiny-model DIR --tokenizer-dir ../shared/fixtures/phi35v-tiny",
            field="--model-dir",
            code="E2012",
        )
    predictor = LocalPredictor()
    predictor.metrics = {}
    try:
        predictor.setup()
    except CerebroError:
        raise
    except Exception as exc:  # the CLI edge: one coded line; the traceback only at debug level
        log.debug("setup failed", exc_info=True)
        raise WeightsError(
            f"could not load the model in --model-dir {str(model_dir)!r}: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}",
            field="--model-dir",
            code="E2012",
        ) from exc
    schema = client.build_inputs(prompt=args.prompt, images=[], json_schema_file=args.json_schema).get(
        "json_schema", ""
    )
    chosen = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        **extra,
    }
    stream = iterate(
        predictor.run(
            **run_inputs(
                prompt=args.prompt,
                images=args.image,
                system_prompt=args.system_prompt or "",
                json_schema=schema,
                **{k: v for k, v in chosen.items() if v is not None},
            )
        )
    )
    pieces: list[str] = []
    try:
        for piece in stream:
            pieces.append(piece)
            if args.stream and not args.json:
                out.write(piece)
                out.flush()
    except CerebroError as error:
        if args.json:
            failed = {
                "status": "failed",
                "output": pieces,
                "error": error.describe(),
                "metrics": predictor.metrics,
            }
            print(json.dumps(failed, indent=2, ensure_ascii=False), file=out)
        else:
            print(f"\nerror: {error.describe()}", file=err)
        return client.EXIT_API
    if args.json:
        # `output` is the list of pieces, as over HTTP and from --url and --replicate; join them for the text.
        done = {"status": "succeeded", "output": pieces, "metrics": predictor.metrics}
        print(json.dumps(done, indent=2, ensure_ascii=False), file=out)
    elif not args.stream:
        print("".join(pieces), file=out)
    else:
        out.write("\n")
    return client.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
