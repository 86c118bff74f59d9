"""Generates Python stubs and Envoy's descriptor set from protos/.

Run ``python -m tools.protogen`` after changing a proto. The output is committed and
``tests/test_contracts.py`` regenerates into a temporary folder to prove it is fresh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
GEN_PYTHON = ROOT / "gen" / "python"
DESCRIPTOR_SET = ROOT / "deploy" / "envoy" / "ferry.pb"

#: The services Envoy transcodes REST for: the public API, all served by gateway.
PUBLIC_SERVICES = (
    "ferry.models.v1.ModelService",
    "ferry.predictions.v1.PredictionService",
    "ferry.jobs.v1.JobService",
    "ferry.admin.v1.KeyService",
    "ferry.openinference.v1.OpenInferenceRestService",
)


def proto_files() -> list[str]:
    """Returns every Ferry proto, relative to protos/, in a stable order."""
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def _run_protoc(args: list[str]) -> None:
    well_known = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{THIRD_PARTY}", f"-I{well_known}", *args])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")


def generate_python(out: Path) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    _run_protoc([f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *proto_files()])
    # Regular packages (not namespace packages) so setuptools and mypy find them plainly.
    for folder in [out / "ferry", *(p for p in (out / "ferry").rglob("*") if p.is_dir())]:
        if folder.name != "__pycache__":
            (folder / "__init__.py").touch()


#: Not imported by any Ferry proto, but Envoy needs it to print an error's ErrorInfo detail as
#: JSON; without it Envoy answers REST errors with an empty body.
ERROR_DETAILS_PROTO = "google/rpc/error_details.proto"


def generate_descriptor_set(out_file: Path) -> None:
    """Writes the binary FileDescriptorSet Envoy's gRPC-JSON transcoder reads."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _run_protoc(
        [f"--descriptor_set_out={out_file}", "--include_imports", *proto_files(), ERROR_DETAILS_PROTO]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python-out", type=Path, default=GEN_PYTHON)
    parser.add_argument("--descriptor-out", type=Path, default=DESCRIPTOR_SET)
    args = parser.parse_args(argv)
    generate_python(args.python_out)
    generate_descriptor_set(args.descriptor_out)
    print(f"generated {len(proto_files())} protos into {args.python_out} and {args.descriptor_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
