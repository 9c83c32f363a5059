"""``einc.distributed`` is ``einc.train.distributed`` (the path the README documents): the same module object,
so that ``import einc.distributed`` and ``from einc.distributed import ...`` keep working."""

import sys

from einc.train import distributed

sys.modules[__name__] = distributed
