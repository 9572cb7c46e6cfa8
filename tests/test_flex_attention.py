"""MultiMax attention through flex_attention (the modulator as score_mod, masks as block masks) against
the eager path (scores -> mmserve::multimax -> @ v), on CPU.

flex_attention runs eagerly on CPU (a dense reference implementation of the same higher-order op) and
compiled for inference. Its *user-facing* entry refuses CPU inputs that require grad, because the
compiled CPU backward does not exist; the eager dense backward does, and it is the same autograd
formula (captured ranges/ts included) that the CUDA path differentiates, so the gradient tests lift
that one check (`_allow_cpu_backward`) and compare all five gradients with the eager path.

Fully masked query rows: output 0 and no gradient, like every MultiMax path in mmserve.
"""

from __future__ import annotations

import math

import pytest
import torch

from mmserve.ops import multimax_attention
from mmserve.ops.attention import _attention_impls
from mmserve.ops.flex import flex_available, multimax_flex_attention

pytestmark = [
    pytest.mark.skipif(not flex_available(), reason="this torch has no flex_attention"),
    # eager flex_attention is the point of most tests here (the compiled one is tested separately)
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning"),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def _allow_cpu_backward(monkeypatch):
    import torch.nn.attention.flex_attention as flex_module

    monkeypatch.setattr(flex_module, "_validate_device", lambda *args: None)


def qkv(B=2, H=3, Tq=21, Tk=21, D=16, requires_grad=False):
    q = torch.randn(B, H, Tq, D) * 1.5
    k = torch.randn(B, H, Tk, D) * 1.5
    v = torch.randn(B, H, Tk, D)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def params(requires_grad=False):
    ranges = torch.tensor([-0.6, 0.4, -1.1, 0.9])
    ts = torch.tensor([0.3, -0.2, 0.15, 0.25])
    return ranges.requires_grad_(requires_grad), ts.requires_grad_(requires_grad)


def padding(B, Tk, lengths):
    return (torch.arange(Tk)[None, :] >= torch.tensor(lengths)[:, None]).view(B, 1, 1, Tk)


def cases(B, Tq, Tk):
    pad = padding(B, Tk, [Tk - 5, 0])  # batch 1: no valid key -> every row fully masked
    return {
        "no mask": (None, False),
        "padding": (pad, False),
        "causal": (None, True),
        "padding + causal": (pad, True),
        "2-D mask": (torch.rand(Tq, Tk) > 0.7, False),
        "per-head mask": (torch.rand(B, 3, Tq, Tk) > 0.6, False),
    }


@pytest.mark.parametrize("Tq, Tk", [(21, 21), (7, 30), (1, 13)])  # Tq < Tk: decoding with a KV cache
def test_forward_matches_eager(Tq, Tk):
    q, k, v = qkv(Tq=Tq, Tk=Tk)
    ranges, ts = params()
    for name, (mask, causal) in cases(2, Tq, Tk).items():
        want = multimax_attention(q, k, v, ranges, ts, mask=mask, is_causal=causal, impl="eager")
        got = multimax_flex_attention(q, k, v, ranges, ts, mask=mask, is_causal=causal, compiled=False)
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6, msg=name)


def test_fully_masked_rows_are_zero():
    q, k, v = qkv()
    ranges, ts = params()
    mask = padding(2, 21, [21, 0])
    out = multimax_flex_attention(q, k, v, ranges, ts, mask=mask, compiled=False)
    assert (out[1] == 0).all() and torch.isfinite(out).all()


def test_additive_float_mask():
    q, k, v = qkv()
    ranges, ts = params()
    additive = torch.randn(2, 1, 21, 21)
    want = multimax_attention(q, k, v, ranges, ts, mask=additive, impl="eager")  # added after seglu
    got = multimax_flex_attention(q, k, v, ranges, ts, mask=additive, compiled=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["no mask", "padding + causal", "per-head mask"])
def test_gradients_match_eager(_allow_cpu_backward, name):
    B, Tq, Tk = 2, 13, 17
    mask, causal = cases(B, Tq, Tk)[name]
    grads = []
    for impl in ("eager", "flex"):
        torch.manual_seed(1)
        q, k, v = qkv(B=B, Tq=Tq, Tk=Tk, requires_grad=True)
        ranges, ts = params(requires_grad=True)
        if impl == "eager":
            out = multimax_attention(q, k, v, ranges, ts, mask=mask, is_causal=causal, impl="eager")
        else:
            out = multimax_flex_attention(q, k, v, ranges, ts, mask=mask, is_causal=causal, compiled=False)
        torch.manual_seed(2)
        (out * torch.randn_like(out)).sum().backward()
        grads.append([t.grad for t in (q, k, v, ranges, ts)])
    for label, got, want in zip("q k v ranges ts".split(), grads[1], grads[0]):
        assert got is not None and torch.isfinite(got).all(), label
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale, msg=label)
    if mask is not None and name == "padding + causal":
        assert (grads[1][0][1] == 0).all()  # batch 1 fully masked: no gradient to its queries


def test_registration():
    cpu = {name: supports for name, _, supports in _attention_impls["cpu"]}
    cuda = {name: supports for name, _, supports in _attention_impls["cuda"]}
    q = torch.zeros(2, 3, 8, 64)
    assert "flex" in cpu and not cpu["flex"](q)  # never picked by impl="auto" on CPU
    assert "flex" in cuda and cuda["flex"](q)  # picked by impl="auto" on CUDA
    assert not cuda["flex"](torch.zeros(2, 8, 64))  # needs [B, H, T, D]
    # "auto" on CPU is the eager path
    k, v = torch.randn(2, 3, 8, 64), torch.randn(2, 3, 8, 64)
    ranges, ts = params()
    q = torch.randn(2, 3, 8, 64)
    torch.testing.assert_close(
        multimax_attention(q, k, v, ranges, ts), multimax_attention(q, k, v, ranges, ts, impl="eager")
    )


@pytest.mark.slow
def test_compiled_cpu_inference_through_registered_impl():
    """torch.compile(flex_attention) on CPU (inductor's C++ flex template), via impl="flex"."""
    torch._dynamo.reset()
    q, k, v = qkv(B=2, H=3, Tq=37, Tk=37, D=16)
    ranges, ts = params()
    mask = padding(2, 37, [30, 0])
    with torch.no_grad():
        want = multimax_attention(q, k, v, ranges, ts, mask=mask, is_causal=True, impl="eager")
        got = multimax_attention(q, k, v, ranges, ts, mask=mask, is_causal=True, impl="flex")
        assert torch.isfinite(got).all() and (got[1] == 0).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
        # new parameter values reuse the compiled kernel (captured tensors are inputs, not constants)
        ranges2 = ranges + 0.3
        want2 = multimax_attention(q, k, v, ranges2, ts, mask=mask, is_causal=True, impl="eager")
        got2 = multimax_attention(q, k, v, ranges2, ts, mask=mask, is_causal=True, impl="flex")
        torch.testing.assert_close(got2, want2, rtol=1e-5, atol=2e-6)
    assert math.isfinite(float(got.sum()))
