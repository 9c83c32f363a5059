"""The errors einc raises at run time: data, output paths, backends, model files, training, sizes.

Why here and not in ``ir/``: the IR holds what the compiler makes of ``.pc`` text — spans, located
diagnostics and the root ``EincError`` that carries them (``ir/diagnostics.py``), with the errors
about that text (syntax, semantics, structure). These errors are about everything else (a data
file, a GPU, a diverging run). The stages (``compiler/``, ``backends/``) and the facade (``einc/``)
all import them from this one leaf module, which imports nothing of einc but the root class, so
training code no longer reaches into the IR for its errors and no import cycle can pass through
it. ``EincError`` is re-exported so that a caller needs one import.
"""

from __future__ import annotations

from einc.ir.diagnostics import EincError

__all__ = [
    "BackendError",
    "DataError",
    "EincError",
    "ModelFileError",
    "OutputError",
    "ResourceError",
    "TrainingError",
]


class DataError(EincError):
    """Data does not fit the circuit's variables (shape, domain, file format)."""


class OutputError(DataError):
    """An output path einc cannot or will not write (a folder, read-only, in an unwritable place)."""


class BackendError(EincError):
    """A backend is unknown or unavailable on this machine."""


class ModelFileError(EincError):
    """A saved model file is missing, corrupt or of an unsupported version."""


class TrainingError(EincError):
    """Training cannot go on: the log-likelihood became non-finite (the last good model is kept)."""


class ResourceError(EincError):
    """What was asked for would not fit: a circuit or output larger than the configured limits."""
