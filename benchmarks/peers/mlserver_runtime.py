"""An MLServer custom runtime serving efficientnet-lite0 over the Open Inference Protocol.

Input ``IMAGE`` (BYTES, shape [n]: encoded images); outputs ``SCORES`` (FP32) and
``CLASS_INDICES`` (INT64), shape [n, 5]. Written the way MLServer's docs write a runtime; it
reads ``payload.inputs[0].data.root`` rather than using ``@decode_args``, which breaks adaptive
batching (see FACTS). Runs only inside ``.venv-mlserver``.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from benchmarks.peers.model import TOP_K, PeerModel


class EfficientNetRuntime(MLModel):
    """efficientnet-lite0 on encoded images, batched by MLServer's adaptive batching."""

    async def load(self) -> bool:
        self._peer = PeerModel()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        contents = [c if isinstance(c, bytes) else str(c).encode() for c in payload.inputs[0].data.root]
        scores, indices = self._peer.top_k(contents)
        shape = [len(contents), TOP_K]
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="SCORES", datatype="FP32", shape=shape, data=scores.ravel().tolist()),
                ResponseOutput(
                    name="CLASS_INDICES", datatype="INT64", shape=shape, data=indices.ravel().tolist()
                ),
            ],
        )
