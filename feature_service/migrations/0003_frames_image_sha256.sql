-- The blob garbage collector asks which blobs frame rows reference (feature_service/blob_gc.py).
CREATE INDEX IF NOT EXISTS frames_image_sha256 ON frames (image_sha256);
