"""``python -m pipelines.cli``: the same as the ``riffle`` console script."""

from __future__ import annotations

from pipelines.cli import main

if __name__ == "__main__":  # not when pytest's doctest collection imports this module
    main()
