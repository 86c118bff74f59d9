-- Job priorities and listing a job's items by state (ferry.jobs.v1 CreateJob.priority, ListJobItems).
--
-- jobs.priority is the ferry.types.v1.Priority the job was created with (0 unspecified = normal,
-- 1 HIGH, 2 NORMAL, 3 LOW); jobs created before this migration ran at normal priority.
-- A job's failed items (state 2) are few, so a small partial index lets ListJobItems page through
-- them in item order without walking the job's succeeded items; other states ride on
-- predictions_job_items (0001), where most of a job's rows match anyway.

ALTER TABLE jobs ADD COLUMN priority smallint NOT NULL DEFAULT 0;

CREATE INDEX predictions_job_failed ON predictions (job_id, item_index) WHERE state = 2;
