"""The servers scripts/bench.py compares this service against: a naive FastAPI app and a
LitServe app, both on the same ONNX model and the same pre/post-processing code."""
