"""A closed-loop gRPC load generator (grpc.aio, one channel per connection), run as its own process by serve.py.

    python benchmarks/_grpc_loadgen.py < spec.json     # prints one JSON object, as _loadgen.py does

spec: {"host", "port", "model", "input", "shape", "raw_b64", "concurrency", "duration_s", "max_requests",
"warmup_s"}. Each of `concurrency` channels (its own HTTP/2 connection) sends the same ModelInfer with the tensor
in raw_input_contents, as tritonclient.grpc does, waits for the reply, and sends the next.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time

import grpc
from _loadgen import drive  # the same load loop and report as the REST load generator (run from benchmarks/)

from maasctl.protocol import oip_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def _connection(spec: dict, request: bytes, state: dict, latencies: list[float]) -> None:
    # a distinct channel argument keeps grpc from sharing one connection between the channels
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(f"{spec['host']}:{spec['port']}", options=options) as channel:
        infer = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)  # bytes in and out
        while True:
            now = time.perf_counter()
            if now >= state["stop_at"] or state["sent"] >= state["max_requests"]:
                return
            state["sent"] += 1
            try:
                reply = await infer(request)
            except grpc.aio.AioRpcError as exc:
                if time.perf_counter() >= state["count_from"]:
                    state["errors"] += 1
                    state.setdefault("first_error", f"{exc.code().name} {exc.details()}")
                continue
            end = time.perf_counter()
            if end >= state["count_from"]:
                latencies.append(end - now)
                state["bytes_in"] += len(reply)


async def run(spec: dict) -> dict:
    message = pb.ModelInferRequest(model_name=spec["model"])
    message.inputs.add(name=spec["input"], datatype="FP32", shape=spec["shape"])
    message.raw_input_contents.append(base64.b64decode(spec["raw_b64"]))
    request = message.SerializeToString()
    return await drive(spec, request, _connection)


def main() -> None:
    spec = json.load(sys.stdin)
    print(json.dumps(asyncio.run(run(spec))))


if __name__ == "__main__":
    main()
