"""Triton kernels for MultiMax on GPUs: the fused row kernel (forward and backward).

- `launch`  : launch geometry (pure Python; shared with ahead-of-time launchers such as TensorRT)
- `kernels` : the `@triton.jit` kernels and their documented signatures
- `ops`     : PyTorch entry points in the `mmserve.ops.kernels` contract

`mmserve.ops` registers these lazily for CUDA tensors (see `mmserve/ops/accelerated.py`); importing
this package does not import Triton, `plugins.triton.ops` does.

Status: correctness tested under TRITON_INTERPRET=1 on the CPU only; GPU speed unmeasured
(run `python benchmarks/gpu_check.py` on a CUDA machine).
"""
