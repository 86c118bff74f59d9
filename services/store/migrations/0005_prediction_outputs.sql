-- What a prediction answered besides classes: an embedding (text-embedding models), a JSON object
-- (notebook-backed models), tensors, and an ensemble's per-member timings; one JSON object with
-- the Prediction fields that are set (embedding, output, tensors, members), NULL for a
-- classifier's answer. Rows written before this migration keep NULL.

ALTER TABLE predictions ADD COLUMN outputs jsonb;
