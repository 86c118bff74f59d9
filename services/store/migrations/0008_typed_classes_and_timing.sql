-- Classes and timing as typed columns instead of jsonb.
--
-- Ingest used to turn every record's classes and timing into JSON text in Python, and Postgres
-- parsed that text again into jsonb: together the largest CPU cost of a stored row (see
-- docs/store.md, Throughput). Arrays and numbers go through binary COPY as they are, and the API
-- builds the same Prediction from them on read. One class is the i-th element of the three arrays;
-- a timing value the proto left at zero is NULL, as JSON left it out (so statistics skip it).
ALTER TABLE predictions
    ADD COLUMN class_labels  text[]           NOT NULL DEFAULT '{}',
    ADD COLUMN class_scores  real[]           NOT NULL DEFAULT '{}',
    ADD COLUMN class_indices integer[]        NOT NULL DEFAULT '{}',
    ADD COLUMN decode_ms     double precision,
    ADD COLUMN queue_ms      double precision,
    ADD COLUMN inference_ms  double precision,
    ADD COLUMN total_ms      double precision,
    ADD COLUMN batch_size    integer;

-- Rows written before: the JSON left out zero values, and a score went through a double on its
-- way to the float32 field (::float8::real reads it back exactly as the API did).
UPDATE predictions SET
    class_labels = ARRAY(
        SELECT coalesce(c ->> 'label', '') FROM jsonb_array_elements(classes) WITH ORDINALITY AS e(c, n) ORDER BY n
    ),
    class_scores = ARRAY(
        SELECT coalesce((c ->> 'score')::float8::real, 0)
        FROM jsonb_array_elements(classes) WITH ORDINALITY AS e(c, n) ORDER BY n
    ),
    class_indices = ARRAY(
        SELECT coalesce((c ->> 'index')::integer, 0)
        FROM jsonb_array_elements(classes) WITH ORDINALITY AS e(c, n) ORDER BY n
    ),
    decode_ms = (timing ->> 'decode_ms')::float8,
    queue_ms = (timing ->> 'queue_ms')::float8,
    inference_ms = (timing ->> 'inference_ms')::float8,
    total_ms = (timing ->> 'total_ms')::float8,
    batch_size = (timing ->> 'batch_size')::integer
WHERE classes <> '[]' OR timing <> '{}';

-- The top class, generated from the arrays now (NULLIF: JSON had no label or score for a zero
-- value, and filters and statistics keep meaning what they meant). Dropping the old generated
-- columns drops predictions_tenant_label, re-created on the new top_label.
ALTER TABLE predictions DROP COLUMN top_label, DROP COLUMN top_score;
ALTER TABLE predictions DROP COLUMN classes, DROP COLUMN timing;
ALTER TABLE predictions
    ADD COLUMN top_label text GENERATED ALWAYS AS (NULLIF(class_labels[1], '')) STORED,
    ADD COLUMN top_score real GENERATED ALWAYS AS (NULLIF(class_scores[1], 0)) STORED;
CREATE INDEX predictions_tenant_label ON predictions (tenant, top_label, create_time DESC, id DESC);
