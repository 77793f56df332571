# Written with AI assistance; review before relying on it.
"""`cerebro.client` without a server: building inputs, and the checks that stop before any request."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from cerebro.client import (
    EXIT_USAGE,
    build_inputs,
    output_pieces,
    predict_replicate,
    predict_url,
    render_output,
)
from cerebro.errors import ImageError, InputError, SchemaError


def _image(path: Path, fmt: str) -> Path:
    Image.new("RGB", (4, 3), (200, 30, 30)).save(path, format=fmt)
    return path


def _decoded(data_uri: str) -> tuple[str, bytes]:
    header, _, payload = data_uri.partition(",")
    assert header.startswith("data:") and header.endswith(";base64")
    return header[len("data:") : -len(";base64")], base64.b64decode(payload)


# --- build_inputs -----------------------------------------------------------------------------------


def test_a_local_file_becomes_a_data_uri_with_its_media_type(tmp_path: Path) -> None:
    png = _image(tmp_path / "cat.png", "PNG")

    inputs = build_inputs(prompt="What is this?", images=[str(png)])

    media_type, data = _decoded(inputs["image"])
    assert media_type == "image/png"
    assert data == png.read_bytes()
    assert inputs["prompt"] == "What is this?"


def test_the_media_type_comes_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    jpeg_named_png = _image(tmp_path / "photo.png", "JPEG")
    webp = _image(tmp_path / "picture", "WEBP")

    inputs = build_inputs(prompt="p", images=[str(jpeg_named_png), str(webp)])

    assert [_decoded(uri)[0] for uri in inputs["images"]] == ["image/jpeg", "image/webp"]


def test_urls_pass_through_unchanged_and_several_images_go_in_images(tmp_path: Path) -> None:
    png = _image(tmp_path / "a.png", "PNG")
    urls = ["https://example.com/a.jpg", "http://example.com/b.png?x=1", "data:image/gif;base64,R0lGOD"]

    inputs = build_inputs(prompt="compare", images=[*urls, str(png)])

    assert inputs["images"][:3] == urls
    assert inputs["images"][3].startswith("data:image/png;base64,")
    assert "image" not in inputs


def test_none_values_are_omitted_and_set_values_kept() -> None:
    inputs = build_inputs(prompt="p", images=["https://example.com/a.jpg"], temperature=0.0, seed=None)

    assert inputs == {"prompt": "p", "image": "https://example.com/a.jpg", "temperature": 0.0}
    assert build_inputs(prompt="p", images=[]) == {"prompt": "p"}


def test_a_json_schema_file_is_passed_as_its_text(tmp_path: Path) -> None:
    schema = tmp_path / "answer.schema.json"
    schema.write_text('{"type": "object", "properties": {"color": {"type": "string"}}}\n')

    inputs = build_inputs(prompt="p", images=[], json_schema_file=str(schema), max_new_tokens=64)

    assert inputs["json_schema"] == schema.read_text()
    assert inputs["max_new_tokens"] == 64


def test_a_schema_file_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    schema = tmp_path / "broken.json"
    schema.write_text('{"type": "object",\n')

    with pytest.raises(SchemaError) as caught:
        build_inputs(prompt="p", images=[], json_schema_file=str(schema))

    assert str(schema) in caught.value.message
    assert "not valid JSON" in caught.value.message
    assert caught.value.code == "E1300"
    assert caught.value.field == "json_schema"


def test_a_missing_schema_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"missing\.json"):
        build_inputs(prompt="p", images=[], json_schema_file=str(tmp_path / "missing.json"))


def test_an_image_that_is_neither_a_file_nor_a_url_names_it(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as caught:
        build_inputs(prompt="p", images=["https://example.com/a.jpg", "ftp://example.com/b.png"])

    assert caught.value.field == "images[1]"
    assert "ftp://example.com/b.png" in caught.value.message


def test_extra_inputs_are_added_but_may_not_repeat_a_named_one() -> None:
    assert build_inputs(prompt="p", images=[], extra={"top_p": 0.9})["top_p"] == 0.9
    with pytest.raises(InputError, match="'prompt' is given twice"):
        build_inputs(prompt="p", images=[], extra={"prompt": "q"})


def test_render_output_joins_tokens_and_pretty_prints_other_json() -> None:
    assert render_output(["Hel", "lo"]) == "Hello"
    assert render_output("Hello") == "Hello"
    assert render_output(None) == ""
    assert render_output({"color": "red"}) == '{\n  "color": "red"\n}'


def test_json_output_is_always_the_list_of_pieces() -> None:
    # `--json` prints one shape for every target: what a server gave as one string becomes one piece.
    assert output_pieces(["Hel", "lo"]) == ["Hel", "lo"]
    assert output_pieces("Hello") == ["Hello"]
    assert output_pieces(None) == []
    assert output_pieces({"color": "red"}) == {"color": "red"}  # not text: left as the server sent it


# --- checks before any request ------------------------------------------------------------------------


class CountingServer:
    """A loopback server that answers 500 to everything and counts what reached it."""

    def __init__(self) -> None:
        self.count = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                owner.count += 1
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def counting() -> Iterator[CountingServer]:
    server = CountingServer()
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.mark.parametrize("token", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_a_missing_token_exits_2_without_any_request(counting: CountingServer, token: str | None) -> None:
    environ = {"REPLICATE_BASE_URL": counting.url}
    if token is not None:
        environ["REPLICATE_API_TOKEN"] = token
    out, err = io.StringIO(), io.StringIO()

    code = predict_replicate("cerebro/phi-3.5-vision", {"prompt": "p"}, out=out, err=err, environ=environ)

    assert code == EXIT_USAGE
    assert "REPLICATE_API_TOKEN" in err.getvalue()
    assert "https://replicate.com/account/api-tokens" in err.getvalue()
    assert out.getvalue() == ""
    assert counting.count == 0


def test_the_counting_server_does_count(counting: CountingServer) -> None:
    """Guards the test above: a request that is made does reach the server."""
    environ = {"REPLICATE_API_TOKEN": "r8_x", "REPLICATE_BASE_URL": counting.url}

    predict_replicate(
        "cerebro/phi-3.5-vision", {"prompt": "p"}, out=io.StringIO(), err=io.StringIO(), environ=environ
    )

    assert counting.count >= 1


@pytest.mark.parametrize("ref", ["phi-3.5-vision", "a/b/c", ""])
def test_a_malformed_model_ref_exits_2_without_any_request(counting: CountingServer, ref: str) -> None:
    environ = {"REPLICATE_API_TOKEN": "r8_x", "REPLICATE_BASE_URL": counting.url}
    err = io.StringIO()

    assert predict_replicate(ref, {"prompt": "p"}, out=io.StringIO(), err=err, environ=environ) == EXIT_USAGE
    assert "owner/name" in err.getvalue()
    assert counting.count == 0


def test_a_url_without_a_scheme_exits_2() -> None:
    err = io.StringIO()

    assert predict_url("localhost:5000", {"prompt": "p"}, out=io.StringIO(), err=err) == EXIT_USAGE
    assert "http://" in err.getvalue()
