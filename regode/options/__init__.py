"""Options declared once.

A config field declared with :func:`setting` carries its help text, flag, unit and valid range.
From that one declaration regode builds the command line (:func:`command`), reads config files
(:func:`read_file`: TOML, or the ``PREFIXregode.json`` a run wrote), parses a cohort manifest's
``options`` cell (:func:`parse_args`), checks values (:func:`validate`, called by each config's
``__post_init__``) and records where each setting came from (:func:`resolve`).

A setting's value comes from the highest of these layers that gives it: the command line (for a
cohort row: the row's options, then the cohort's ``--options``), then a ``--config`` file, then a
preset, then the field's default. A preset never replaces a value the user gave, whatever it is.

No torch here: ``regode --help`` builds every command from these declarations.
"""

from .schema import REQUIRED, SOURCES, Leaf, Option, build, convert, from_dict, group, leaves, setting, validate
from .settings import Resolved, Spec, read_file, resolve, to_toml

__all__ = [
    "REQUIRED",
    "SOURCES",
    "Leaf",
    "Option",
    "Resolved",
    "Spec",
    "build",
    "convert",
    "from_dict",
    "group",
    "leaves",
    "read_file",
    "resolve",
    "setting",
    "to_toml",
    "validate",
]
