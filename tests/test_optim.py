"""regode.optim.Adam: the update of torch.optim.Adam, without importing torch's compiler."""

from __future__ import annotations

import torch

from regode.optim import Adam


def test_adam_matches_torch_adam():
    """Same steps as torch.optim.Adam on a least-squares problem with two parameter tensors,
    including a learning rate changed between steps and a tensor without a gradient."""
    gen = torch.Generator().manual_seed(0)
    a, target = (
        torch.randn(20, 5, generator=gen, dtype=torch.float64),
        torch.randn(20, generator=gen, dtype=torch.float64),
    )
    ours = [
        torch.zeros(5, dtype=torch.float64, requires_grad=True),
        torch.zeros(1, dtype=torch.float64, requires_grad=True),
    ]
    theirs = [t.detach().clone().requires_grad_(True) for t in ours]
    spare = torch.ones(3, requires_grad=True)  # never gets a gradient
    mine, reference = Adam([*ours, spare]), torch.optim.Adam(theirs, lr=0.1)
    for step in range(25):
        lr = 0.1 if step < 10 else 0.03
        for group in reference.param_groups:
            group["lr"] = lr
        for w, b in (ours, theirs):
            ((a @ w + b - target) ** 2).mean().backward()
        mine.step(lr)
        reference.step()
        reference.zero_grad()
    for x, y in zip(ours, theirs, strict=False):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-10, atol=1e-12)
    assert ours[0].grad is None and torch.equal(spare.detach(), torch.ones(3))
    assert float(((a @ ours[0] + ours[1] - target) ** 2).mean().detach()) < float((target**2).mean())
