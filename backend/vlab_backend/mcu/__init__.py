"""Microcontroller-class targets: board profiles, the host side of the link to a board that
runs TensorFlow Lite Micro, and the cached tool environments (TFLite Micro, onnx2tf)."""
