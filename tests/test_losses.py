"""The fast kernels of the similarity measures and networks against direct reference versions."""

import pytest
import torch
import torch.nn.functional as F

from regode.losses import mattes_mutual_information, mutual_information


def _mi_from_tables(wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    joint = wa.T @ wb
    joint = joint / joint.sum()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    return (joint * (torch.log(joint + 1e-10) - torch.log(pa * pb + 1e-10))).sum()


def _samples():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(4000, generator=gen, dtype=torch.float64)
    b = (0.6 * a + 0.4 * torch.rand(4000, generator=gen, dtype=torch.float64)) ** 2
    # the ends of the range, and a bin centre and a bin edge of a 32-bin table
    edges = torch.tensor([0.0, 1.0, 1.0, 0.0, 15 / 31, 15.5 / 31], dtype=torch.float64)
    return torch.cat([a, edges]), torch.cat([b, edges.flip(0)])


def test_parzen_mutual_information_equals_full_gaussian_windows():
    """mutual_information computes each window on the 7 bins around the sample; the value and
    the gradient equal those of windows evaluated on every bin."""
    a, b = _samples()
    bins, sigma = 32, 0.5 / 31
    centers = torch.linspace(0, 1, bins, dtype=torch.float64)

    def window(v):
        w = torch.exp(-0.5 * ((v[:, None] - centers) / sigma) ** 2)
        return w / w.sum(1, keepdim=True)

    x = a.clone().requires_grad_(True)
    reference = _mi_from_tables(window(x), window(b))
    (grad_ref,) = torch.autograd.grad(reference, x)
    y = a.clone().requires_grad_(True)
    value = mutual_information(y[None], b[None], max_samples=10**6)
    (grad,) = torch.autograd.grad(value, y)
    assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-9)
    assert torch.allclose(grad, grad_ref, rtol=1e-6, atol=1e-9 * float(grad_ref.abs().max()))


def test_mattes_mutual_information_equals_dense_bspline_tables():
    """mattes_mutual_information adds each sample to its 4 x 4 bins in closed form; the value and
    the gradient equal those of the cubic B-spline kernel evaluated at every bin, values of
    exactly 0 and 1 included."""
    a, b = _samples()
    bins = 32

    def table(v):
        d = ((1 + v * (bins - 3))[:, None] - torch.arange(bins, dtype=v.dtype)).abs()
        return torch.where(d < 1, 2 / 3 - d**2 + d**3 / 2, (2 - d).clamp(min=0) ** 3 / 6)

    x = a.clone().requires_grad_(True)
    reference = _mi_from_tables(table(x), table(b))
    (grad_ref,) = torch.autograd.grad(reference, x)
    y = a.clone().requires_grad_(True)
    value = mattes_mutual_information(y, b)
    (grad,) = torch.autograd.grad(value, y)
    assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-9)
    assert torch.allclose(grad, grad_ref, rtol=1e-6, atol=1e-9 * float(grad_ref.abs().max()))


@pytest.mark.parametrize("shape,stride", [((1, 8, 6, 7, 5), 1), ((1, 8, 9, 10, 11), 2), ((2, 3, 6, 6, 6), 1)])
def test_networks_convolution_equals_pytorch(shape, stride):
    """The networks' Conv3d (oneDNN's kernel forced on a CPU) gives F.conv3d's outputs and
    gradients; float64 takes PyTorch's own path."""
    from regode.odenet.networks import Conv3d

    torch.manual_seed(0)
    conv = Conv3d(shape[1], 4, 3, stride, 1)
    x = torch.randn(*shape, requires_grad=True)
    out = conv(x)
    reference = F.conv3d(x, conv.weight, conv.bias, stride, 1)
    assert out.shape == reference.shape
    assert torch.allclose(out, reference, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (x, conv.weight, conv.bias))
    grads_ref = torch.autograd.grad(reference.square().sum(), (x, conv.weight, conv.bias))
    for g, r in zip(grads, grads_ref):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    double = conv.double()(x.detach().double())
    assert double.dtype == torch.float64
    assert torch.allclose(double.float(), reference.detach(), atol=1e-5)
