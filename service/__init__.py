"""Image inference service: ONNX Runtime models behind a FastAPI HTTP API."""

__version__ = "0.1.0"
