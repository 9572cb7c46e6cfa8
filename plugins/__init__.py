"""Fused MultiMax kernels (Triton for GPU) and the TensorRT plugin that wraps them."""
