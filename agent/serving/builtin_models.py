"""The built-in models, made by project code (nothing is downloaded), written in TF
Serving's layout <models_root>/<name>/<version>/model.onnx.

- half_plus_two: y = 0.5 * x + 2 on float32 of any shape, with TF Serving's test-model
  signatures: serving_default (x -> y), classify_x_to_y and regress_x_to_y.
- resnet: the ResNet-50 graph shipped in the onnx package (constant weights), batch
  made dynamic, taking uint8 RGB images [batch, 224, 224, 3] as `image_bytes` (the input
  name TF Serving's ResNet example clients send; JPEG/PNG are decoded by the server) and
  returning `probabilities` [batch, 1000] and `classes` [batch].
- digits: a classifier of 8x8 handwritten digits, trained at install time on the digits
  data set that scikit-learn ships (see `digits_model`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import agent.log
from agent.serving.servable import CLASSIFY, PREDICT, REGRESS, SIGNATURES_KEY

log = agent.log.get(__name__)

BUILTIN_MODELS = ("half_plus_two", "resnet", "digits")
BUILTIN_VERSION = 1
RESNET_SOURCE = Path("backend/test/data/light/light_resnet50.onnx")
IMAGE_SIZE = 224
# ImageNet channel statistics on 0..255 pixel values (RGB).
_MEAN = [123.675, 116.28, 103.53]
_STD = [58.395, 57.12, 57.375]


def half_plus_two_model():
    """The half_plus_two ONNX model (y = 0.5 * x + 2)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "half"], ["half_x"]), helper.make_node("Add", ["half_x", "two"], ["y"])],
        "half_plus_two",
        [x],
        [y],
        initializer=[
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inference-agent")
    model.ir_version = 8
    signatures = {
        "serving_default": {"method_name": PREDICT, "inputs": {"x": "x"}, "outputs": {"y": "y"}},
        "classify_x_to_y": {"method_name": CLASSIFY, "features": {"x": "x"}, "outputs": {"scores": "y"}},
        "regress_x_to_y": {"method_name": REGRESS, "features": {"x": "x"}, "outputs": {"outputs": "y"}},
    }
    helper.set_model_props(model, {SIGNATURES_KEY: json.dumps(signatures)})
    # No checker here: it insists on shapes, and x is deliberately of any rank.
    return model


def resnet_model():
    """The resnet ONNX model built from the onnx package's ResNet-50 graph."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    source = Path(onnx.__file__).parent / RESNET_SOURCE
    model = onnx.load(str(source))
    graph = model.graph
    data_input = graph.input[0].name
    probabilities = graph.output[0].name

    # The final Reshape's shape was fixed at batch 1; -1 lets the batch follow the input.
    for init in graph.initializer:
        if init.data_type == TensorProto.INT64 and list(numpy_helper.to_array(init)) == [1, 2048]:
            init.CopyFrom(numpy_helper.from_array(np.array([-1, 2048], dtype=np.int64), init.name))
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Initializers need not be graph inputs (IR >= 4): keep only the image input.
    del graph.input[:]
    del graph.output[:]

    preprocess = [
        helper.make_node("Cast", ["image_bytes"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels"], ["pixels_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["pixels_nchw", "imagenet_mean"], ["centered"]),
        helper.make_node("Div", ["centered", "imagenet_std"], [data_input]),
    ]
    postprocess = [
        helper.make_node("Identity", [probabilities], ["probabilities"]),
        helper.make_node("ArgMax", ["probabilities"], ["classes"], axis=1, keepdims=0),
    ]
    nodes = preprocess + list(graph.node) + postprocess
    del graph.node[:]
    graph.node.extend(nodes)
    stats_shape = [1, 3, 1, 1]
    graph.initializer.extend(
        [
            helper.make_tensor("imagenet_mean", TensorProto.FLOAT, stats_shape, _MEAN),
            helper.make_tensor("imagenet_std", TensorProto.FLOAT, stats_shape, _STD),
        ]
    )
    graph.input.append(
        helper.make_tensor_value_info("image_bytes", TensorProto.UINT8, ["batch", IMAGE_SIZE, IMAGE_SIZE, 3])
    )
    graph.output.extend(
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1000]),
            helper.make_tensor_value_info("classes", TensorProto.INT64, ["batch"]),
        ]
    )
    graph.name = "resnet"
    model.ir_version = 4
    model.producer_name = "inference-agent"
    onnx.checker.check_model(model)
    return model


DIGITS_PIXELS = 64  # 8 x 8 grey levels, 0 (white) to 16 (black)
DIGITS_CLASSES = 10
# One sample in DIGITS_HELD_BACK_EVERY is held back from training, to measure accuracy.
DIGITS_HELD_BACK_EVERY = 4


def digits_data():
    """scikit-learn's digits data set split into (train_x, train_y, held_x, held_y): every
    DIGITS_HELD_BACK_EVERY-th sample is held back, so the split is the same everywhere."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    held = np.arange(len(y)) % DIGITS_HELD_BACK_EVERY == DIGITS_HELD_BACK_EVERY - 1
    return x[~held].astype(np.float32), y[~held], x[held].astype(np.float32), y[held]


def digits_model():
    """The digits ONNX model: softmax regression trained now on the digits data set.

    Input `images` float32 [batch, 64] (an 8x8 picture row by row, grey levels 0..16);
    outputs `probabilities` [batch, 10] and `classes` int64 [batch]. Signatures:
    serving_default (predict) and `classify` (tf.Examples with a 64-value `pixels`
    feature, answering the labels "0".."9" with their scores)."""
    import numpy as np
    from onnx import TensorProto, checker, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    train_x, train_y, _, _ = digits_data()
    scale = 1.0 / 16.0
    classifier = LogisticRegression(max_iter=2000, C=1.0)
    # One BLAS thread: a problem this small (1,348 x 64) runs ~30x slower when its
    # threads compete with the node's other processes for the cores.
    with threadpool_limits(limits=1):
        classifier.fit(train_x * scale, train_y)
    weights = classifier.coef_.T.astype(np.float32)  # [64, 10]
    bias = classifier.intercept_.astype(np.float32)  # [10]

    nodes = [
        helper.make_node("Mul", ["images", "scale"], ["scaled"]),
        helper.make_node("Gemm", ["scaled", "weights", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["classes"], axis=1, keepdims=0),
        # The classify signature's labels, 0..9 for every example of the batch (numbers,
        # not strings: every runtime handles int64 tensors; TF Serving's classify
        # answers them as the labels "0".."9").
        helper.make_node("Shape", ["images"], ["images_shape"]),
        helper.make_node("Gather", ["images_shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "ten"], ["labels_shape"], axis=0),
        helper.make_node("Expand", ["labels", "labels_shape"], ["class_labels"]),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", DIGITS_PIXELS])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", DIGITS_CLASSES]),
            helper.make_tensor_value_info("classes", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["batch", DIGITS_CLASSES]),
        ],
        initializer=[
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("ten", TensorProto.INT64, [1], [DIGITS_CLASSES]),
            helper.make_tensor("labels", TensorProto.INT64, [1, DIGITS_CLASSES], list(range(DIGITS_CLASSES))),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inference-agent")
    model.ir_version = 8
    signatures = {
        "serving_default": {
            "method_name": PREDICT,
            "inputs": {"images": "images"},
            "outputs": {"probabilities": "probabilities", "classes": "classes"},
        },
        "classify": {
            "method_name": CLASSIFY,
            "features": {"pixels": "images"},
            "outputs": {"scores": "probabilities", "classes": "class_labels"},
        },
    }
    helper.set_model_props(model, {SIGNATURES_KEY: json.dumps(signatures)})
    checker.check_model(model, full_check=True)
    return model


_BUILDERS = {"half_plus_two": half_plus_two_model, "resnet": resnet_model, "digits": digits_model}


def _write_version(model_dir: Path, name: str) -> Path:
    """Build one model into a temp dir beside its version dir, fsync it, rename it into place."""
    import onnx

    target = model_dir / str(BUILTIN_VERSION)
    model_dir.mkdir(parents=True, exist_ok=True)
    # A non-numeric name: a model server scanning model_dir ignores it.
    staging = Path(tempfile.mkdtemp(prefix=f".install-{BUILTIN_VERSION}-", dir=model_dir))
    try:
        model_file = staging / "model.onnx"
        onnx.save(_BUILDERS[name](), str(model_file))
        with open(model_file, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(staging, 0o755)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def install_builtin(models_root: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Write the built-in models under models_root in TF Serving layout; idempotent.

    A model whose version directory already exists is left alone. Returns the version
    directory of every requested model, written now or already there."""
    wanted = list(BUILTIN_MODELS if names is None else names)
    unknown = [n for n in wanted if n not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown built-in model(s): {', '.join(unknown)}; built-in: {', '.join(BUILTIN_MODELS)}")
    paths = []
    for name in wanted:
        model_dir = Path(models_root) / name
        target = model_dir / str(BUILTIN_VERSION)
        if target.exists():
            log.info("builtin model present", model=name, path=str(target))
        else:
            try:
                target = _write_version(model_dir, name)
            except FileExistsError:
                pass  # another installer renamed the same version into place first
            except OSError as e:
                if not target.is_dir():
                    raise OSError(e.errno, f"cannot install built-in model {name} into {target}: {e.strerror}") from e
            log.info("builtin model installed", model=name, path=str(target))
        paths.append(target)
    return paths
