"""Run a portable export graph (portable/*.onnx) on OpenVINO's CPU plugin.

OpenVINO reads ONNX itself but has no conversion rule for the `mmserve` domain, so it takes the
portable copies only. Its CPU plugin may pick a lower inference precision on CPUs with bf16 units;
`INFERENCE_PRECISION_HINT=f32` keeps it in float32, the precision the export is checked in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["OpenVINOSession"]


class OpenVINOSession:
    """The slice of onnxruntime's InferenceSession that mmserve's runners use: `run(names, feeds)`."""

    def __init__(self, path: Path | str, device: str = "CPU", threads: int = 0) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = core.compile_model(core.read_model(str(path)), device, config)
        self.output_names = [port.get_any_name() for port in self._compiled.outputs]

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        results = self._compiled(dict(feeds))
        names = list(output_names) if output_names else self.output_names
        return [np.asarray(results[self._compiled.output(name)]) for name in names]
