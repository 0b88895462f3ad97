"""Export: tiny checkpoints, checkpoint -> ONNX, and generated Triton model directories."""
