"""A translator stepper that hands every call to the one it wraps: the base of the test wrappers that
record, slow down or break decoding steps under the continuous batcher (test_server_continuous.py,
test_server_lanes.py). Subclasses add their hooks and call `super()`."""

from __future__ import annotations

import time


class DelegatingStepper:
    """Every step-API call goes to `inner`; `decode_step` first sleeps `delay` seconds (a slow model
    keeps a running batch alive long enough for requests to join it)."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay

    def encode(self, src_ids, src_pad_mask):
        return self.inner.encode(src_ids, src_pad_mask)

    def cross_kv(self, memory):
        return self.inner.cross_kv(memory)

    def reorder_kv(self, kv, index):
        return self.inner.reorder_kv(kv, index)

    def decode_step(self, tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask):
        if self.delay:
            time.sleep(self.delay)
        return self.inner.decode_step(tokens, positions, self_kv, self_pad_mask, cross_kv, src_pad_mask)
