-- Ferry's first schema: jobs, prediction records and API keys.
-- States are the numbers of ferry.jobs.v1.JobState and ferry.predictions.v1.PredictionState.

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    tenant          text        NOT NULL,
    request_id      text        NOT NULL DEFAULT '',
    model           text        NOT NULL,
    state           smallint    NOT NULL,
    items_total     integer     NOT NULL CHECK (items_total > 0),
    items_succeeded integer     NOT NULL DEFAULT 0,
    items_failed    integer     NOT NULL DEFAULT 0,
    top_k           integer     NOT NULL,
    trace_id        text        NOT NULL DEFAULT '',
    error           bytea,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_tenant_newest ON jobs (tenant, create_time DESC, id DESC);

CREATE TABLE predictions (
    id          uuid PRIMARY KEY,
    tenant      text        NOT NULL,
    model       text        NOT NULL,
    job_id      uuid,
    item_index  integer,
    state       smallint    NOT NULL,
    classes     jsonb       NOT NULL DEFAULT '[]',
    timing      jsonb       NOT NULL DEFAULT '{}',
    error       bytea,      -- a serialized google.rpc.Status, kept whole with its ErrorInfo
    trace_id    text        NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL,
    ingest_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX predictions_tenant_newest ON predictions (tenant, create_time DESC, id DESC);
CREATE INDEX predictions_job_items ON predictions (job_id, item_index) WHERE job_id IS NOT NULL;

CREATE TABLE api_keys (
    key_sha256 text PRIMARY KEY,
    tenant     text        NOT NULL,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
