"""Similarity and regularisation losses shared by MS-ODENet, its polish and neural-field fitting,
and MIND, the hand-made modality-independent descriptor."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 32, max_samples: int = 60_000) -> torch.Tensor:
    """Mutual information (nats) between intensities in [0, 1] of ``a`` and ``b`` (same shape
    ``[B, ...]``), mean over the batch, with Gaussian Parzen windows (differentiable). At most
    ``max_samples`` voxels per volume enter, on a regular stride."""
    return MutualInformationTo(b, bins, max_samples)(a)


class MutualInformationTo:
    """:func:`mutual_information` of many images against one reference ``b`` (``[B or 1, ...]``):
    the reference's Parzen windows are computed once (MS-ODENet asks for the force against the
    same fixed level at every function evaluation)."""

    def __init__(self, b: torch.Tensor, bins: int = 32, max_samples: int = 60_000):
        flat = b.reshape(b.shape[0], -1)
        self.count, self.step = flat.shape[1], max(1, flat.shape[1] // max_samples)
        self.bins = bins
        self.wb = self._window(flat[:, :: self.step].clamp(0, 1))

    REACH = 3
    """bins on each side of a sample's nearest bin centre that its window covers"""

    def _window(self, v: torch.Tensor) -> torch.Tensor:
        """Each sample's normalised Gaussian window over the bins ``[..., bins]``: bin centres
        ``k / (bins - 1)``, sigma half a bin. Computed on the ``2 * REACH + 1`` bins around the
        nearest centre and scattered: a bin further out would weigh exp(-2 * 3.5^2) = 2e-11 of the
        nearest, below float32's resolution."""
        u = v * (self.bins - 1)  # in bins
        nearest = u.detach().round()
        bins = nearest[..., None] + torch.arange(-self.REACH, self.REACH + 1, dtype=v.dtype, device=v.device)
        w = torch.exp(-2.0 * (u[..., None] - bins) ** 2)
        w = torch.where((bins >= 0) & (bins <= self.bins - 1), w, torch.zeros((), dtype=w.dtype, device=w.device))
        w = w / w.sum(-1, keepdim=True)  # the nearest bin weighs 1 or more
        padded = torch.zeros(*w.shape[:-1], self.bins + 2 * self.REACH, dtype=w.dtype, device=w.device)
        # bins - (-REACH): column of the padded table; the padding columns only ever receive zeros
        return padded.scatter(-1, (bins + self.REACH).long(), w)[..., self.REACH : self.REACH + self.bins]

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        a = a.reshape(a.shape[0], -1)
        if a.shape[1] != self.count:
            raise ValueError(f"mutual information of {a.shape[1]} voxels against {self.count}")
        return self.of_samples(a[:, :: self.step])

    def of_samples(self, a: torch.Tensor) -> torch.Tensor:
        """The same from the only voxels that enter, ``a.reshape(B, -1)[:, ::self.step]`` (``[B, n]``):
        a caller that needs the gradient need not produce the others."""
        wa = self._window(a.clamp(0, 1))
        joint = wa.transpose(1, 2) @ self.wb / wa.shape[1]  # [B, bins, bins]
        pa, pb = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
        eps = 1e-10
        return (joint * (torch.log(joint + eps) - torch.log(pa @ pb + eps))).sum((1, 2)).mean()


