"""Ensembles: one input fanned out concurrently to member classifiers, their probabilities averaged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from ferry.models.v1 import model_pb2
from ferry.types.v1 import types_pb2
from services.inference.models.config import ModelConfig
from services.inference.models.contract import IMAGE, Answer, InvalidInput, ModelInput, Options
from services.inference.models.image import top_classes
from services.inference.scheduling import Priority
from services.inference.served import READY, Admission, Served, ServedModel, Timed


class ServedEnsemble(Served):
    """One input fanned out concurrently to member classifiers; the mean of their probabilities.

    Each member preprocesses the input its own way, in its own batches; the answer carries each
    member's timing.
    """

    def __init__(self, config: ModelConfig, members: Sequence[ServedModel]) -> None:
        super().__init__(config)
        self.members = list(members)
        labels = [tuple(m.model.labels) for m in self.members]
        if not labels[0] or any(other != labels[0] for other in labels[1:]):
            raise ValueError(
                f"ensemble {self.name!r}: members {', '.join(config.members)} must be classifiers "
                "over the same labels"
            )
        self.labels = labels[0]

    def describe(self) -> model_pb2.Model:
        """Metadata: the members' common task, labels and input; its members."""
        first = self.members[0].describe()
        return model_pb2.Model(
            name=f"models/{self.name}",
            display_name=f"Ensemble of {', '.join(m.name for m in self.members)}",
            description=(
                f"Mean of the class probabilities of {', '.join(m.name for m in self.members)}, "
                "each run concurrently on the same input; per-member timing in the answer."
            ),
            task=first.task,
            labels_count=len(self.labels),
            ready=True,
            max_batch_size=min(m.batcher.max_batch_size for m in self.members),
            state=READY,
            version=self.config.version,
            device=", ".join(dict.fromkeys(str(m.runner.device) for m in self.members)),
            inputs=[t for t in first.inputs if t.datatype == "BYTES"],
            outputs=[t for t in first.outputs],
            max_queue=min(m.batcher.max_queue for m in self.members),
            instances=1,
            batch_size_source="members",
            members=[f"models/{m.name}" for m in self.members],
        )

    async def answer(
        self,
        index: int,
        item: ModelInput,
        options: Options,
        priority: Priority,
        deadline: float | None,
        admission: Admission | None = None,
    ) -> Timed:
        """Runs every member on ``item`` at once and averages their class probabilities."""
        if admission is not None:
            admission.release(index)  # the ensemble holds no queue of its own: members admit
        if item.kind != IMAGE:
            raise InvalidInput(f"it is a {item.kind} input and ensemble {self.name!r} takes an image")
        started = time.perf_counter()
        timed = await asyncio.gather(
            *(member.answer(0, item, Options(top_k=1), priority, deadline) for member in self.members)
        )
        distributions = [t.answer.probabilities for t in timed]
        mean = np.mean(np.stack([d for d in distributions if d is not None]), axis=0)
        timings = [t.timing for t in timed]
        return Timed(
            Answer(classes=top_classes(mean, self.labels, options.top_k), probabilities=mean),
            types_pb2.Timing(
                decode_ms=max(t.decode_ms for t in timings),
                queue_ms=max(t.queue_ms for t in timings),
                inference_ms=max(t.inference_ms for t in timings),
                batch_size=max(t.batch_size for t in timings),
                total_ms=(time.perf_counter() - started) * 1000,
            ),
            tuple(
                types_pb2.MemberTiming(model=m.name, timing=t)
                for m, t in zip(self.members, timings, strict=True)
            ),
        )
