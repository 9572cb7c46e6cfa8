"""Launch geometry of the Triton MultiMax row kernels: pure Python, no Triton or torch import.

Kept apart so that ahead-of-time launchers (the TensorRT plugin) compute exactly the grid, tile and
warp count the PyTorch path uses. Rows are the innermost, contiguous axis of a tensor:
`n_rows = numel // n_cols`.

Two regimes:
- short rows (n_cols <= max_single_block): one tile of `rows_per_program` x `block_n` elements holds
  whole rows in registers: x is read once and y written once;
- long rows: one row per program, `block_n`-wide column blocks, online softmax (running max and
  rescaled running sum) in a first sweep, normalise-and-store in a second sweep (x read twice).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "RowLaunch",
    "row_launch",
    "next_pow2",
    "cdiv",
    "FORWARD_MAX_SINGLE_BLOCK",
    "BACKWARD_MAX_SINGLE_BLOCK",
    "LONG_ROW_BLOCK",
]

FORWARD_MAX_SINGLE_BLOCK = 32768
"""Longest row the forward keeps in registers (32 warps x 32 threads x 32 fp32 each)."""
BACKWARD_MAX_SINGLE_BLOCK = 8192
"""The backward holds g, y, x and dz per element, so it switches to column blocks earlier."""
LONG_ROW_BLOCK = 4096
"""Column block of the long-row (looping) regime (capped at the threshold that selects it)."""
_TILE_ELEMENTS = 4096  # elements per program for short rows (several rows per program)
_ELEMENTS_PER_THREAD = 16


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


@dataclass(frozen=True)
class RowLaunch:
    """What a launch of the row kernels needs (constexprs, grid and warps)."""

    block_n: int  # BLOCK_N: columns per tile, a power of two
    rows_per_program: int  # ROWS: rows per tile, a power of two
    single_block: bool  # SINGLE_BLOCK: whole rows in one tile
    num_warps: int
    n_col_blocks: int  # column tiles per row (1 when single_block)
    grid: tuple[int]  # (programs,) along x

    @property
    def programs(self) -> int:
        return self.grid[0]


def row_launch(n_rows: int, n_cols: int, max_single_block: int = FORWARD_MAX_SINGLE_BLOCK) -> RowLaunch:
    """Tile shape, warps and grid for `n_rows` rows of `n_cols` elements.

    Short rows are packed several to a program (~4096 elements per tile) so that attention rows of a
    few dozen keys still fill a thread block; warps are sized for ~16 elements per thread.
    """
    if n_rows < 0 or n_cols < 1:
        raise ValueError(f"need n_rows >= 0 and n_cols >= 1, got {n_rows} and {n_cols}")
    if n_cols <= max_single_block:
        block = max(16, next_pow2(n_cols))
        rows = max(1, min(64, _TILE_ELEMENTS // block, next_pow2(max(n_rows, 1))))
        single = True
    else:
        block = min(LONG_ROW_BLOCK, max(16, next_pow2(max_single_block) // 2))
        rows = 1
        single = False
    elements = block * rows
    num_warps = max(1, min(32, next_pow2(cdiv(elements, 32 * _ELEMENTS_PER_THREAD))))
    if not single:
        num_warps = min(num_warps, 8)
    return RowLaunch(
        block_n=block,
        rows_per_program=rows,
        single_block=single,
        num_warps=num_warps,
        n_col_blocks=1 if single else cdiv(n_cols, block),
        grid=(max(1, cdiv(n_rows, rows)),),
    )
