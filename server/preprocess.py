"""Upload -> pixel rows, off the event loop: on a thread pool, or on worker processes.

Decoding and the ink-grid preprocessing are ~50 small numpy/PIL calls per image (a few ms of mostly
Python), which holds the GIL: with threads, all of it shares ONE core with the HTTP handling and the
model thread. `preprocess_processes > 0` runs it on that many spawned worker processes instead (as a
Triton ensemble would run a Python pre-processing model in its own instances), so it scales across
cores. Rows are 64 floats per digit image, so the inter-process traffic is the upload bytes in and
256 bytes out. The code path is the same function either way (`preprocess_images`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import multiprocessing
from typing import Any, Awaitable, Callable, Optional, Sequence

import numpy as np

from mmserve.tasks.image_classification import (
    ImageLimits,
    ImagePreprocessing,
    InvalidImageError,
    decode_image,
    images_to_pixel_values,
)

from .errors import ApiError

__all__ = ["preprocess_images", "Preprocessor"]


def preprocess_images(blobs: Sequence[bytes], pre: ImagePreprocessing, limits: ImageLimits,
                      first_index: int = 0) -> list[np.ndarray]:
    """Decode every upload (in order) into one pixel row [C, H, W]; the first bad image aborts with its
    index and reason (413 for size limits, 422 for anything that is not an acceptable image)."""
    rows = []
    for offset, data in enumerate(blobs):
        index = first_index + offset
        if len(data) > limits.max_bytes:
            raise ApiError(413, "image_too_large", f"image {index}: {len(data)} bytes, more than the limit "
                                                   f"of {limits.max_bytes}")
        try:
            pixels = images_to_pixel_values([decode_image(data, limits)], pre)
        except InvalidImageError as exc:
            message = str(exc)
            # decode_image words every pixel-limit refusal "too many pixels ...": that is a size limit.
            status, code = (413, "image_too_large") if message.startswith("too many pixels") else (
                422, "invalid_image")
            raise ApiError(status, code, f"image {index}: {message}") from None
        rows.append(pixels[0].numpy())
    return rows


# Worker-process side: the config arrives once (initializer), jobs carry only bytes.
_worker_config: Optional[tuple[ImagePreprocessing, ImageLimits]] = None


def _init_worker(pre: dict, limits: dict) -> None:
    global _worker_config
    _worker_config = (ImagePreprocessing.model_validate(pre), ImageLimits.model_validate(limits))


def _job(blobs: list[bytes], first_index: int) -> tuple:
    """Returns ("ok", rows) or ("error", status, code, detail): ApiError does not pickle."""
    assert _worker_config is not None
    try:
        return ("ok", preprocess_images(blobs, *_worker_config, first_index=first_index))
    except ApiError as exc:
        return ("error", exc.status, exc.code, exc.detail)


class Preprocessor:
    """Runs `preprocess_images` for the classifier: in-process via `run_in_threads`, or on processes."""

    def __init__(self, pre: ImagePreprocessing, limits: ImageLimits, processes: int,
                 run_in_threads: Callable[..., Awaitable[Any]]) -> None:
        self.pre, self.limits = pre, limits
        self.processes = processes
        self._run_in_threads = run_in_threads
        self._pool: Optional[concurrent.futures.ProcessPoolExecutor] = None
        if processes > 0:
            # spawn, not fork: the server has threads (event loop, batchers, BLAS pools) by now.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(pre.model_dump(), limits.model_dump()),
            )
            blank = [_blank_png()]
            for future in [self._pool.submit(_job, blank, 0) for _ in range(processes)]:
                future.result(timeout=300)  # every worker imported and warm before the server is ready

    async def __call__(self, blobs: Sequence[bytes]) -> list[np.ndarray]:
        if self._pool is None:
            return await self._run_in_threads(preprocess_images, blobs, self.pre, self.limits)
        loop = asyncio.get_running_loop()
        size = max(1, math.ceil(len(blobs) / self.processes))
        chunks = [(list(blobs[i: i + size]), i) for i in range(0, len(blobs), size)]
        results = await asyncio.gather(*(loop.run_in_executor(self._pool, _job, chunk, start)
                                         for chunk, start in chunks))
        rows: list[np.ndarray] = []
        for result in results:  # in order: the first bad image (lowest index) is the one reported
            if result[0] == "error":
                raise ApiError(result[1], result[2], result[3])
            rows.extend(result[1])
        return rows

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _blank_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, "PNG")
    return buf.getvalue()
