"""File boundary: images and ITK/ANTs transform files, read and written through SimpleITK."""

from .images import Image, check_room, read_grid, read_image, write_image
from .transforms import load_transform, load_transform_chain, parse_transform_spec, save_transform

__all__ = [
    "Image",
    "check_room",
    "read_grid",
    "read_image",
    "write_image",
    "load_transform",
    "load_transform_chain",
    "parse_transform_spec",
    "save_transform",
]
