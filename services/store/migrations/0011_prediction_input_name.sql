-- Which input of its job's upload a prediction is ("holiday/IMG_0001.jpg", a manifest line's
-- "id", the image a line names, "line 17"): job results name each item by it. NULL for
-- synchronous predictions, inputs listed in CreateJob, and rows written before it existed
-- (their results keep naming them "inputs[{index}]").

ALTER TABLE predictions ADD COLUMN input_name text;
