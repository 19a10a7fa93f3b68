"""Bearer token auth on a real `maasctl serve` subprocess that reads its token from MAASCTL_TOKEN."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from helpers import http, run_cli, start_server, stop_server
from tritonclient.utils import InferenceServerException

TOKEN = "s3cret-token"
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
).encode()
PROTECTED = [
    ("GET", "/v2"),
    ("GET", "/v2/models/digits"),
    ("GET", "/v2/models/digits/versions/1"),
    ("GET", "/v2/models/digits/ready"),
    ("GET", "/v2/models/digits/manifest"),
    ("POST", "/v2/models/digits/infer"),
    ("POST", "/v2/models/digits/versions/1/infer"),
    ("GET", "/metrics"),
    ("POST", "/v2/repository/index"),
    (
        "POST",
        "/v2/repository/models/digits/load",
    ),  # unload too: the check is by path, and unload would end the module's model
]


@pytest.fixture(scope="module")
def server(model_repo):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAASCTL_TOKEN", TOKEN)
        srv = start_server(model_repo)  # the subprocess inherits the environment
    yield srv
    stop_server(srv)


def test_health_stays_open_without_a_token(server):
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert http("GET", server.url + path)[0] == 200, path


@pytest.mark.parametrize("method,path", PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_everything_else_needs_the_token(server, method, path):
    body = BODY if method == "POST" else None
    for headers, message in [
        ({}, "authentication required"),
        ({"Authorization": "Bearer wrong-token"}, "invalid token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid token"),
        ({"Authorization": f"Basic {TOKEN}"}, "invalid token"),
    ]:
        status, reply_headers, reply = http(method, server.url + path, body, headers)
        assert status == 401, (headers, reply)
        assert message in json.loads(reply)["error"]
        assert reply_headers["www-authenticate"].startswith("Bearer")
    status, _, reply = http(method, server.url + path, body, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, reply


def test_tritonclient_with_the_token_header(server):
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        x = httpclient.InferInput("input", [2, 1, 8, 8], "FP32")
        x.set_data_from_numpy(np.zeros((2, 1, 8, 8), np.float32), binary_data=True)
        assert client.infer("digits", [x], headers={"Authorization": f"Bearer {TOKEN}"}).as_numpy("logits").shape == (
            2,
            10,
        )
        with pytest.raises(InferenceServerException, match="authentication required"):
            client.infer("digits", [x])
        assert client.is_server_ready()  # health needs no header
    finally:
        client.close()


def test_an_empty_token_is_refused_at_start(model_repo):
    proc = run_cli("serve", "--repo", str(model_repo), check=False, env={"MAASCTL_TOKEN": " "})
    assert proc.returncode == 2 and "MAASCTL_TOKEN is empty" in proc.stderr
