"""``python -m regode.cli``: the console script."""

from . import main

main()
