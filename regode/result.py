"""A registration's result, whatever made it: the fixed -> moving mapping ``linear(field(x))``,
ANTs' ``-t PREFIX1Warp.nii.gz -t PREFIX0GenericAffine.mat``."""

from __future__ import annotations

from dataclasses import dataclass

from .transforms import Affine, Compose, DisplacementField, Transform


@dataclass
class Result:
    linear: Affine
    """the linear part (initial transform, rigid or affine stages), fixed -> moving."""
    field: DisplacementField | None
    """the deformable part on the fixed working grid (applied first to fixed points), or None."""
    stats: dict
    """what the JSON record gets: timings, function evaluations, fit records, ..."""
    inverse_field: DisplacementField | None = None
    """the deformable part's inverse, when the method knows it (else a fixed-point inverse)."""

    @property
    def transform(self) -> Transform:
        return Compose([self.linear, self.field]) if self.field is not None else Compose([self.linear])

    def inverse_transform(self, iterations: int = 30) -> Transform:
        """The moving -> fixed mapping ``field^-1(linear^-1(y))``: the deformable part's inverse the
        method knows, else its fixed-point inverse (``iterations`` steps at most)."""
        if self.field is None:
            return Compose([self.linear.inverse()])
        inverse = self.inverse_field if self.inverse_field is not None else self.field.inverse(iterations)
        return Compose([inverse, self.linear.inverse()])
