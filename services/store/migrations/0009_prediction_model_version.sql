-- The version of the model that answered a prediction ("1", "2", ...: a model may serve several
-- versions side by side, and calls naming none go to its default, which an admin moves). NULL in
-- rows written before versions existed (every model then served version "1").

ALTER TABLE predictions ADD COLUMN model_version text;
