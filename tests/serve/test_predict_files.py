"""`POST /v2/models/{name}/predict` over real HTTP on loopback: files in, the CLI's prediction objects out.

One in-process server (uvicorn in a thread, a small body limit, a token) serves the session's digits model and
two hand-built ONNX models: a tabular one (columns a, b) and a text one (4 token ids), each small enough that
the expected answers are worked out here with numpy.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import file_onnx_model, metric, scrape, serving
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from maasctl.predict import LocalTarget, predict
from maasctl.preprocess import tabular_spec, text_spec
from maasctl.repository import ModelRepository
from maasctl.serve.dataplane import DataPlane

MAX_BODY = 64 * 1024
TOKEN = "predict-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N = 6

W_ROWS = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]], dtype=np.float32)  # (a, b) -> 3 classes
ROWS_SPEC = tabular_spec(["a", "b"], np.array([1.0, 2.0]), np.array([2.0, 0.5]))
W_TEXT = np.array([[1.0, -1.0], [0.5, 0.0], [-0.25, 1.0], [0.0, 0.5]], dtype=np.float32)  # 4 token ids -> 2 classes
TEXT_SPEC = text_spec(["good", "bad", "film", "!"], max_len=4, lowercase=True)


# --- models and server -------------------------------------------------------------------------------------------


def _matmul_model(name: str, dtype: int, width: int, classes: int, w: np.ndarray):
    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT)] if dtype != TensorProto.FLOAT else []
    nodes.append(helper.make_node("MatMul", ["x" if nodes else "input", "W"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", dtype, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, model_repo) -> Path:
    root = tmp_path_factory.mktemp("predict") / "models"
    shutil.copytree(model_repo / "digits", root / "digits")
    file_onnx_model(
        root,
        "rows",
        _matmul_model("rows", TensorProto.FLOAT, 2, 3, W_ROWS),
        task="classification",
        inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
        labels=["x", "y", "z"],
        preprocessing=ROWS_SPEC,
    )
    file_onnx_model(
        root,
        "words",
        _matmul_model("words", TensorProto.INT64, 4, 2, W_TEXT),
        task="classification",
        inputs=[{"name": "input", "datatype": "INT64", "shape": [-1, 4]}],
        outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
        labels=["neg", "pos"],
        preprocessing=TEXT_SPEC,
    )
    return root


@pytest.fixture(scope="module")
def port(repo) -> Iterator[int]:
    dataplane = DataPlane(ModelRepository(repo), "cpu")
    dataplane.load_all()
    assert dataplane.ready, dataplane.repository_index()
    with serving(
        dataplane, max_body_bytes=MAX_BODY, token=TOKEN
    ) as base:  # real uvicorn on a loopback port, in a thread
        yield int(base.rsplit(":", 1)[1])


def post(port: int, path: str, body: bytes, content_type: str | None, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={**AUTH, **({"Content-Type": content_type} if content_type else {}), **(headers or {})},
        )
        response = conn.getresponse()
        raw = response.read()
        assert response.getheader("content-type", "").startswith("application/json"), raw[:200]
        return response.status, json.loads(raw)
    finally:
        conn.close()


def multipart(
    *parts: tuple[str, str | None, bytes], content_type: str = "application/octet-stream"
) -> tuple[bytes, str]:
    """(field, filename or None for a plain field, data) parts -> body and its Content-Type, as curl -F sends them."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for field, filename, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        if filename is None:
            out.write(f'Content-Disposition: form-data; name="{field}"\r\n\r\n'.encode())
        else:
            out.write(f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode())
            out.write(f"Content-Type: {content_type}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels: Pillow refuses it on opening (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def good_request_works(port: int) -> None:
    status, doc = post(port, "/v2/models/rows/predict", b"a,b\n1,2\n", "text/csv")
    assert status == 200 and doc["predictions"][0]["label"] in {"x", "y", "z"}, doc


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, repo) -> list[Path]:
    from maasctl.data import build_dataset
    from maasctl.recipe import load_recipe

    raw = build_dataset(load_recipe().data, seed=0).test.raw[:N]
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, pixels in enumerate(raw):
        Image.fromarray(pixels).resize((16, 16)).save(
            folder / f"digit{i}.png"
        )  # resized back to 8x8 by the preprocessing
        paths.append(folder / f"digit{i}.png")
    return paths


# --- what comes back -----------------------------------------------------------------------------------------------


