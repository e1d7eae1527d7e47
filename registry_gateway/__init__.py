"""registry_gateway: the gRPC face of the MLflow model registry (carmesh.v1.RegistryService)."""
