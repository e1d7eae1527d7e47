"""feature_service: frames and detections from Kafka into PostgreSQL, a blob store and Redis;
online features and versioned dataset snapshots over gRPC (carmesh.v1.FeatureService)."""
