"""The Open Inference Protocol over gRPC: its messages (generated), codec, service and server."""
