"""The version of regode (one place; the package and every JSON record read it)."""

__version__ = "0.2.0"
