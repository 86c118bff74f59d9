"""Every size, count and depth limit of Ferry, defined once.

Services import these; settings that let an operator lower a limit are bounded by them (a value
above the bound is refused at start with a message naming the variable), so no two services can
disagree about what a request may hold (a ``top_k`` the gateway lets through is one inference
accepts). docs/reliability.md ("Abuse") lists each with what a caller sees when it is hit.

Request bodies: Envoy refuses a body over its route's limit with 413 (gRPC: INVALID_ARGUMENT)
after buffering at most that many bytes, before authentication and before any service sees it.
The services' gRPC message limit is the largest route limit, so a request that passed the edge
never meets gRPC's own "larger than max" refusal (RESOURCE_EXHAUSTED, which clients read as
"retry").
"""

from __future__ import annotations

MIB = 1024 * 1024

# Bodies at the edge.

PREDICT_REQUEST_BYTES = 16 * MIB
"""One image: the gateway's 10 MiB image limit, as base64 in JSON (4/3 larger), plus the fields."""
UPLOAD_REQUEST_BYTES = 32 * MIB
"""A batch job's inputs: several images in one request."""
UPLOAD_FILE_BYTES = 256 * MIB
"""One upload (``POST /v1/uploads``, a manifest or a zip of images): streamed, bounded by gateway."""
DEFAULT_REQUEST_BYTES = 1 * MIB
"""Everything else (reads, lists, cancel, retry, keys): small JSON or protobuf messages."""

MAX_MESSAGE_BYTES = max(PREDICT_REQUEST_BYTES, UPLOAD_REQUEST_BYTES, DEFAULT_REQUEST_BYTES)
"""Every gRPC server's and channel's message limit: the largest body the edge lets through."""

REQUEST_HEADERS_BYTES = 8 * 1024
"""A request's headers, its path among them, at the edge (Envoy's ``max_request_headers_kb``):
past it the answer is 431 ``HEADERS_TOO_LARGE``. gRPC's own default metadata limit is the same
8 KiB, and a call Envoy forwarded over it was refused by a service with RESOURCE_EXHAUSTED, which
the edge maps to 429: "slow down" for a request that can never pass (a 10,000-character job name)."""

REQUEST_HEADERS_COUNT = 100
"""Most headers (gRPC metadata entries) a request may carry at the edge, those the protocol and the
client library add (``:path``, ``content-type``, ``user-agent`` ...) counting: past it the answer is
400 / INVALID_ARGUMENT ``HEADERS_TOO_LARGE`` naming it (devstack/header_limits.py). Envoy's own
default bound is the same 100, but over HTTP/2 its codec resets the stream (a native gRPC caller
saw INTERNAL, "RST_STREAM error code 2") instead of answering."""

EDGE_CODEC_HEADERS_COUNT = 10 * REQUEST_HEADERS_COUNT
"""Envoy's codec bound on a request's header count (``max_headers_count``), above
REQUEST_HEADERS_COUNT so that a filter sees the request and answers with a status; past this one
the stream is reset. Bounded because Envoy holds every entry while it reads them (about a hundred
bytes each, on each of a connection's 100 streams)."""
EDGE_CODEC_HEADERS_BYTES = 8 * REQUEST_HEADERS_BYTES
"""Envoy's codec bound on a request's header bytes (``max_request_headers_kb``), above
REQUEST_HEADERS_BYTES for the same reason."""

SERVICE_METADATA_BYTES = 2 * REQUEST_HEADERS_BYTES
"""Metadata every Ferry gRPC server takes (``grpc.max_metadata_size``): what the edge lets through
plus the headers Envoy and the services add on the way (x-forwarded-for, x-request-id, traceparent)."""

# Errors.

MAX_ERROR_MESSAGE_BYTES = 1024
"""Longest error message, in UTF-8 bytes; a longer one is cut, saying how much was left out. A
message may quote the caller (``unknown outputs [...]`` listed 100,000 names: 1 MB) and travels
three times in a gRPC status's trailers (``grpc-message`` percent-encoded, and twice in
``grpc-status-details-bin``): gRPC clients refuse trailers over 16 KiB (RESOURCE_EXHAUSTED, as if
to retry), and Envoy reset the gateway's answer past its own header limit (UNAVAILABLE, after
three tries)."""
MAX_ERROR_METADATA_CHARS = 256
"""Longest value of an error's ErrorInfo metadata (a field name the caller sent, say)."""

# Nesting.

MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays in a JSON body or value (a payload, notebook parameters,
a manifest line), the outermost object counting 1. Protobuf's parser stops at 100 message levels
and every JSON level inside a ``google.protobuf.Struct`` costs it three (Struct, map entry,
Value), so past about 33 levels a body the edge transcoded could not be read by any service."""

# Inputs.

MAX_IMAGE_BYTES = 12 * MIB
"""Largest encoded image any setting may allow: what fits, as base64, in a Predict body."""
DEFAULT_IMAGE_BYTES = 10 * MIB
"""Largest encoded image accepted by default (FERRY_GATEWAY_MAX_IMAGE_BYTES)."""
MAX_INPUTS_PER_REQUEST = 256
"""Most inputs in one call to inference (a BatchPredict, a ModelInfer tensor, a runner's group)."""
DEFAULT_BATCH_PREDICT_INPUTS = 64
"""Most inputs in one BatchPredict by default (FERRY_GATEWAY_MAX_BATCH_PREDICT_INPUTS)."""
MAX_TOP_K = 100
"""Most classes one answer may list (inference refuses more)."""
DEFAULT_TOP_K = 5
"""Classes listed when a request's top_k is 0 (FERRY_GATEWAY_DEFAULT_TOP_K)."""
MAX_JOB_ITEMS = 10_000
"""Most inputs in one job, whether listed in CreateJob or expanded from an upload."""
MAX_TEXT_CHARS = 10_000
"""Longest text input, in characters."""
MAX_CANDIDATE_LABELS = 64
"""Most candidate labels of one zero-shot text input."""
MAX_LABEL_CHARS = 256
"""Longest label (a candidate label, or a label a query filters on)."""
MAX_REQUEST_ID_CHARS = 128
"""Longest request_id (idempotency key)."""
REQUEST_ID_TTL_S = 24 * 3600
"""How long a request_id remembers the request it came with by default (FERRY_GATEWAY_REQUEST_ID_TTL_S):
reused with other inputs within it, it is refused REQUEST_ID_REUSED."""
MAX_REQUEST_ID_TTL_S = 30 * 24 * 3600
"""Longest a request_id may be remembered: every call with one keeps an entry that long."""
MAX_PARAMETERS_BYTES = 256 * 1024
"""Largest notebook job's parameters, serialized: they travel in one NATS message (1 MiB at most)."""
MAX_TENSOR_ELEMENTS = 16_000_000
"""Most elements of one tensor input."""
MAX_OIP_TENSORS = 64
"""Most inputs, outputs or parameters one Open Inference Protocol request may name (Ferry takes one
input and answers a few outputs). Each costs the gateway's event loop before anything else can be
checked: 200,000 outputs of one REST body took it 12 s (and asked for the same output 200,000
times), 200,000 inputs 6 s, 200,000 parameters 2 s, while every other call waited."""
MAX_OIP_BODY_STRINGS = MAX_OIP_TENSORS * (MAX_INPUTS_PER_REQUEST + 32)
"""Most JSON strings an Open Inference Protocol REST body may hold (18,432): room for every input's
most BYTES items and the names, datatypes and parameters around them. Counted before the body is
parsed (a C loop over its quotes, about 10 ms for 15 MiB), since the parse is what costs: 2.7
million short strings in a 15 MiB body took the upload lane 0.5-1.7 s of CPU and about 230 MB
each, before their count could be refused."""
MAX_TENSOR_DIMS = 16
"""Most dimensions of one tensor's shape (an image batch has 4). Multiplying a shape out costs its
size squared in big-integer digits: 10,000 dimensions of 2**62 are a product of 620,000 bits, and
a 16 MiB body holds 800,000 of them."""
DEFAULT_IMAGE_PIXELS = 50_000_000
"""Most pixels an image may declare by default (FERRY_INFERENCE_MAX_IMAGE_PIXELS)."""

# Streams.

EDGE_STREAMS = 1024
"""Streams (WatchJob, GetJobResults, uploads) Envoy keeps open to all gateways together, shared by
every tenant (its circuit breaker on the streams cluster): past it every caller's stream is
answered 429 OVERLOADED by Envoy itself."""
MAX_TENANT_STREAMS = EDGE_STREAMS // 4
"""Most streams one tenant may be allowed at once (FERRY_GATEWAY_MAX_STREAMS_PER_TENANT): a
quarter of the edge's, so no one tenant can hold them all."""
DEFAULT_TENANT_STREAMS = 32
"""Streams one tenant may hold open at once by default: a console, a few ``ferry job --wait`` and a
CI pipeline watching its jobs, with room to spare."""

# Result files.

RESULT_FILE_PIECE_BYTES = 5 * MIB
"""Most bytes of a job's result file (and a line) that a gateway holds while it builds the file:
the lines go to the result store in pieces of this size as store's records are read, whatever the
job's size (the whole file is about 55 MB at 10,000 items and top_k 100). It is S3's smallest part
of a multipart upload, which each piece but the last becomes."""

# Uploads (CreateUpload) and the jobs made from them.

UPLOAD_MAX_ENTRIES = MAX_JOB_ITEMS
"""Most files in a zip upload, or non-blank lines in a JSONL manifest: a job's most items."""
UPLOAD_MAX_UNPACKED_BYTES = 1024 * MIB
"""Most bytes a zip upload's files may hold once unpacked (what the Object Store keeps of it)."""
UPLOAD_MAX_COMPRESSION_RATIO = 100
"""Largest unpacked-to-packed size ratio of one zip file: photos pack about 1:1, text ~5:1; a
file of 8 MiB of zeros packs about 1000:1 (a zip bomb's ratio)."""
UPLOAD_ZIP_RECORDS_PER_ENTRY = 4
"""Records a zip's directory may list per file it may hold (``upload_max_entries``): folders and an
operating system's bookkeeping are records too (Finder adds ``__MACOSX/._<name>`` beside each file,
and a record per folder), and they are counted before Python's zipfile reads the directory, which
builds an object for every record (a 212 MB zip listing 4 million empty records took the upload
lane to 2.1 GB and past its 60 s deadline)."""
UPLOAD_MAX_ZIP_DIRECTORY_BYTES = 16 * MIB
"""Largest directory of a zip upload (its records, their names included), which zipfile reads whole,
about three times over, before any of it can be checked: 40,000 records of 400 bytes."""
UPLOAD_TENANT_QUOTA_BYTES = 4096 * MIB
"""Most upload bytes (zip files unpacked, manifests as sent) a tenant may keep stored at once."""
UPLOAD_TENANT_MAX_UPLOADS = 2_000
"""Uploads one tenant keeps at once (each for 7 days): the quota's ledger holds an entry per
upload and every upload reads and rewrites it, so it stays small (about 160 KB)."""
UPLOAD_BUFFER_BYTES = 4 * MIB
"""Most bytes of one upload in flight that the gateway holds in memory before writing them to
its spool file: the memory an upload costs, whatever its size."""
UPLOAD_MIN_PIECE_BYTES = 512
"""Smallest average size of an upload's pieces (CreateUpload's stream messages) once it has sent
UPLOAD_FREE_PIECES: each piece costs the upload lane about 65 us of CPU whatever its size, so
200,000 pieces of one byte took it 12.9 s for a 200 KB upload (a 256 MiB one would take hours).
Envoy passes a REST body in pieces of what it reads (KiBs); ``ferry upload`` sends 1 MiB ones."""
UPLOAD_FREE_PIECES = 4096
"""Pieces an upload may send before their average size is held to UPLOAD_MIN_PIECE_BYTES."""
UPLOAD_SPOOL_BYTES = 768 * MIB
"""Spool disk the uploads in flight in one gateway may hold together (FERRY_GATEWAY_UPLOAD_SPOOL_BYTES):
three uploads of UPLOAD_FILE_BYTES, under the chart's 1 GiB ``/tmp``."""
MANIFEST_MAX_LINE_BYTES = 16 * MIB
"""Longest JSONL manifest line: an image of the 12 MiB image limit as base64, and its key."""
INPUT_NAME_CHARS = 1024
"""Longest name of a job's input (a zip file's name, a manifest line's "id" or image URL) kept in
its record: longer file names and URLs are shown shortened around an ellipsis, a longer "id" is
refused (an id is matched back exactly, so it is never changed)."""


def describe(size: int) -> str:
    """A size as people read it: ``"16 MiB (16777216 bytes)"``."""
    mib = size / MIB
    shown = f"{mib:g} MiB" if mib == int(mib) else f"{mib:.1f} MiB"
    return f"{shown} ({size} bytes)"


def check_settings(values: object, prefix: str, bounds: dict[str, tuple[int, str]]) -> None:
    """Refuses settings above the limits they must stay within, naming the variable and why.

    Args:
        values: the settings object.
        prefix: its environment prefix (``FERRY_GATEWAY_``), to name the variable to change.
        bounds: field name -> (the limit, what makes it the limit).

    Raises:
        ValueError: a field is above its limit (pydantic reports it as a validation error).
    """
    for field, (bound, why) in bounds.items():
        value = getattr(values, field)
        if value > bound:
            raise ValueError(
                f"{prefix}{field.upper()} is {value}; it may be at most {bound} ({why}). "
                f"Lower {prefix}{field.upper()} to {bound} or less"
            )
