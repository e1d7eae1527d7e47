-- Frames, their labels and features; model predictions; immutable dataset snapshots.
-- Every row is written once: replays of Kafka records insert nothing new (ON CONFLICT DO NOTHING).

CREATE TABLE frames (
    frame_id        text PRIMARY KEY,
    camera_id       text NOT NULL,
    seq             bigint NOT NULL DEFAULT 0,
    captured_at     timestamptz NOT NULL,
    encoding        text NOT NULL CHECK (encoding IN ('jpeg', 'png', 'other')),
    width           integer NOT NULL CHECK (width > 0),
    height          integer NOT NULL CHECK (height > 0),
    -- The image bytes live in the blob store under this digest.
    image_sha256    text NOT NULL CHECK (image_sha256 ~ '^[0-9a-f]{64}$'),
    image_bytes     integer NOT NULL CHECK (image_bytes > 0),
    source          text NOT NULL DEFAULT '',
    dataset         text NOT NULL DEFAULT '',
    -- The split the source gave ('' when none).
    split           text NOT NULL DEFAULT '' CHECK (split IN ('', 'train', 'val', 'test')),
    brightness      double precision NOT NULL,
    contrast        double precision NOT NULL,
    sharpness       double precision NOT NULL,
    -- Where the frame was read from, for tracing a row back to its record.
    kafka_partition integer,
    kafka_offset    bigint,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX frames_camera_time ON frames (camera_id, captured_at);
CREATE INDEX frames_dataset_time ON frames (dataset, captured_at);

-- Ground-truth boxes (from a data set or a person), in source-image pixels.
CREATE TABLE annotations (
    frame_id    text NOT NULL REFERENCES frames (frame_id) ON DELETE CASCADE,
    idx         integer NOT NULL,
    class_id    integer NOT NULL,
    class_name  text NOT NULL,
    x1          real NOT NULL,
    y1          real NOT NULL,
    x2          real NOT NULL,
    y2          real NOT NULL,
    ignore      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (frame_id, idx)
);
CREATE INDEX annotations_class ON annotations (class_name, frame_id);

-- One row per (frame, model version) that ran, even with no detections; no foreign key to
-- frames because detections may arrive before their frame is stored (separate topics).
CREATE TABLE detection_runs (
    frame_id        text NOT NULL,
    model_name      text NOT NULL,
    model_version   text NOT NULL,
    model_alias     text NOT NULL DEFAULT '',
    camera_id       text NOT NULL,
    detected_at     timestamptz NOT NULL,
    image_width     integer NOT NULL DEFAULT 0,
    image_height    integer NOT NULL DEFAULT 0,
    detections      integer NOT NULL,
    kafka_partition integer,
    kafka_offset    bigint,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frame_id, model_name, model_version)
);
CREATE INDEX detection_runs_model ON detection_runs (model_name, model_version);
CREATE INDEX detection_runs_camera_time ON detection_runs (camera_id, detected_at);

CREATE TABLE predictions (
    frame_id        text NOT NULL,
    model_name      text NOT NULL,
    model_version   text NOT NULL,
    idx             integer NOT NULL,
    class_id        integer NOT NULL,
    class_name      text NOT NULL,
    score           real NOT NULL,
    x1              real NOT NULL,
    y1              real NOT NULL,
    x2              real NOT NULL,
    y2              real NOT NULL,
    PRIMARY KEY (frame_id, model_name, model_version, idx),
    FOREIGN KEY (frame_id, model_name, model_version)
        REFERENCES detection_runs (frame_id, model_name, model_version) ON DELETE CASCADE
);
CREATE INDEX predictions_class ON predictions (class_name);

CREATE TABLE dataset_snapshots (
    snapshot_id       bigserial PRIMARY KEY,
    name              text NOT NULL,
    version           integer NOT NULL CHECK (version > 0),
    filter            jsonb NOT NULL,
    val_fraction      double precision NOT NULL,
    seed              bigint NOT NULL,
    keep_source_split boolean NOT NULL,
    train_frames      bigint NOT NULL,
    val_frames        bigint NOT NULL,
    test_frames       bigint NOT NULL,
    class_names       text[] NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

CREATE TABLE snapshot_frames (
    snapshot_id bigint NOT NULL REFERENCES dataset_snapshots (snapshot_id) ON DELETE CASCADE,
    split       text NOT NULL CHECK (split IN ('train', 'val', 'test')),
    position    integer NOT NULL,
    -- RESTRICT: a frame that belongs to a snapshot cannot be deleted.
    frame_id    text NOT NULL REFERENCES frames (frame_id),
    PRIMARY KEY (snapshot_id, split, position),
    UNIQUE (snapshot_id, frame_id)
);

-- Snapshots are immutable, and so is what they point at: rows are inserted, never updated.
CREATE FUNCTION carmesh_forbid_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER frames_immutable BEFORE UPDATE ON frames
    FOR EACH ROW EXECUTE FUNCTION carmesh_forbid_update();
CREATE TRIGGER annotations_immutable BEFORE UPDATE ON annotations
    FOR EACH ROW EXECUTE FUNCTION carmesh_forbid_update();
CREATE TRIGGER dataset_snapshots_immutable BEFORE UPDATE ON dataset_snapshots
    FOR EACH ROW EXECUTE FUNCTION carmesh_forbid_update();
CREATE TRIGGER snapshot_frames_immutable BEFORE UPDATE ON snapshot_frames
    FOR EACH ROW EXECUTE FUNCTION carmesh_forbid_update();
