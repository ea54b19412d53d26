"""Similarity and regularisation losses shared by MS-ODENet training and neural-field fitting."""

from __future__ import annotations

import torch


def mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 32, max_samples: int = 60_000) -> torch.Tensor:
    """Mutual information (nats) between intensities in [0, 1] of ``a`` and ``b`` (same shape
    ``[B, ...]``), mean over the batch, with Gaussian Parzen windows (differentiable). At most
    ``max_samples`` voxels per volume enter, on a regular stride."""
    batch = a.shape[0]
    a, b = a.reshape(batch, -1), b.reshape(batch, -1)
    step = max(1, a.shape[1] // max_samples)
    a, b = a[:, ::step], b[:, ::step]
    centers = torch.linspace(0, 1, bins, dtype=a.dtype, device=a.device)
    sigma = 0.5 / (bins - 1)

    def window(v):
        w = torch.exp(-0.5 * ((v[..., None] - centers) / sigma) ** 2)
        return w / w.sum(-1, keepdim=True).clamp(min=1e-12)

    wa, wb = window(a.clamp(0, 1)), window(b.clamp(0, 1))
    joint = wa.transpose(1, 2) @ wb / a.shape[1]  # [B, bins, bins]
    pa, pb = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    eps = 1e-10
    return (joint * (torch.log(joint + eps) - torch.log(pa @ pb + eps))).sum((1, 2)).mean()


def gradient_energy(field: torch.Tensor, spacing) -> torch.Tensor:
    """Mean squared spatial gradient ``||grad u||^2`` of a displacement field ``[B, 3, nz, ny, nx]``
    in mm (finite differences; ``spacing`` (x, y, z) in mm), dimensionless."""
    sx, sy, sz = (float(s) for s in spacing)
    dz = (field[:, :, 1:] - field[:, :, :-1]) / sz
    dy = (field[:, :, :, 1:] - field[:, :, :, :-1]) / sy
    dx = (field[..., 1:] - field[..., :-1]) / sx
    return dz.square().mean() + dy.square().mean() + dx.square().mean()
