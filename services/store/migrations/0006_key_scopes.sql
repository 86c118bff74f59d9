-- API keys get an id (to name them in the admin API), scopes, an optional own rate limit and a hint.
-- Keys made before scopes existed keep doing what they could: predict, jobs and read, not admin.

ALTER TABLE api_keys
    ADD COLUMN id         uuid             NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN scopes     text[]           NOT NULL DEFAULT '{predict,jobs,read}',
    ADD COLUMN rate_per_s double precision NOT NULL DEFAULT 0 CHECK (rate_per_s >= 0),
    ADD COLUMN burst      integer          NOT NULL DEFAULT 0 CHECK (burst >= 0),
    ADD COLUMN hint       text             NOT NULL DEFAULT '';
CREATE UNIQUE INDEX api_keys_id ON api_keys (id);
CREATE INDEX api_keys_newest ON api_keys (created_at DESC, id DESC);
