"""A model's answer to one input, copied into that input's prediction record.

Sync predictions, BatchPredict, the Open Inference Protocol and job items all record what
inference answered; one function copies it, so a new output kind reaches every record at once.
"""

from __future__ import annotations

from ferry.inference.v1 import inference_service_pb2
from ferry.predictions.v1 import prediction_pb2


def copy_answer(prediction: prediction_pb2.Prediction, result: inference_service_pb2.PredictResult) -> None:
    """Copies the model's answer in ``result`` into ``prediction``, its timing too.

    Whatever the model answered travels: classes (zero-shot ones too), an embedding, a JSON object,
    tensors, ensemble members' timings. The caller sets ``timing.total_ms`` if it measures one.
    """
    prediction.classes.extend(result.classes)
    prediction.embedding.extend(result.embedding)
    if result.HasField("output"):
        prediction.output.CopyFrom(result.output)
    prediction.tensors.extend(result.tensors)
    prediction.members.extend(result.members)
    prediction.timing.CopyFrom(result.timing)
    prediction.model_version = result.model_version
