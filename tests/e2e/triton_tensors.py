"""A Triton user's FP32 tensors and texts, sent with ``tritonclient.grpc`` to Ferry's public port.

Run with ``.venv-peer``'s Python (see ``triton_client.py``). Prints one JSON object.
Usage:
  ``python triton_tensors.py HOST:PORT API_KEY tensor MODEL FILE.npy``  (an FP32 [n, 3, 224, 224] batch)
  ``python triton_tensors.py HOST:PORT API_KEY text MODEL SENTENCE [LABEL ...]``
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton


def main() -> None:
    target, api_key, mode, model, *rest = sys.argv[1:]
    headers = {"authorization": f"Bearer {api_key}"}
    client = triton.InferenceServerClient(url=target)
    if mode == "tensor":
        pixels = np.load(rest[0]).astype(np.float32)
        tensor = triton.InferInput("TENSOR", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)  # travels as raw_input_contents
        result = client.infer(
            model,
            [tensor],
            headers=headers,
            priority=1,
            timeout=60_000_000,  # Triton: 1 is the highest
        )
        answer = {
            "class_indices": result.as_numpy("CLASS_INDICES").tolist(),
            "scores": result.as_numpy("SCORES").tolist(),
            "raw": bool(result.get_response().raw_output_contents),
        }
    else:
        sentence, *labels = rest
        tensor = triton.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([sentence.encode()], dtype=np.object_))
        parameters = {"candidate_labels": json.dumps(labels)} if labels else {}
        result = client.infer(model, [tensor], headers=headers, parameters=parameters)
        outputs = [o.name for o in result.get_response().outputs]
        answer = {
            "outputs": outputs,
            "embedding": result.as_numpy("EMBEDDING").tolist() if "EMBEDDING" in outputs else [],
            "labels": [x.decode() for x in result.as_numpy("LABELS")[0]] if "LABELS" in outputs else [],
        }
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
