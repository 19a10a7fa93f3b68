"""The Open Inference Protocol over gRPC (`maasctl serve --grpc-port`), driven by tritonclient.grpc and by its
generated stub (for typed `contents`, which tritonclient itself never sends), against a real server process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import file_onnx_model, free_port, metric, scrape, start_server, stop_server, wait_until
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

TOKEN = "s3cret-grpc"
AUTH = {"authorization": f"Bearer {TOKEN}"}
METADATA = (("authorization", f"Bearer {TOKEN}"),)


def _identity_model(name: str, tensors: list[tuple[str, int, list]]):
    """out_<input> = input, for each (input name, ONNX element type, shape)."""
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"out_{n}"]) for n, _, _ in tensors],
        name,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in tensors],
        [helper.make_tensor_value_info(f"out_{n}", t, s) for n, t, s in tensors],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def file_models(repo: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    double = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    file_onnx_model(
        repo,
        "double",
        double,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    )
    tensors = [
        ("a", TensorProto.INT8, ["batch", 3]),
        ("b", TensorProto.INT64, ["batch"]),
        ("s", TensorProto.STRING, ["batch"]),
        ("h", TensorProto.FLOAT16, ["batch"]),
    ]
    datatypes = {"a": "INT8", "b": "INT64", "s": "BYTES", "h": "FP16"}
    shapes = {"a": [-1, 3], "b": [-1], "s": [-1], "h": [-1]}
    file_onnx_model(
        repo,
        "mixed",
        _identity_model("mixed", tensors),
        inputs=[{"name": n, "datatype": datatypes[n], "shape": shapes[n]} for n in datatypes],
        outputs=[{"name": f"out_{n}", "datatype": datatypes[n], "shape": shapes[n]} for n in datatypes],
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("grpc") / "repo"
    file_models(repo)
    port = free_port()
    srv = start_server(repo, "--grpc-port", str(port), "--token", TOKEN, "--max-body-mb", "1")
    srv.grpc = f"127.0.0.1:{port}"
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def raw_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_health_needs_no_token_and_metadata_does(client):
    assert client.is_server_live() and client.is_server_ready()  # the two open RPCs
    meta = client.get_server_metadata(headers=AUTH)
    assert meta.name == "maasctl" and "binary_tensor_data" in meta.extensions
    model = client.get_model_metadata("double", headers=AUTH)
    assert model.platform == "onnx_onnxv1" and model.versions == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, 2])]
    assert client.is_model_ready("double", headers=AUTH) and client.is_model_ready("double", "1", headers=AUTH)
    assert not client.is_model_ready("nope", headers=AUTH)
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        with pytest.raises(InferenceServerException) as info:
            client.get_server_metadata(headers=headers)
        assert info.value.status() == "StatusCode.UNAUTHENTICATED", headers


def test_infer_with_raw_contents_as_tritonclient_sends_them(client):
    x = np.array([[1.5, -2.0], [3.0, 0.25]], np.float32)
    result = client.infer("double", [raw_input("x", x, "FP32")], headers=AUTH, request_id="r-7")
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    assert result.get_response().id == "r-7" and result.get_response().model_version == "1"

    a = np.array([[-128, 0, 127], [1, 2, 3]], np.int8)
    b = np.array([2**62, -5], np.int64)
    s = np.array([b"caf\xc3\xa9", b""], dtype=object)
    h = np.array([0.5, -65504], np.float16)
    inputs = [raw_input("a", a, "INT8"), raw_input("b", b, "INT64"), raw_input("s", s, "BYTES")]
    inputs.append(raw_input("h", h, "FP16"))
    outputs = [grpcclient.InferRequestedOutput("out_b"), grpcclient.InferRequestedOutput("out_s")]
    result = client.infer("mixed", inputs, outputs=outputs, headers=AUTH)
    assert [o.name for o in result.get_response().outputs] == ["out_b", "out_s"]  # only those asked for
    np.testing.assert_array_equal(result.as_numpy("out_b"), b)
    assert result.as_numpy("out_s").tolist() == [b"caf\xc3\xa9", b""]
    result = client.infer("mixed", inputs, headers=AUTH)
    np.testing.assert_array_equal(result.as_numpy("out_a"), a)
    np.testing.assert_array_equal(result.as_numpy("out_h"), h)


def typed_request(model: str, *tensors: tuple[str, str, list[int], str, list]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape, field, values in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(tensor.contents, field).extend(values)
    return request


def test_infer_with_typed_contents_replies_with_raw_output_contents(stub):
    reply = stub.ModelInfer(
        typed_request("double", ("x", "FP32", [1, 2], "fp32_contents", [1.0, 2.5])), metadata=METADATA
    )
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("y", "FP32", [1, 2])]
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], "<f4"), [2.0, 5.0])
    request = typed_request(
        "mixed",
        ("a", "INT8", [1, 3], "int_contents", [-1, 0, 100]),
        ("b", "INT64", [1], "int64_contents", [-(2**63)]),
        ("s", "BYTES", [1], "bytes_contents", [b"hi"]),
        ("h", "FP16", [1], "fp32_contents", []),
    )
    del request.inputs[3]  # FP16 has no typed field: raw only (checked below); the rest go typed
    status = status_of(lambda: stub.ModelInfer(request, metadata=METADATA))
    assert status[0] == grpc.StatusCode.INVALID_ARGUMENT and "missing input(s) h" in status[1]
    h = request.inputs.add(name="h", datatype="FP16", shape=[1])
    h.contents.fp32_contents.append(1.0)
    status = status_of(lambda: stub.ModelInfer(request, metadata=METADATA))
    assert status[0] == grpc.StatusCode.INVALID_ARGUMENT and "FP16 travels only in raw_input_contents" in status[1]


@pytest.mark.parametrize(
    "request_, code, words",
    [
        (typed_request("nope", ("x", "FP32", [1, 2], "fp32_contents", [1, 2])), "NOT_FOUND", "unknown model"),
        (typed_request("double", ("x", "FP32", [1, 3], "fp32_contents", [1, 2, 3])), "INVALID_ARGUMENT", "shape"),
        (typed_request("double", ("x", "FP64", [1, 2], "fp64_contents", [1, 2])), "INVALID_ARGUMENT", "datatype"),
        (typed_request("double", ("x", "FP32", [1, 2], "fp32_contents", [1])), "INVALID_ARGUMENT", "1 values"),
        (typed_request("double", ("z", "FP32", [1, 2], "fp32_contents", [1, 2])), "INVALID_ARGUMENT", "unknown input"),
        (typed_request("double"), "INVALID_ARGUMENT", "non-empty"),
        (
            typed_request("mixed", ("a", "INT8", [1, 3], "int_contents", [1, 2, 300])),
            "INVALID_ARGUMENT",
            "out of range for INT8",
        ),
    ],
)
def test_bad_requests_get_grpc_status_codes(stub, request_, code, words):
    status, details = status_of(lambda: stub.ModelInfer(request_, metadata=METADATA))
    assert status.name == code and words in details, details


def test_raw_and_typed_contents_do_not_mix_and_raw_counts_must_match(stub, client):
    request = typed_request("double", ("x", "FP32", [1, 2], "fp32_contents", [1, 2]))
    request.raw_input_contents.append(np.zeros(2, np.float32).tobytes())
    status, details = status_of(lambda: stub.ModelInfer(request, metadata=METADATA))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "one or the other" in details
    request = service_pb2.ModelInferRequest(model_name="double")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.extend([b"\0" * 8, b"\0" * 8])
    status, details = status_of(lambda: stub.ModelInfer(request, metadata=METADATA))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "2 raw_input_contents for 1 inputs" in details
    request.raw_input_contents.pop()
    request.raw_input_contents[0] = b"\0" * 7
    status, details = status_of(lambda: stub.ModelInfer(request, metadata=METADATA))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "7 bytes" in details
    # over --max-body-mb (1 MiB), refused by grpc before decoding; the server keeps serving
    big = np.zeros((300_000, 2), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [raw_input("x", big, "FP32")], headers=AUTH)
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_ready()


def test_repository_rpcs(client, stub):
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index(headers=AUTH).models}
    assert index == {("double", "1"): "READY", ("mixed", "1"): "READY"}
    client.unload_model("double", headers=AUTH)
    try:
        assert not client.is_model_ready("double", headers=AUTH)
        ready = client.get_model_repository_index(headers=AUTH)
        assert [m.name for m in ready.models if m.state == "READY"] == ["mixed"]
        with pytest.raises(InferenceServerException) as info:
            client.infer("double", [raw_input("x", np.zeros((1, 2), np.float32), "FP32")], headers=AUTH)
        assert info.value.status() == "StatusCode.NOT_FOUND" and "unloaded" in info.value.message()
    finally:
        client.load_model("double", headers=AUTH)
    assert client.is_model_ready("double", headers=AUTH)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("nope", headers=AUTH)
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.load_model("double", config='{"max_batch_size": 8}', headers=AUTH)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "not supported" in info.value.message()
    assert status_of(lambda: stub.RepositoryIndex(service_pb2.RepositoryIndexRequest()))[0].name == "UNAUTHENTICATED"


def test_grpc_and_rest_share_the_batchers_and_metrics(server, client):
    def counted() -> float:
        return metric(scrape(server.url, AUTH), "nv_inference_request_success_total", model="mixed")

    before = counted()
    a = np.zeros((1, 3), np.int8)
    inputs = [raw_input("a", a, "INT8"), raw_input("b", np.zeros(1, np.int64), "INT64")]
    inputs += [raw_input("s", np.array([b"x"], dtype=object), "BYTES"), raw_input("h", np.zeros(1, np.float16), "FP16")]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.infer("mixed", inputs, headers=AUTH), range(8)))
    assert counted() == before + 8


def test_sigterm_drains_grpc_calls_in_flight(tmp_path):
    # Calls wait up to 1.5 s in the queue for a batch: long enough to SIGTERM while both are in flight.
    file_models(tmp_path / "repo")
    port = free_port()
    server = start_server(tmp_path / "repo", "--grpc-port", str(port), "--max-queue-delay-ms", "1500")
    xs = [np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0], [5.0, 6.0]], np.float32)]
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as c, ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(c.infer, "double", [raw_input("x", x, "FP32")]) for x in xs]
        try:
            wait_until(
                lambda: metric(scrape(server.url), "nv_inference_pending_request_count", model="double") == 2,
                "2 queued gRPC calls",
            )
        finally:
            code, log = stop_server(server)
        results = [call.result(30).as_numpy("y") for call in calls]
    assert code == 0, log
    for x, y in zip(xs, results):
        np.testing.assert_array_equal(y, 2 * x)
