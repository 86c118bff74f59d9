-- Retrying a job's failed items (StoreService.RetryJob) and job states that tell the truth.
--
-- predictions.generation is the retry round a row was written or re-queued for, and
-- retry_pending marks a failed item row that RetryJob re-queued: only a record of that same
-- generation may replace it, so a redelivered first-run record or a stale round changes nothing.
-- jobs.retry_count is how many rounds RetryJob started (the generation of the newest one).
-- jobs.last_error_* keep the code, reason and message of the last failed item counted, from which
-- a FAILED or PARTIALLY_SUCCEEDED job's google.rpc.Status is built on read (0001's jobs.error was
-- never written and stays unused).

ALTER TABLE predictions
    ADD COLUMN generation    integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_pending boolean NOT NULL DEFAULT false;

-- RetryJob's "which items of this job are pending" without scanning the job's other items.
CREATE INDEX predictions_retry_pending ON predictions (job_id, item_index) WHERE retry_pending;

ALTER TABLE jobs
    ADD COLUMN retry_count        integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error_code    integer,
    ADD COLUMN last_error_reason  text,
    ADD COLUMN last_error_message text;

-- Jobs that finished before this migration: a mixed job was SUCCEEDED, now PARTIALLY_SUCCEEDED,
-- and a job with failed items gets its last failed item's error (job states 3 SUCCEEDED,
-- 4 FAILED, 6 PARTIALLY_SUCCEEDED; prediction state 2 FAILED).
UPDATE jobs SET state = 6 WHERE state = 3 AND items_failed > 0;

UPDATE jobs SET
    last_error_code = last.error_code,
    last_error_reason = last.error_reason,
    last_error_message = last.error_message
FROM (
    SELECT DISTINCT ON (job_id, tenant) job_id, tenant, error_code, error_reason, error_message
    FROM predictions
    WHERE job_id IS NOT NULL AND state = 2
    ORDER BY job_id, tenant, ingest_time DESC
) AS last
WHERE jobs.id = last.job_id AND jobs.tenant = last.tenant AND jobs.state IN (4, 6);
