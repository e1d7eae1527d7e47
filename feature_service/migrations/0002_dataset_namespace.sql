-- Whose labels a frame carries: '' for the operator's (imported data sets, sources), else the API
-- key name of the client that sent it through IngestFrames. Snapshots draw from one namespace.
ALTER TABLE frames ADD COLUMN dataset_namespace text NOT NULL DEFAULT '';
DROP INDEX frames_dataset_time;
CREATE INDEX frames_dataset_time ON frames (dataset_namespace, dataset, captured_at);
