"""Rotations: matrices from rotation vectors (Rodrigues) and from ITK's Euler angles, back to
rotation vectors, cross-product matrices and the right Jacobian of SO(3). Batched torch tensors,
differentiable; angles in radians."""

from __future__ import annotations

import torch


def skew(v: torch.Tensor) -> torch.Tensor:
    """The cross-product matrices ``[..., 3, 3]`` of vectors ``[..., 3]``: ``skew(v) @ w = v x w``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)


def right_jacobian_inverse(rotvec: torch.Tensor) -> torch.Tensor:
    """J_r^-1 of SO(3) at ``rotvec [B, 3]``: R(phi + J_r^-1 w dt) = R(phi) exp([w] dt)."""
    angle = rotvec.norm(dim=-1)[:, None, None]
    k = skew(rotvec)
    small = angle < 1e-3
    safe = torch.where(small, torch.ones_like(angle), angle)
    coef = torch.where(
        small, 1 / 12 + angle**2 / 720, 1 / safe**2 - (1 + torch.cos(safe)) / (2 * safe * torch.sin(safe))
    )
    return torch.eye(3, dtype=rotvec.dtype, device=rotvec.device) + 0.5 * k + coef * (k @ k)


def rotvec_from_matrix(r: torch.Tensor) -> torch.Tensor:
    """The rotation vector ``[3]`` (float64, radians) of a rotation matrix ``[3, 3]``."""
    from scipy.spatial.transform import Rotation  # scipy.spatial costs 0.3 s to import: only here

    return torch.as_tensor(Rotation.from_matrix(r.detach().cpu().numpy()).as_rotvec(), dtype=torch.float64)


def rotation_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[B, 3, 3]`` from rotation vectors ``[B, 3]`` (axis * angle in radians), Rodrigues."""
    angle = rotvec.norm(dim=-1, keepdim=True)[..., None]  # [B, 1, 1]
    k = skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    small = angle < 1e-4
    safe = torch.where(small, torch.ones_like(angle), angle)
    # sin(a)/a and (1 - cos(a))/a^2, with Taylor series near zero so gradients stay finite
    s = torch.where(small, 1 - angle**2 / 6, torch.sin(safe) / safe)
    c = torch.where(small, 0.5 - angle**2 / 24, (1 - torch.cos(safe)) / safe**2)
    return eye + s * k + c * (k @ k)


def euler_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[B, 3, 3]`` from angles about x, y, z (radians), composed as ITK's
    Euler3DTransform does by default: ``R = Rz @ Rx @ Ry``."""
    ax, ay, az = angles.unbind(-1)
    one, zero = torch.ones_like(ax), torch.zeros_like(ax)

    def mat(*rows):
        return torch.stack(rows, dim=-1).reshape(*angles.shape[:-1], 3, 3)

    rx = mat(one, zero, zero, zero, ax.cos(), -ax.sin(), zero, ax.sin(), ax.cos())
    ry = mat(ay.cos(), zero, ay.sin(), zero, one, zero, -ay.sin(), zero, ay.cos())
    rz = mat(az.cos(), -az.sin(), zero, az.sin(), az.cos(), zero, zero, zero, one)
    return rz @ rx @ ry
