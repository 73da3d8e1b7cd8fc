"""PyTorch -> ONNX -> FP16 ONNX -> TensorRT engine, with parity checks and manifests."""
