-- Jobs by manifest (JOB_STATE_EXPANDING = 7): recorded before their items are counted, so a job has
-- items_total 0 while it expands, and keeps 0 if it was failed (a bad manifest line) or cancelled
-- before its expansion ended.
ALTER TABLE jobs DROP CONSTRAINT jobs_items_total_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_items_total_check CHECK (items_total >= 0);
