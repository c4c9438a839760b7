"""Image inputs: a model input shaped like an image batch ([N, H, W, C] or [N, C, H, W]
with 1, 3 or 4 channels) accepts encoded JPEG or PNG bytes, decoded and resized here to
the input's height and width. Pixel values stay 0..255; normalization is the model's."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from agent.serving import limits
from agent.serving.errors import invalid_argument
from agent.serving.servable import TensorSpec

FORMATS = ("JPEG", "PNG")
_CHANNELS = (1, 3, 4)
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def image_layout(spec: TensorSpec) -> str | None:
    """'NHWC' or 'NCHW' when the input is an image batch, else None."""
    if spec.shape is None or len(spec.shape) != 4 or spec.dtype.kind not in "uif":
        return None
    if spec.shape[3] in _CHANNELS:
        return "NHWC"
    if spec.shape[1] in _CHANNELS:
        return "NCHW"
    return None


def decode_images(blobs: np.ndarray, spec: TensorSpec, alias: str) -> np.ndarray:
    """Decode a batch of encoded images (bytes) into the input's layout, size and dtype."""
    layout = image_layout(spec)
    assert layout is not None and spec.shape is not None
    if blobs.ndim == 0:
        blobs = blobs.reshape(1)
    if blobs.ndim != 1:
        raise invalid_argument(f"input '{alias}': expected a list of encoded images, got shape {list(blobs.shape)}")
    if layout == "NHWC":
        height, width, channels = spec.shape[1], spec.shape[2], spec.shape[3]
    else:
        channels, height, width = spec.shape[1], spec.shape[2], spec.shape[3]
    pictures = []
    total = 0  # elements of the decoded batch so far, bounded like any input tensor
    for i, blob in enumerate(blobs):
        if isinstance(blob, str):
            blob = blob.encode()
        try:
            with Image.open(io.BytesIO(blob), formats=FORMATS) as img:
                # The header's size, before a single pixel is decoded.
                limits.check_image(img.width, img.height, f"input '{alias}': element {i}: ")
                total += (height or img.height) * (width or img.width) * channels
                if total > limits.MAX_TENSOR_ELEMENTS:
                    raise invalid_argument(
                        f"input '{alias}': decoded images exceed the limit of {limits.MAX_TENSOR_ELEMENTS} values"
                    )
                img = img.convert(_MODES[channels])
                if height and width and img.size != (width, height):
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise invalid_argument(f"input '{alias}': element {i} is not a decodable JPEG or PNG image ({e})") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pictures.append(pixels)
    if len({p.shape for p in pictures}) > 1:
        raise invalid_argument(f"input '{alias}': images of different sizes in one batch")
    batch = np.stack(pictures)
    if layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=spec.dtype)
