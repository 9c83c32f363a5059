"""``python -m einc``: the same as the ``einc`` command."""

import sys

from einc.cli import main

if __name__ == "__main__":
    sys.exit(main())
