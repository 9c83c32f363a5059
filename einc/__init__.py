"""einc — the Einsum circuit compiler for probabilistic circuits.

>>> import einc
>>> model = einc.compile("examples/nltcs.pc", backend="torch", dtype="float32", seed=0)  # doctest: +SKIP
>>> history = model.fit(train, valid=valid, epochs=5)                                     # doctest: +SKIP
>>> model.log_likelihood(test).mean()                                                     # doctest: +SKIP
"""

from einc.backends.base import available_backends
from einc.compiler.pipeline import CompileOptions
from einc.ir.diagnostics import EincError, PcSemanticError, PcSyntaxError, StructureError
from einc.errors import BackendError, DataError, ModelFileError, OutputError, ResourceError, TrainingError
from einc.tools.compare import BackendReport, compare_backends
from einc.mixture import MixtureModel, fit_mixture
from einc.loading import load
from einc.model import Model, compile

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendReport",
    "CompileOptions",
    "MixtureModel",
    "compare_backends",
    "fit_mixture",
    "DataError",
    "EincError",
    "Model",
    "ModelFileError",
    "OutputError",
    "PcSemanticError",
    "PcSyntaxError",
    "ResourceError",
    "StructureError",
    "TrainingError",
    "available_backends",
    "compile",
    "load",
]
