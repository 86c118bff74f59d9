"""The gateway hands every job to the jobs service's job queue: it publishes no work item, marks no
cancellation and re-queues no dead letter itself (structural checks on its source).

What the gateway still does with NATS is its own: prediction records, uploads, result files, and
reading dead letters for ListJobItems. Only services/jobs/submission.py writes the work stream.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "services" / "gateway"
#: Names that write the job queue: work subjects, msg id generations, the cancelled-jobs bucket.
QUEUE_WRITES = {
    "job_items_subject",
    "priority_token",
    "with_generation",
    "publish_async",
    "open_cancelled_bucket",
    "CANCELLED_JOBS_BUCKET",
    "WORK_STREAM",
    "notebook_subject",
    "NOTEBOOK_SUBJECT",
    "publish_job_items",
    "mark_cancelled",
}


def imports_of(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def names_of(tree: ast.Module) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    return names


def gateway_modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(GATEWAY.rglob("*.py"))
    }


def test_no_gateway_module_writes_the_job_queue() -> None:
    modules = gateway_modules()
    assert "services/gateway/job_manager.py" in modules
    offenders = {name: sorted(names_of(tree) & QUEUE_WRITES) for name, tree in modules.items()}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_job_path_of_the_gateway_imports_no_nats_publishing() -> None:
    modules = gateway_modules()
    for name in ("services/gateway/job_manager.py", "services/gateway/notebook_jobs.py"):
        imported = imports_of(modules[name])
        # It still holds the NATS connection's limits and JetStream for uploads and result files
        # (nats.aio.client, nats.js); publishing, acks, KV and the queue's subjects are gone.
        publishing = {
            i
            for i in imported
            if i.startswith(
                (
                    "services.common.publisher",
                    "services.common.messaging",
                    "services.common.downstream.publishing",
                    "nats.js.api",
                    "nats.js.kv",
                    "nats.js.errors",
                    "nats.errors",
                )
            )
        }
        assert publishing == set(), f"{name} imports {publishing}"
        assert "ferry.jobqueue.v1" in imported or name.endswith("notebook_jobs.py")


def test_the_gateway_imports_nothing_of_the_jobs_service() -> None:
    for name, tree in gateway_modules().items():
        assert not {i for i in imports_of(tree) if i.startswith("services.jobs")}, name


def test_only_the_job_queue_publishes_job_items() -> None:
    writers = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "services").rglob("*.py")
        if "publish_job_items" in names_of(ast.parse(path.read_text(encoding="utf-8")))
        or "job_items_subject" in names_of(ast.parse(path.read_text(encoding="utf-8")))
    )
    # messaging defines the subject; the queue publishes on it (a manifest's items through the same
    # publish_job_items, from the expander); jobs' settings name its consumers.
    assert writers == ["services/jobs/expander.py", "services/jobs/submission.py"], writers


def test_a_large_job_goes_to_the_queue_in_parts_under_the_message_budget() -> None:
    from ferry.events.v1 import events_pb2
    from ferry.types.v1 import types_pb2
    from services.gateway.job_manager import _parts

    image = types_pb2.Input(image=types_pb2.Image(content=b"x" * 1000))
    ref = events_pb2.ObjectRef(bucket="ferry_uploads", name="t/u/a.jpg", size_bytes=5)
    inputs = [image, ref, image, image, ref, image]
    parts = _parts(inputs, 2100)

    assert len(parts) > 1
    firsts = [first for first, _ in parts]  # consecutive runs, in order, covering every input
    assert firsts == [sum(len(items) for _, items in parts[:i]) for i in range(len(parts))]
    sent = [item for _, items in parts for item in items]
    kinds = [i.WhichOneof("kind") for i in sent]
    assert kinds == ["input", "input_ref", "input", "input", "input_ref", "input"]
    assert all(sum(i.ByteSize() + 8 for i in items) <= 2100 for _, items in parts)
    assert _parts([image], 10) == [(0, [parts[0][1][0]])]  # one item over the budget still goes alone
    assert _parts([], 2100) == [(0, [])]  # the queue refuses an empty job
