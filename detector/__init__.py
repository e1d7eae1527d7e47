"""The detector daemon: serves the registered ONNX detector with micro-batching and hot reload."""