def test_multipart_images_match_the_cli_local_engine(port, repo, pngs):
    local = predict(LocalTarget("digits", repo), [str(p) for p in pngs], top_k=3)
    body, content_type = multipart(*[("file", p.name, p.read_bytes()) for p in pngs])
    status, doc = post(port, "/v2/models/digits/predict?top_k=3", body, content_type)
    assert status == 200, doc
    assert doc["model_name"] == "digits" and doc["model_version"] == "1"
    assert [p["input"] for p in doc["predictions"]] == [p.name for p in pngs]
    for served, mine in zip(doc["predictions"], local):
        expected = mine.to_json()
        assert served.keys() == expected.keys() and len(served["top_k"]) == 3
        assert served["label"] == expected["label"] and served["index"] == expected["index"]
        assert [t["label"] for t in served["top_k"]] == [t["label"] for t in expected["top_k"]]
        np.testing.assert_allclose(
            [t["probability"] for t in served["top_k"]], [t["probability"] for t in expected["top_k"]], atol=1e-6
        )
        assert served["probability"] == served["top_k"][0]["probability"]
    # the version path, and a raw image body
    status, one = post(port, "/v2/models/digits/versions/1/predict", pngs[0].read_bytes(), "image/png")
    assert status == 200, one
    assert one["predictions"][0]["input"] == "<body>" and one["predictions"][0]["label"] == local[0].label
    assert len(one["predictions"][0]["top_k"]) == 1  # top_k defaults to 1


def test_csv_rows_raw_multipart_and_json(port):
    rows = np.array([[1.0, 2.0], [3.0, 0.5], [-2.0, 4.0]])
    # Worked out by hand, not with the code under test: standardised with mean (1, 2) and std (2, 0.5) the rows are
    # (0, 0), (1, -3), (-1.5, 4); times W_ROWS the logits are (0, 0, 0), (-0.5, -7, 3.5), (0.5, 9.5, -4.75). A tie
    # goes to the first class; the probabilities are 1/3, 1 / (1 + e^-4 + e^-10.5), 1 / (1 + e^-9 + e^-14.25).
    labels = ["x", "z", "y"]
    probs = [1 / 3, 0.9819872359511869, 0.9998759579890248]
    csv_text = "b,label,a\n" + "".join(f"{b},?,{a}\n" for a, b in rows)  # columns by name, in any order
    status, doc = post(port, "/v2/models/rows/predict", csv_text.encode(), "text/csv; charset=utf-8")
    assert status == 200, doc
    assert [p["input"] for p in doc["predictions"]] == ["<body>[0]", "<body>[1]", "<body>[2]"]
    assert [p["label"] for p in doc["predictions"]] == labels
    np.testing.assert_allclose([p["probability"] for p in doc["predictions"]], probs, rtol=1e-5)
    body, content_type = multipart(("file", "rows.csv", csv_text.encode()))
    status, doc = post(port, "/v2/models/rows/predict?top_k=2", body, content_type)
    assert status == 200 and [p["input"] for p in doc["predictions"]] == ["rows.csv[0]", "rows.csv[1]", "rows.csv[2]"]
    assert [p["label"] for p in doc["predictions"]] == labels and all(len(p["top_k"]) == 2 for p in doc["predictions"])
    status, doc = post(
        port,
        "/v2/models/rows/predict",
        json.dumps({"rows": [{"a": a, "b": b} for a, b in rows]}).encode(),
        "application/json",
    )
    assert status == 200 and [p["label"] for p in doc["predictions"]] == labels, doc


