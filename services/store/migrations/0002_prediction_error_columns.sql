-- A failed prediction's code, message and reason as plain columns, so operators can ask SQL
-- "which inputs failed, and why" without decoding protobuf. The serialized google.rpc.Status in
-- `error` stays the source of the API answer: it keeps every detail (ErrorInfo metadata included).
-- Rows written before this migration keep NULLs here; their `error` still answers the API.

ALTER TABLE predictions
    ADD COLUMN error_code    integer,
    ADD COLUMN error_message text,
    ADD COLUMN error_reason  text;
