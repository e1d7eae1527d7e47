"""The ``carmesh`` command-line client: detection and model management through the gateway, over gRPC only."""
