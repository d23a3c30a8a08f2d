"""modelgate: a model-serving gateway for ONNX models with an autoscaling controller."""

__version__ = "0.1.0"