def mattes_mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Mutual information (nats) between intensities in [0, 1] of two equally long sample sets
    (any shape), with cubic B-spline Parzen windows (Mattes et al.; ANTs' MI): each sample adds
    to 4 x 4 bins of the joint histogram, so the cost is linear in the samples, not in the bins.
    Differentiable with respect to both."""
    a, b = a.reshape(-1).clamp(0, 1), b.reshape(-1).clamp(0, 1)
    # bin centres 1 .. bins-2 hold [0, 1]: the kernel (support +-2 bins) never leaves the table
    pos_a, pos_b = 1 + a * (bins - 3), 1 + b * (bins - 3)

    def weights(pos):  # the cubic B-spline weights of bins floor(pos) - 1 .. floor(pos) + 2, and that first bin
        first = pos.detach().floor()
        f = pos - first
        f2, f3, g = f * f, f * f * f, 1 - f
        w = torch.stack([g * g * g, 3 * f3 - 6 * f2 + 4, 3 * (f2 + f - f3) + 1, f3], -1) / 6
        return w, first.long() - 1

    (wa, fa), (wb, fb) = weights(pos_a), weights(pos_b)
    size = bins + 1  # a value of exactly 1 puts a zero weight in bin `bins`: one spare row and column
    taps = torch.arange(4, device=a.device)
    index = ((fa * size + fb)[:, None] + (taps[:, None] * size + taps).reshape(-1)).reshape(-1)
    joint = torch.zeros(size * size, dtype=a.dtype, device=a.device).index_add(
        0, index, (wa[:, :, None] * wb[:, None, :]).reshape(-1)
    )
    joint = joint.reshape(size, size)[:bins, :bins]
    joint = joint / joint.sum()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    eps = 1e-10
    return (joint * (torch.log(joint + eps) - torch.log(pa * pb + eps))).sum()


def gradient_energy(field: torch.Tensor, spacing) -> torch.Tensor:
    """Mean squared spatial gradient ``||grad u||^2`` of a displacement field ``[B, 3, nz, ny, nx]``
    in mm (finite differences; ``spacing`` (x, y, z) in mm), dimensionless."""
    sx, sy, sz = (float(s) for s in spacing)
    dz = (field[:, :, 1:] - field[:, :, :-1]) / sz
    dy = (field[:, :, :, 1:] - field[:, :, :, :-1]) / sy
    dx = (field[..., 1:] - field[..., :-1]) / sx
    return dz.square().mean() + dy.square().mean() + dx.square().mean()


def box_mean(volume: torch.Tensor, window: int) -> torch.Tensor:
    """Means of ``volume [B, C, d, h, w]`` over cubic windows of ``window`` points wholly inside it
    (``avg_pool3d(volume, window, stride=1)``), as three running sums along the axes: about four
    times faster than the pooling on a CPU, with or without gradients."""
    for axis in (2, 3, 4):
        n = volume.shape[axis]
        sums = volume.cumsum(axis)
        sums = torch.cat(
            [
                sums.narrow(axis, window - 1, 1),
                sums.narrow(axis, window, n - window) - sums.narrow(axis, 0, n - window),
            ],
            axis,
        )
        volume = sums / window
    return volume


def local_ncc(
    a: torch.Tensor, b: torch.Tensor, window: int = 5, keep: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """Mean squared local normalised cross-correlation (in [0, 1]) of ``[B, 1, d, h, w]``
    volumes over cubic windows of ``window`` points (windows wholly inside the volumes; with
    ``keep``, a boolean ``[B, 1, d, h, w]``, the windows whose centre it keeps)."""

    w = max(1, min(window, *a.shape[2:]))
    a, b = torch.broadcast_tensors(a, b)
    # centred (NCC does not change): the running sums of box_mean stay small, and so their rounding
    a, b = a - a.detach().mean(), b - b.detach().mean()
    mu_a, mu_b, aa, bb, ab = box_mean(torch.cat([a, b, a * a, b * b, a * b], 1), w).chunk(5, 1)
    cov = ab - mu_a * mu_b
    var_a = (aa - mu_a**2).clamp(min=0)
    var_b = (bb - mu_b**2).clamp(min=0)
    ncc = cov * cov / (var_a * var_b + eps)
    if keep is None:
        return ncc.mean()
    lo = (w - 1) // 2  # the window centres of the pooled maps
    centres = keep[..., lo : lo + ncc.shape[2], lo : lo + ncc.shape[3], lo : lo + ncc.shape[4]]
    return ncc[centres].mean() if bool(centres.any()) else ncc.mean()


def lattice_jacobian(mapped: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Jacobian matrices ``[B, d-1, h-1, w-1, 3, 3]`` (world axes) of a mapping known at the
    points of a regular lattice: ``mapped [B, d, h, w, 3]`` are the images of the lattice points
    and ``step``'s columns the world vectors of one lattice step along i, j, k (forward
    differences)."""
    core = mapped[:, :-1, :-1, :-1]
    di = mapped[:, :-1, :-1, 1:] - core
    dj = mapped[:, :-1, 1:, :-1] - core
    dk = mapped[:, 1:, :-1, :-1] - core
    by_index = torch.stack([di, dj, dk], -1)  # rows: world component, columns: index axis
    return by_index @ torch.linalg.inv(step.to(mapped.dtype))


def folding_penalty(jacobian: torch.Tensor, floor: float = 0.1) -> torch.Tensor:
    """Mean of ``relu(floor - det J)``: zero where the mapping keeps orientation and does not
    compress a volume more than ``1 / floor`` times."""
    return torch.relu(floor - determinant3(jacobian)).mean()


def determinant3(m: torch.Tensor) -> torch.Tensor:
    """Determinants of 3x3 matrices ``[..., 3, 3]`` by cofactors: ``torch.linalg.det`` factorises
    every matrix (and solves with it for the gradient), several times slower on a lattice's many."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def jacobian_energy(jacobian: torch.Tensor) -> torch.Tensor:
    """Mean ``||J - I||_F^2``: the gradient energy of the displacement (dimensionless)."""
    eye = torch.eye(3, dtype=jacobian.dtype, device=jacobian.device)
    return (jacobian - eye).square().sum((-2, -1)).mean()


def bending_energy(mapped: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Mean squared second differences of a lattice mapping along each lattice axis, per mm^2
    (the non-mixed terms of the bending energy)."""
    lengths = torch.linalg.norm(step, dim=0).to(mapped.dtype)
    terms = []
    for axis, length in zip((3, 2, 1), lengths, strict=False):  # i, j, k are tensor dims w, h, d
        n = mapped.shape[axis]
        if n < 3:
            continue
        second = mapped.narrow(axis, 2, n - 2) - 2 * mapped.narrow(axis, 1, n - 2) + mapped.narrow(axis, 0, n - 2)
        terms.append(second.square().sum(-1).mean() / length**4)
    return sum(terms) if terms else mapped.new_zeros(())


def mind(volume: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND (Heinrich et al. 2012) with the six-neighbourhood: ``[B, 6, nz, ny, nx]``, each channel
    exp(-D_k / V) normalised to a maximum of 1 per voxel, D_k the patch distance (box of
    ``2 radius + 1``) to the voxel ``dilation`` away along one direction, V the mean of the D_k."""
    shifts = [
        (dilation, 0, 0),
        (-dilation, 0, 0),
        (0, dilation, 0),
        (0, -dilation, 0),
        (0, 0, dilation),
        (0, 0, -dilation),
    ]
    pad = dilation
    padded = F.pad(volume, (pad,) * 6, mode="replicate")
    nz, ny, nx = volume.shape[2:]
    distances = []
    for dz, dy, dx in shifts:
        shifted = padded[:, :, pad + dz : pad + dz + nz, pad + dy : pad + dy + ny, pad + dx : pad + dx + nx]
        d = (volume - shifted).square()
        k = 2 * radius + 1
        distances.append(F.avg_pool3d(F.pad(d, (radius,) * 6, mode="replicate"), k, stride=1))
    d = torch.cat(distances, 1)
    v = d.mean(1, keepdim=True)
    v = v.clamp(min=1e-3 * float(v.mean()) + 1e-12)
    m = torch.exp(-d / v)
    return m / m.amax(1, keepdim=True)
