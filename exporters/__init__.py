"""Turn mmserve models into deployable files (ONNX, TensorRT engines) and check numerical parity."""
