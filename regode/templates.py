"""Templates a user names instead of a file: ``--fixed mni152``.

``mni152`` is the MNI ICBM152 2009 symmetric T1 template at 1 mm, as nilearn installs it with its
package (``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``). Nothing is
downloaded at run time, and nilearn itself is not imported: its files are found on disk. nilearn
ships the template brain-extracted: it is the template for skull-stripped images. A head (with
skull) variant is not in any package this project can install offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import RegodeError
from .io import Image, read_image

TEMPLATES = {"mni152": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"}
"""template name -> its file in nilearn's data folder."""


def is_template(spec) -> bool:
    """Whether ``spec`` names a template (a file of that name, if one exists, wins)."""
    return spec is not None and str(spec).lower() in TEMPLATES and not Path(spec).is_file()


TISSUE_MAPS = ("gm", "wm")
"""the template's tissue probability maps nilearn ships beside its T1 (regode.anatomy)."""


def template_file(name: str, tissue: str | None = None) -> Path:
    """The file of template ``name`` (or of its ``tissue`` probability map, one of
    :data:`TISSUE_MAPS`), in nilearn's packaged data folder."""
    name = str(name).lower()
    if name not in TEMPLATES:
        raise RegodeError(f"unknown template {name!r}: choose from {', '.join(TEMPLATES)}")
    if tissue is not None and tissue not in TISSUE_MAPS:
        raise RegodeError(f"unknown tissue map {tissue!r}: choose from {', '.join(TISSUE_MAPS)}")
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise RegodeError(f"the {name} template comes with nilearn, which is not installed: pip install nilearn")
    filename = TEMPLATES[name] if tissue is None else TEMPLATES[name].replace("_t1_", f"_{tissue}_")
    path = Path(spec.origin).parent / "datasets" / "data" / filename
    if not path.is_file():
        raise RegodeError(f"nilearn lacks {path.name}: reinstall nilearn")
    return path


def read_template(name: str) -> Image:
    """The template ``name`` as an image (world LPS mm), named by it in messages and records."""
    image = read_image(template_file(name), what=f"template {name}")
    image.path = str(name)
    return image


TISSUE_CLASSES = {1: "CSF", 2: "GM", 3: "WM"}
"""the labels of :func:`tissue_classes`."""


def tissue_classes(name: str = "mni152") -> Image:
    """The template's tissue classes as a label image on its grid (uint8: 0 outside the brain, then
    :data:`TISSUE_CLASSES`), from the probability maps nilearn ships: in the template's brain (its
    T1 above zero), the most probable of CSF, GM and WM, with CSF = 1 - GM - WM. Labels that
    ship offline, for taking atlas labels back to a subject (``regode warp --interp label``)."""
    import torch

    t1 = read_template(name)
    gm, wm = (
        read_image(template_file(name, tissue), what=f"template {name} {tissue}").data / 255.0 for tissue in TISSUE_MAPS
    )
    csf = (1 - gm - wm).clamp(min=0)
    classes = torch.cat([csf, gm, wm], 1).argmax(1, keepdim=True) + 1
    labels = torch.where(t1.data > 0, classes, torch.zeros_like(classes)).float()
    return Image(labels, t1.grid, np.dtype(np.uint8), f"{name} tissue classes")
