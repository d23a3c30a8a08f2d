"""The worker: one process, one ONNX Runtime session, one model pool."""
