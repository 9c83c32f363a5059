"""Compiled CPU kernels for the hadamard op (issue 18, item 5), optional: numba (``einc[fast]``).

Why: a hadamard op of a learned HCLT is a K×K matvec per row against about ten passes of plain
torch over its (rows, K, B) values (the parts' sum, max, shift, exp, log, ...), each a separate
kernel with its own dispatch (5-20 µs) and its own trip through memory; at K=32 that, not the
arithmetic, bounds a pass. These kernels do the elementwise work of one op in two loops over
each row, in cache: the parts added into the op's sum, then max, shift and exp (``shift_exp``)
before the matvec (torch's batched matmul: MKL beats a hand loop), log and shift after it
(``log_shift``).

The exp and log are written out here (range reduction and a polynomial, the exponent through
the bits of a float), because numba's ``math.exp`` compiles to a scalar libm call per element
(6x slower than torch's vectorised exp here) unless Intel's SVML is present, which pip's
llvmlite is not built with. Both are accurate to a few ulp of float64 (the float32 kernels
compute in float64 and round once), so results equal the plain torch path (float64 1e-12,
float32 1e-5; tests/test_numba_kernels.py). Rows that carry no mass (every part −inf: clamped
latents ruling out every state) give exactly −inf, as the plain path does.

Every array is in the batch-minor stored order, (rows, K, B), the CPU layout of the torch
backend; ``available()`` says whether numba imports (then the first call of each dtype compiles,
~1-2 s, cached on disk by numba).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    from numba import njit
except ImportError:  # the optional extra is absent: the torch backend keeps its plain path
    njit = None


def available() -> bool:
    """Whether the compiled kernels can run here (numba importable)."""
    return njit is not None


# exp(x) for x below this is 0 (below float64's smallest normal, 2^-1022, e^-708.4)
def _exp_constants(dtype: Any) -> tuple:
    """(lowest x, x below which exp is 0, 1/ln2, ln2 high and low parts (Cody-Waite: n·ln2_hi
    is exact), 2^n's exponent bias and shift, lowest n, Taylor coefficients 1/i!, i = 0..11),
    each of ``dtype``: the float32 kernel computes in float32 (twice the vector width)."""
    if np.dtype(dtype) == np.float32:
        head = (-104.0, -87.3, 1.4426950408889634, 0.693359375, -2.12194440e-4)
        bits = (127, 23, -126.0)
    else:
        head = (-745.0, -708.0, 1.4426950408889634, 6.93147180369123816490e-01, 1.90821492927058770002e-10)
        bits = (1023, 52, -1022.0)
    # |r| ≤ ln2/2: the Taylor remainder of degree d is below 0.347^(d+1)/(d+1)! (relative):
    # 1.2e-7 for d = 6 (float32's precision), 2.2e-13 for d = 10
    degree = 6 if np.dtype(dtype) == np.float32 else 10
    taylor = tuple(1.0 / math.factorial(i) for i in range(degree + 1))
    cast = np.dtype(dtype).type
    return tuple(cast(c) for c in head), bits[0], bits[1], cast(bits[2]), tuple(cast(c) for c in taylor)


def _log_constants(dtype: Any) -> tuple:
    """(√2, 1/2, 1, 2, ln 2), the series coefficients 1/(2i+1), i = 0..10, and the float's bits:
    integer view, exponent shift, bias, mantissa mask, bits of 1.0."""
    cast = np.dtype(dtype).type
    head = tuple(cast(c) for c in (1.4142135623730951, 0.5, 1.0, 2.0, 0.6931471805599453))
    # |s| ≤ 0.172: the series' remainder after s^(2d+1) is below 0.172^(2d+2)/(2d+3): 2.4e-8 for
    # d = 4, 1.8e-17 for d = 10
    series = tuple(cast(1.0 / (2 * i + 1)) for i in range(5 if np.dtype(dtype) == np.float32 else 11))
    if np.dtype(dtype) == np.float32:
        return head, series, (np.int32, 23, 127, (1 << 23) - 1, 0x3F800000)
    return head, series, (np.int64, 52, 1023, (1 << 52) - 1, 0x3FF0000000000000)


def _shift_exp(total: np.ndarray, top: np.ndarray, scale: np.ndarray, scale_bits: np.ndarray,
               head: tuple, bias: int, shift: int, lowest_n: Any, c: tuple) -> None:
    """total[l, j, b] ← exp(total[l, j, b] − top[l, b]), top[l, b] = max_j total[l, j, b] (0 where
    that is −inf: a row of no mass, whose exponentials are then all 0). ``scale`` (B,) of the
    dtype and ``scale_bits`` (its integer view) are scratch space for 2^n; the rest
    ``_exp_constants``."""
    lowest, zero_below, log2e, ln2_hi, ln2_lo = head
    rows, width, batch = total.shape
    for row in range(rows):
        for b in range(batch):
            top[row, b] = total[row, 0, b]
        for j in range(1, width):
            for b in range(batch):
                top[row, b] = max(top[row, b], total[row, j, b])
        for b in range(batch):
            if top[row, b] == -np.inf:
                top[row, b] = c[0] * 0  # 0 of the dtype
        for j in range(width):
            # exp(x) = 2^n · exp(r), n = round(x / ln 2), |r| ≤ ln2 / 2: the Taylor polynomial
            # to r^11 (``_exp_constants``); 2^n from the exponent bits of a float
            for b in range(batch):
                x = max(total[row, j, b] - top[row, b], lowest)
                n = np.floor(x * log2e + c[2] * 1)  # + 1/2
                n = max(n, lowest_n)
                r = (x - n * ln2_hi) - n * ln2_lo
                p = c[-1]
                for i in range(len(c) - 2, -1, -1):  # Horner (unrolled: c has a fixed length)
                    p = p * r + c[i]
                total[row, j, b] = p if x > zero_below else c[0] * 0
                scale_bits[b] = (np.int64(n) + bias) << shift
            for b in range(batch):
                total[row, j, b] = total[row, j, b] * scale[b]


def _log_shift(mixed: np.ndarray, top: np.ndarray, mantissa: np.ndarray, mantissa_bits: np.ndarray,
               exponent: np.ndarray, bits: np.ndarray, head: tuple, c: tuple, shift: int, bias: int,
               mask: int, one: int) -> None:
    """mixed[l, k, b] ← log(mixed[l, k, b]) + top[l, b], −inf where mixed is 0. ``bits``: mixed
    viewed as integers of its width (int32 for float32, int64 for float64), whose exponent field
    starts at bit ``shift`` with ``bias``, ``mask`` the mantissa bits and ``one`` the bits of 1.0;
    ``mantissa`` and ``exponent`` (B,) of mixed's dtype and ``mantissa_bits`` (the mantissa's
    integer view) are scratch space; ``head``, ``c``: ``_log_constants``."""
    sqrt2, half, one_f, two, ln2 = head
    rows, width, batch = mixed.shape
    for row in range(rows):
        for k in range(width):
            # x = m · 2^e with m in [1, 2): e and m from the bits of x
            for b in range(batch):
                word = np.int64(bits[row, k, b])
                exponent[b] = (word >> shift) - bias
                mantissa_bits[b] = (word & mask) | one
            for b in range(batch):
                m = mantissa[b]
                e = exponent[b]
                if m > sqrt2:  # m in [1/√2, √2): |s| ≤ 0.172 below
                    m = half * m
                    e = e + one_f
                # log m = 2 atanh(s), s = (m − 1)/(m + 1): the odd series (``_log_constants``)
                s = (m - one_f) / (m + one_f)
                z = s * s
                series = c[-1]
                for i in range(len(c) - 2, -1, -1):
                    series = series * z + c[i]
                value = two * s * series + e * ln2 + top[row, b]
                mixed[row, k, b] = value if mixed[row, k, b] > 0 else -np.inf


def _add_rows(total: np.ndarray, source: np.ndarray, rows: np.ndarray, owner: np.ndarray) -> None:
    """total[owner[i]] += source[rows[i]] for each i: a segment of a hadamard op's parts added
    into its sum (rows in order, blocks of consecutive rows, or scattered alike)."""
    width, batch = total.shape[1], total.shape[2]
    for i in range(rows.shape[0]):
        target, row = owner[i], rows[i]
        for j in range(width):
            for b in range(batch):
                total[target, j, b] += source[row, j, b]


if njit is not None:
    # fastmath only to contract multiply-adds: its other flags let LLVM assume no infinities,
    # and −inf is a value here; numpy's error
    # model: no ZeroDivisionError check per division (it keeps the loop from vectorising)
    _shift_exp = njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})(_shift_exp)
    _log_shift = njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})(_log_shift)
    _add_rows = njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})(_add_rows)

_EXP = {np.dtype(t): _exp_constants(t) for t in (np.float32, np.float64)}
_LOG = {np.dtype(t): _log_constants(t) for t in (np.float32, np.float64)}


def add_rows(total: np.ndarray, source: np.ndarray, rows: np.ndarray, owner: np.ndarray) -> None:
    """total[owner[i]] += source[rows[i]], in place; (L, K, B), (R, K, B), int64 (n,) each."""
    _add_rows(total, source, rows, owner)


def shift_exp(total: np.ndarray) -> np.ndarray:
    """Replace ``total`` (L, K, B) by exp(total − top) in place and return top (L, B), the
    per-(row, sample) maximum over K (0 where it is −inf)."""
    head, bias, shift, lowest_n, taylor = _EXP[total.dtype]
    integer = _LOG[total.dtype][2][0]
    top = np.empty((total.shape[0], total.shape[2]), dtype=total.dtype)
    scale = np.empty(total.shape[2], dtype=total.dtype)
    _shift_exp(total, top, scale, scale.view(integer), head, bias, shift, lowest_n, taylor)
    return top


def log_shift(mixed: np.ndarray, top: np.ndarray) -> None:
    """mixed (L, K, B, C-contiguous) ← log(mixed) + top[:, None, :] in place (−inf where 0)."""
    head, series, (integer, shift, bias, mask, one) = _LOG[mixed.dtype]
    batch = mixed.shape[2]
    mantissa = np.empty(batch, dtype=mixed.dtype)
    exponent = np.empty(batch, dtype=mixed.dtype)
    _log_shift(mixed, top, mantissa, mantissa.view(integer), exponent, mixed.view(integer), head, series,
               shift, bias, mask, one)
