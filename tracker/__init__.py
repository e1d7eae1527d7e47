"""The tracker daemon: tracks each camera's detections from carmesh.detections.v1 and counts
line crossings and zone changes exactly once into PostgreSQL (docs/tracking.md)."""
