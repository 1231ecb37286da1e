"""The servers the `bench` command compares this service against: a plain FastAPI app, a LitServe
app and a KServe model server, all on the same ONNX model and the same pre/post-processing
code."""
