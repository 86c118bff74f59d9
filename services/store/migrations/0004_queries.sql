-- What users ask of their records: filters on ListPredictions, per-model statistics, retention.
--
-- predictions.source is the API that made a prediction (ferry.predictions.v1.PredictionSource:
-- 1 SYNC, 2 JOB_ITEM, 3 OIP); rows from before this migration are classified by their job.
-- top_label and top_score are the first (highest) class, kept as generated columns so that filters
-- and statistics read a plain column and an index can serve them; a failed prediction has NULLs.

ALTER TABLE predictions ADD COLUMN source smallint;
UPDATE predictions SET source = CASE WHEN job_id IS NULL THEN 1 ELSE 2 END;
ALTER TABLE predictions ALTER COLUMN source SET NOT NULL;

ALTER TABLE predictions
    ADD COLUMN top_label text GENERATED ALWAYS AS (classes -> 0 ->> 'label') STORED,
    ADD COLUMN top_score real GENERATED ALWAYS AS ((classes -> 0 ->> 'score')::real) STORED;

-- Each equality filter, then newest first: ListPredictions reads one index range in order and stops
-- after a page. The time range alone rides on predictions_tenant_newest (0001); min_score is checked
-- on the rows of whichever index is chosen (a range on score cannot also give time order).
-- GetModelStats scans predictions_tenant_model for one model's window. Failures are rare, so they
-- get a small partial index; sources and "succeeded" are common enough that walking
-- predictions_tenant_newest fills a page at once, and every index slows ingest.
CREATE INDEX predictions_tenant_model ON predictions (tenant, model, create_time DESC, id DESC);
CREATE INDEX predictions_tenant_label ON predictions (tenant, top_label, create_time DESC, id DESC);
CREATE INDEX predictions_tenant_failed ON predictions (tenant, create_time DESC, id DESC) WHERE state = 2;

-- Retention deletes expired rows of every tenant in bounded batches. Rows arrive roughly in time
-- order, so a BRIN index (one summary per 128 pages) finds them at almost no cost to ingest, where
-- a btree would be one more index entry per row.
CREATE INDEX predictions_create_time ON predictions USING brin (create_time);
