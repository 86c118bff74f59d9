"""Ensembles: one input fanned out concurrently to member classifiers, their probabilities averaged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from ferry.models.v1 import model_pb2
from services.inference.calls import Answered, Request, Timing
from services.inference.models.config import ModelConfig
from services.inference.models.contract import IMAGE, Answer, InvalidInput, Options
from services.inference.models.image import top_classes
from services.inference.served import READY, Place, Served, ServedModel, Unserved


class ServedEnsemble(Served):
    """One input fanned out concurrently to member classifiers; the mean of their probabilities.

    Each member preprocesses the input its own way, in its own batches; the answer carries each
    member's timing. Members are looked up in ``models`` (each one's default version) at every
    call, so an ensemble follows its members' default versions, and a member unloaded meanwhile
    makes its calls answer that member's MODEL_NOT_LOADED rather than the ensemble being unloaded.
    The members' labels are checked whenever the set of member entries changes (a ValueError, the
    call's INTERNAL, when they are not classifiers over the same labels).
    """

    def __init__(self, config: ModelConfig, models: Mapping[str, Served]) -> None:
        super().__init__(config)
        self._models = models
        self.labels: tuple[str, ...] = ()
        self._checked: list[int] = []
        if all(isinstance(models.get(m), ServedModel) for m in config.members):
            self._current()  # wrong members fail the load, when they are there to check

    @property
    def members(self) -> list[ServedModel]:
        """The members now serving, in the configured order.

        Raises:
            FerryError: a member is not serving (its own MODEL_NOT_LOADED, MODEL_FAILED, ...).
        """
        found = [self._models[m] for m in self.config.members]
        for member in found:
            if isinstance(member, Unserved):
                raise member.unavailable()
        return [m for m in found if isinstance(m, ServedModel)]

    def _check_labels(self, members: list[ServedModel]) -> tuple[str, ...]:
        labels = [tuple(m.model.labels) for m in members]
        mismatched = any(other != labels[0] for other in labels[1:])
        if len(labels) != len(self.config.members) or not labels[0] or mismatched:
            raise ValueError(
                f"ensemble {self.name!r}: members {', '.join(self.config.members)} must be classifiers "
                "over the same labels"
            )
        return labels[0]

    def _current(self) -> list[ServedModel]:
        """The members for one call; labels checked again when a member was swapped (a new version)."""
        members = self.members
        if [id(m) for m in members] != self._checked:
            self.labels = self._check_labels(members)
            self._checked = [id(m) for m in members]
        return members

    def describe(self) -> model_pb2.Model:
        """Metadata: the members' common task, labels and input; its members."""
        try:
            members = self.members
        except Exception as err:  # a member not serving: the repository reports the ensemble UNAVAILABLE
            return Unserved(self.config, model_pb2.MODEL_STATE_UNAVAILABLE, str(err)).describe()
        self._current()
        first = members[0].describe()
        return model_pb2.Model(
            name=f"models/{self.name}",
            display_name=f"Ensemble of {', '.join(m.name for m in members)}",
            description=(
                f"Mean of the class probabilities of {', '.join(m.name for m in members)}, "
                "each run concurrently on the same input; per-member timing in the answer."
            ),
            task=first.task,
            labels_count=len(self.labels),
            ready=True,
            max_batch_size=min(m.batcher.max_batch_size for m in members),
            state=READY,
            version=self.config.version,
            device=", ".join(dict.fromkeys(str(m.runner.device) for m in members)),
            inputs=[t for t in first.inputs if t.datatype == "BYTES"],
            outputs=[t for t in first.outputs],
            input_kinds=[IMAGE],  # members may take tensors too; the ensemble passes images only
            max_queue=min(m.batcher.max_queue for m in members),
            instances=1,
            batch_size_source="members",
            members=[f"models/{m.name}" for m in members],
        )

    async def answer(self, request: Request, place: Place | None = None) -> Answered:
        """Runs every member on the input at once and averages their class probabilities."""
        if place is not None:
            place.release()  # the ensemble holds no queue of its own: members admit
        item = request.item
        if item.kind != IMAGE:
            raise InvalidInput(f"it is a {item.kind} input and ensemble {self.name!r} takes an image")
        members = self._current()
        started = time.perf_counter()
        # Members answer their top class only: the ensemble ranks their mean distribution itself.
        each = replace(request, options=Options(top_k=1))
        answered = await asyncio.gather(*(member.answer(each) for member in members))
        distributions = [a.answer.probabilities for a in answered]
        mean = np.mean(np.stack([d for d in distributions if d is not None]), axis=0)
        timings = [a.timing for a in answered]
        return Answered(
            Answer(classes=top_classes(mean, self.labels, request.options.top_k), probabilities=mean),
            Timing(
                decode_ms=max(t.decode_ms for t in timings),
                queue_ms=max(t.queue_ms for t in timings),
                inference_ms=max(t.inference_ms for t in timings),
                batch_size=max(t.batch_size for t in timings),
                total_ms=(time.perf_counter() - started) * 1000,
            ),
            tuple((m.name, t) for m, t in zip(members, timings, strict=True)),
        )
