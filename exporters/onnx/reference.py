"""Run export graphs on ONNX's own reference evaluator (`onnx.reference.ReferenceEvaluator`).

The portable graphs (portable/*.onnx) run on it as they are. The custom-node graphs run too, through
their function bodies, with one correction for a limitation of the evaluator (onnx 1.23): inside a
model-local function it passes attribute references (`Softmax<axis=@axis>`) to a node as
`run(x, linked_attributes=...)`, but its unary operators (Softmax among them) define `run(self, x)`
only, so any function whose body gives a unary op a referenced attribute fails with "Issues with
types ... (operator 'OpFunction')". Attribute references are valid ONNX (IR.md, "Functions"), and
onnx.checker and onnxruntime accept the graphs, so the export is not at fault. `Softmax` below is
the evaluator's own Softmax with the standard `run` signature, passed as `new_ops` (the evaluator's
documented way to replace an operator; it computes the same thing) by an evaluator subclass, because
the evaluator builds the function bodies' own evaluators as `self.__class__(function)` without the
caller's `new_ops`. (The evaluator also keys local functions by domain and name, not overload; every
mmserve graph uses one overload, "" in classifiers and "masked" in translators, so that holds here.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_softmax import Softmax as _EvaluatorSoftmax

__all__ = ["MultiMaxReferenceEvaluator", "ReferenceSession", "reference_evaluator"]


class Softmax(_EvaluatorSoftmax):
    """onnx.reference's Softmax, accepting `axis` as a linked (referenced) attribute."""

    op_domain = ""

    def run(self, x, linked_attributes=None, context=None, bindings=None):  # noqa: D102 - OpRun.run's signature
        return OpRun.run(self, x, linked_attributes=linked_attributes)

    def _run(self, X, axis=None):  # noqa: N803 - the evaluator's name
        axis = self.axis if axis is None else axis
        if X.size == 0:
            return (X,)
        shifted = np.exp(X - X.max(axis=axis, keepdims=True))
        return ((shifted / shifted.sum(axis=axis, keepdims=True)).astype(X.dtype),)


class MultiMaxReferenceEvaluator(ReferenceEvaluator):
    """ReferenceEvaluator with the Softmax above, in the graph and in every function body."""

    def __init__(self, proto: Any, *args: Any, new_ops: Sequence[type[OpRun]] | None = None, **kwargs: Any) -> None:
        super().__init__(proto, *args, new_ops=[*(new_ops or []), Softmax], **kwargs)


def reference_evaluator(model: onnx.ModelProto | Path | str) -> ReferenceEvaluator:
    """A ReferenceEvaluator for an export graph, custom-node (with function bodies) or portable."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return MultiMaxReferenceEvaluator(proto)


class ReferenceSession:
    """The slice of onnxruntime's InferenceSession that mmserve's runners use: `run(names, feeds)`."""

    def __init__(self, model: onnx.ModelProto | Path | str) -> None:
        self._evaluator = reference_evaluator(model)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        return list(self._evaluator.run(list(output_names) if output_names else None, dict(feeds)))
