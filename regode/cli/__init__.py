"""The ``regode`` command line: one module per command, each a thin call into the library.

The commands register themselves on :data:`app` when imported, in the order ``--help`` lists them
(so these imports are not sorted).
"""
# ruff: noqa: I001

from .app import app, main
from . import register, fit_field, brain_extract, warp, cohort, template, train, bench, demo  # noqa: F401  (each registers its command)

__all__ = ["app", "main"]
