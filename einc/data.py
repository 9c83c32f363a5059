"""``einc.data`` is ``einc.io.data`` (the path the README documents): the same module object,
so that ``import einc.data`` and ``from einc.data import ...`` keep working."""

import sys

from einc.io import data

sys.modules[__name__] = data