def test_texts_raw_lines_form_fields_and_json(port):
    texts = ["Good film!", "bad bad film", "nothing\u2028known\nhere"]
    # By hand: ids are pad 0, unknown 1, then the vocabulary from 2 (good 2, bad 3, film 4, ! 5), padded to 4, so
    # the inputs are (2, 4, 5, 0), (3, 3, 4, 0), (1, 1, 1, 0) (the line separators split nothing: 3 unknown words)
    # and the logits, times W_TEXT, (2.75, 3), (3.5, 1), (1.25, 0).
    labels = ["pos", "neg", "neg"]
    status, doc = post(
        port, "/v2/models/words/predict", ("\n".join(texts[:2]) + "\n\n").encode(), "text/plain"
    )  # a line each
    assert status == 200 and [p["label"] for p in doc["predictions"]] == labels[:2], doc
    assert [p["input"] for p in doc["predictions"]] == ["<body>[0]", "<body>[1]"]
    body, content_type = multipart(*[("text", None, t.encode()) for t in texts])  # curl -F text='...'
    status, doc = post(port, "/v2/models/words/predict", body, content_type)
    assert status == 200 and [p["label"] for p in doc["predictions"]] == labels, doc
    assert [p["input"] for p in doc["predictions"]] == ["text[0]", "text[1]", "text[2]"]
    status, doc = post(port, "/v2/models/words/predict", json.dumps({"texts": texts}).encode(), "application/json")
    assert status == 200 and [p["label"] for p in doc["predictions"]] == labels, doc
    jsonl = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    body, content_type = multipart(("file", "reviews.jsonl", jsonl))
    status, doc = post(port, "/v2/models/words/predict", body, content_type)
    assert status == 200 and [p["label"] for p in doc["predictions"]] == labels, doc


def test_npy_tensor_upload(port):
    x = np.array([[0.5, -1.0], [2.0, 2.0]], dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    body, content_type = multipart(("file", "batch.npy", buf.getvalue()))
    status, doc = post(port, "/v2/models/rows/predict", body, content_type)
    assert status == 200, doc
    assert [p["input"] for p in doc["predictions"]] == ["batch.npy[0]", "batch.npy[1]"]
    # a tensor goes in as is (no standardisation): logits (0, -2.5, 1.25) and (3, 2, -1)
    assert [p["index"] for p in doc["predictions"]] == [2, 0]


# --- what is refused, and the server keeps serving -----------------------------------------------------------------


def test_bad_inputs_are_400_naming_the_input(port, pngs):
    png = pngs[0].read_bytes()
    cases = [
        (
            "digits",
            *multipart(("file", "seven.png", b"this is not a png"), ("file", "ok.png", png)),
            "seven.png: not a readable image",
        ),
        ("digits", b"GIF89a nope", "image/gif", "<body>: not a readable image"),
        ("words", *multipart(("file", "three.png", png)), "three.png: read as an image, but the model takes texts"),
        (
            "rows",
            b"hello\n",
            "text/plain",
            "texts are inputs for text models, but the model takes CSV rows with columns a, b",
        ),
        ("digits", b"a,b\n1,2\n", "text/csv", "CSV rows are inputs for tabular models, but the model takes images"),
        ("rows", b"a,c\n1,2\n", "text/csv", "<body>: no column b"),
        ("rows", b"a,b\n1,2\n1,oops\n", "text/csv", "<body>[1] (line 3): column b: 'oops' is not a number"),
        ("rows", b"a,b\n", "text/csv", "a header but no rows"),
        ("rows", b"", "text/csv", "an empty request body"),
        ("rows", b"a=1", "application/x-www-form-urlencoded", "-H 'Content-Type: image/png'"),
        ("rows", b"a,b\n1,2\n", None, "Content-Type missing is not accepted"),
        ("rows", b"{nope", "application/json", "not valid JSON"),
        ("rows", b'{"rows": [1, 2]}', "application/json", '"rows" must be a list of objects'),
        ("words", b'{"texts": "one"}', "application/json", '"texts" must be a list of strings'),
        ("words", b"\xff\xfe\x00bad", "text/plain", "not UTF-8 text"),
        ("rows", *multipart(("top_k", None, b"3")), "top_k is a query parameter"),
        ("digits", *multipart(("file", None, b"seven.png")), "form field 'file' holds a value, not a file"),
        ("words", *multipart(("text", None, b"good"), ("text", None, b"  ")), "text[1]: an empty text"),
        ("rows", b"--x--\r\n", "multipart/form-data", "not a readable multipart/form-data body"),
        ("rows", *multipart(("file", "x.npy", b"\x93NUMPY garbage")), "x.npy: not a readable npy tensor"),
        ("digits", bomb_png(30000, 30000), "image/png", "<body>: could not be read (DecompressionBombError: "),
    ]
    for model, body, content_type, message in cases:
        status, doc = post(port, f"/v2/models/{model}/predict", body, content_type)
        assert status == 400, (message, doc)
        assert message in doc["error"], (message, doc)
        good_request_works(port)


def test_many_bad_files_are_counted_in_one_message(port):
    body, content_type = multipart(*[("file", f"bad{i}.png", b"nope") for i in range(5)])
    status, doc = post(port, "/v2/models/digits/predict", body, content_type)
    assert status == 400 and "bad0.png" in doc["error"] and "(and 2 more problems)" in doc["error"], doc


@pytest.mark.parametrize("top_k", ["0", "-1", "abc", "1.5", "100000", "%C2%B2", "9" * 5000, ""])
def test_bad_top_k_is_400(port, top_k):
    status, doc = post(port, f"/v2/models/rows/predict?top_k={top_k}", b"a,b\n1,2\n", "text/csv")
    assert status == 400 and "top_k must be a whole number" in doc["error"], doc
    status, doc = post(port, "/v2/models/rows/predict?top_k=1&top_k=2", b"a,b\n1,2\n", "text/csv")
    assert status == 400 and "once" in doc["error"]
    status, doc = post(
        port, "/v2/models/rows/predict?top_k=50", b"a,b\n1,2\n", "text/csv"
    )  # more than the classes: all 3
    assert status == 200 and len(doc["predictions"][0]["top_k"]) == 3


def test_unknown_model_or_version_is_404(port):
    status, doc = post(port, "/v2/models/nope/predict", b"a,b\n1,2\n", "text/csv")
    assert status == 404 and "unknown model 'nope'" in doc["error"]
    status, doc = post(port, "/v2/models/rows/versions/7/predict", b"a,b\n1,2\n", "text/csv")
    assert status == 404 and "no version '7'" in doc["error"]
    good_request_works(port)


def test_too_large_is_413_raw_or_multipart(port):
    big = b"a,b\n" + b"1,2\n" * (MAX_BODY // 4 + 10)
    status, doc = post(port, "/v2/models/rows/predict", big, "text/csv")
    assert status == 413 and "exceeds the limit" in doc["error"]
    body, content_type = multipart(("file", "big.csv", big))
    status, doc = post(port, "/v2/models/rows/predict", body, content_type)
    assert status == 413 and "exceeds the limit" in doc["error"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # no Content-Length: counted as it streams
    chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))
    conn.request(
        "POST",
        "/v2/models/rows/predict",
        body=chunks,
        headers={**AUTH, "Content-Type": content_type},
        encode_chunked=True,
    )
    response = conn.getresponse()
    assert response.status == 413 and "exceeds the limit of" in json.loads(response.read())["error"]
    conn.close()
    good_request_works(port)


def test_needs_the_token(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v2/models/rows/predict", body=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"})
    response = conn.getresponse()
    assert response.status == 401 and "authentication required" in json.loads(response.read())["error"]
    conn.request("GET", "/v2/models/rows/predict", headers=AUTH)
    response = conn.getresponse()
    assert response.status == 405 and "error" in json.loads(response.read())
    conn.close()


