"""The masking models' exports: MediaPipe's detectors converted from TFLite to ONNX, and CLIPSeg for
mask prompts."""
