"""The hadamard op with its elementwise work in compiled kernels (backends/numba_kernels.py).

The same numbers as ``hadamard.forward`` (float64 1e-12, float32 1e-5), computed as: the leaf
parts' matmul (as there), every other segment of the parts added into the op's sum by one kernel
call each, max, shift and exp in one kernel, the K×K matmul (torch), log and shift in one
kernel. Used where the torch backend runs with ``kernels="numba"`` (``torch_backend.KERNEL_RULES``), for
passes that do not differentiate (inference, the upward pass of sampling) on the CPU in the
batch-minor layout; everything else (autograd, max-product, CUDA) is ``hadamard.forward``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from einc.backends import numba_kernels
from einc.backends.torch_ops import TorchOpRule, hadamard
from einc.backends.torch_ops.input import DeferredLeaves
from einc.backends.torch_reads import ProductTerm
from einc.ir.plan import HadamardOp, RowRange

_DTYPES = (torch.float32, torch.float64)  # what the kernels compute in


def _rows(term: ProductTerm) -> tuple[np.ndarray, np.ndarray]:
    """A term's source rows and the output row each adds into, as int64 arrays."""
    segment = term.segment
    rows = range(segment.start, segment.stop) if isinstance(segment, RowRange) else segment.rows
    return np.asarray(rows, dtype=np.int64), np.asarray(term.owner, dtype=np.int64)


def forward(backend: Any, op: HadamardOp, params: dict[str, torch.Tensor],
            values: list[Any], max_product: bool, data: Any = None) -> torch.Tensor:
    weights = params[op.param]  # (L, k, j)
    if (max_product or torch.is_grad_enabled() or not backend.batch_minor or weights.device.type != "cpu"
            or weights.dtype not in _DTYPES):
        return hadamard.forward(backend, op, params, values, max_product, data)
    total = None  # the parts' sum, stored (L, j, B): the leaf parts' matmul, then the other segments
    deferred = set()
    for value in backend.reads.leaf_parts[id(op)]:
        leaves = values[value]
        if isinstance(leaves, DeferredLeaves):
            deferred.add(value)
            part = leaves.products(id(op))  # a fresh (L, j, B) of this op
            total = part if total is None else total.add_(part)
    terms = [term for term in backend.reads.products[id(op)] if term.segment.value not in deferred]
    if total is None:
        batch = values[terms[0].segment.value].shape[1]
        total = torch.zeros((op.rows, op.k_in, batch), dtype=weights.dtype)
    summed = total.detach().numpy()
    for term in terms:
        rows, owner = backend.kernel_rows(term, _rows)
        # the producer's value in its stored order, (rows, K, B)
        source = values[term.segment.value].detach().transpose(1, 2).numpy()
        numba_kernels.add_rows(summed, source, rows, owner)
    top = numba_kernels.shift_exp(summed)  # (L, B); summed now holds exp(P − top)
    mixed = torch.bmm(weights.detach(), total)  # (L, k, j) x (L, j, B) -> (L, k, B)
    numba_kernels.log_shift(mixed.numpy(), top)
    return mixed.transpose(1, 2)  # indexed (L, B, k)


RULE = TorchOpRule(forward=forward, backtrack=hadamard.backtrack)