def test_overloaded_is_503_before_any_work(repo):
    """The same batcher as /infer: a full queue refuses the request (503 through the server's error rules)."""
    import asyncio

    from maasctl.inputs.uploads import body_sources
    from maasctl.protocol.errors import NotReady
    from maasctl.serve.batching import BatchingConfig
    from maasctl.serve.dataplane import Upload

    dataplane = DataPlane(ModelRepository(repo), "cpu", BatchingConfig(max_queue_size=0))
    dataplane.load_all()

    async def read(manifest):
        return Upload(body_sources("text/csv", b"a,b\n1,2\n"))

    with pytest.raises(NotReady, match="overloaded") as caught:
        asyncio.run(dataplane.predict("rows", None, read))
    assert caught.value.status == 503


def test_one_request_counts_once_in_the_metrics_and_bad_input_counts_as_failure(port):
    base, rows = f"http://127.0.0.1:{port}", "".join(f"{i},{i + 1}\n" for i in range(300))
    before = scrape(base, AUTH)
    assert post(port, "/v2/models/rows/predict", b"a,b\n" + rows.encode(), "text/csv")[0] == 200
    assert post(port, "/v2/models/rows/predict", b"a,c\n1,2\n", "text/csv")[0] == 400  # no column b
    after = scrape(base, AUTH)

    def delta(name, **labels):
        return metric(after, name, model="rows", **labels) - metric(before, name, model="rows", **labels)

    assert delta("nv_inference_request_success_total") == 1
    assert delta("nv_inference_request_failure_total", reason="OTHER") == 1
    assert delta("nv_inference_count_total") == 300
