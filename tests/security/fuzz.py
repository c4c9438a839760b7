"""Seeded generators of hostile REST bodies and gRPC messages for the bounded fuzz:
random JSON shapes and depths, wrong dtypes, shapes that lie about their content, huge
declared sizes, invalid UTF-8 and random bytes."""

from __future__ import annotations

import base64
import json
import random

from agent.serving.protos import (
    classification_pb2,
    example_pb2,
    predict_pb2,
    regression_pb2,
    tensor_pb2,
    types_pb2,
)

REST_PATHS = [
    "/v1/models/half_plus_two:predict",
    "/v1/models/half_plus_two:classify",
    "/v1/models/half_plus_two:regress",
    "/v1/models/half_plus_two/versions/1:predict",
    "/v1/models/half_plus_two/labels/stable:predict",
    "/v1/models/nope:predict",
]
_HUGE = [0, 1, 3, 2**24, 2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, 25_000_000, 10**12]


def _scalar(rng: random.Random):
    return rng.choice([
        rng.uniform(-1e6, 1e6), rng.randint(-2**70, 2**70), True, False, None, "",
        "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 12))),
        {"b64": base64.b64encode(rng.randbytes(rng.randint(0, 20))).decode()},
        {"b64": "!!not base64!!"}, float("1e308"), 0, 1.5,
    ])


def _value(rng: random.Random, depth: int):
    if depth <= 0 or rng.random() < 0.3:
        return _scalar(rng)
    kind = rng.random()
    if kind < 0.6:
        width = rng.choice([0, 1, 1, 2, 3, 5])
        return [_value(rng, depth - 1) for _ in range(width)]
    if kind < 0.8:  # a dense numeric tensor
        shape = [rng.randint(0, 4) for _ in range(rng.randint(1, 4))]
        inner: object = rng.uniform(-3, 3)
        for d in reversed(shape):
            inner = [inner] * d
        return inner
    return {rng.choice(["x", "y", "b64", "a", "inputs", ""]): _value(rng, depth - 1) for _ in range(rng.randint(0, 3))}


def rest_body(rng: random.Random) -> bytes:
    """One hostile REST body."""
    kind = rng.randrange(10)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 300))
    if kind == 1:
        n = rng.choice([10, 500, 1024, 1025, 5000, 100_000])
        return b'{"instances": ' + rng.choice([b"[", b'{"a":', b'[{"x":']) * n
    if kind == 2:  # valid JSON with invalid UTF-8 inside a string
        return b'{"instances": ["' + rng.randbytes(rng.randint(1, 40)) + b'"]}'
    if kind == 3:  # deep but within the parser's limit
        depth = rng.randint(30, 1000)
        leaf = rng.choice([b"1", b'"s"', b'{"b64": "AA=="}', b"null"])
        return b'{"instances": ' + b"[" * depth + leaf + b"]" * depth + b"}"
    key = rng.choice(["instances", "inputs", "examples", "context", "signature_name", "zzz"])
    doc = {key: _value(rng, rng.randint(0, 8))}
    if rng.random() < 0.3:
        doc[rng.choice(["signature_name", "inputs", "context"])] = _value(rng, 2)
    text = json.dumps(doc, allow_nan=rng.random() < 0.5).encode()
    if rng.random() < 0.2 and text:  # truncate or corrupt
        cut = rng.randrange(len(text))
        text = text[:cut] + (rng.randbytes(3) if rng.random() < 0.5 else b"")
    return text


def _tensor(rng: random.Random) -> tensor_pb2.TensorProto:
    t = tensor_pb2.TensorProto()
    t.dtype = rng.choice(list(types_pb2.DataType.values())[:25] + [9999, -1, 1, 1, 1])
    if rng.random() < 0.05:
        t.tensor_shape.unknown_rank = True
    for _ in range(rng.choice([0, 1, 1, 2, 3, 8, 40])):
        t.tensor_shape.dim.add(size=rng.choice(_HUGE + [-1, -(2**62), rng.randint(0, 5)]))
    filler = rng.randrange(8)
    if filler == 0:
        t.tensor_content = rng.randbytes(rng.choice([0, 1, 3, 4, 12, 100]))
    elif filler == 1:
        t.float_val.extend(rng.uniform(-1e3, 1e3) for _ in range(rng.randint(0, 10)))
    elif filler == 2:
        t.int_val.extend(rng.randint(-2**31, 2**31 - 1) for _ in range(rng.randint(0, 10)))
    elif filler == 3:
        t.string_val.extend(rng.randbytes(rng.randint(0, 10)) for _ in range(rng.randint(0, 5)))
    elif filler == 4:
        t.half_val.extend(rng.randint(-2**31, 2**31 - 1) for _ in range(rng.randint(1, 5)))
    elif filler == 5:
        t.scomplex_val.extend(rng.uniform(-1, 1) for _ in range(rng.randint(1, 5)))
    elif filler == 6:
        t.int64_val.extend(rng.randint(-2**63, 2**63 - 1) for _ in range(rng.randint(1, 5)))
    return t


def _example(rng: random.Random) -> example_pb2.Example:
    e = example_pb2.Example()
    for _ in range(rng.randint(0, 3)):
        f = e.features.feature[rng.choice(["x", "y", ""])]
        kind = rng.randrange(3)
        if kind == 0:
            f.float_list.value.extend(rng.uniform(-5, 5) for _ in range(rng.randint(0, 4)))
        elif kind == 1:
            f.int64_list.value.extend(rng.randint(-2**63, 2**63 - 1) for _ in range(rng.randint(0, 4)))
        else:
            f.bytes_list.value.extend(rng.randbytes(rng.randint(0, 6)) for _ in range(rng.randint(0, 4)))
    return e


def grpc_message(rng: random.Random) -> tuple[str, bytes]:
    """(method, serialized request) of one hostile PredictionService call."""
    kind = rng.randrange(10)
    if kind == 0:
        return rng.choice(["Predict", "Classify", "Regress"]), rng.randbytes(rng.randint(0, 200))
    if kind in (1, 2):
        request = classification_pb2.ClassificationRequest() if kind == 1 else regression_pb2.RegressionRequest()
        request.model_spec.name = rng.choice(["half_plus_two", "nope", ""])
        request.model_spec.signature_name = rng.choice(["", "classify_x_to_y", "regress_x_to_y", "serving_default"])
        if rng.random() < 0.5:
            request.input.example_list.examples.extend(_example(rng) for _ in range(rng.randint(0, 4)))
        else:
            lwc = request.input.example_list_with_context
            lwc.examples.extend(_example(rng) for _ in range(rng.randint(0, 3)))
            lwc.context.CopyFrom(_example(rng))
        return ("Classify" if kind == 1 else "Regress"), request.SerializeToString()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = rng.choice(["half_plus_two", "half_plus_two", "nope"])
    if rng.random() < 0.2:
        request.model_spec.version.value = rng.choice([0, 1, 2**63 - 1, -5])
    for _ in range(rng.choice([0, 1, 1, 1, 2, 70])):
        request.inputs[rng.choice(["x", "x", "y", "extra", ""])].CopyFrom(_tensor(rng))
    if rng.random() < 0.2:
        request.output_filter.append(rng.choice(["y", "z", ""]))
    data = request.SerializeToString()
    if rng.random() < 0.2 and data:  # flip bytes of a valid message
        data = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
    return "Predict", data
