"""Training cost of backpropagation through the ODE solver against torchdiffeq's adjoint method:
time per training step (median) and the process's peak resident memory, for one model kind.

    python benchmarks/adjoint_memory.py [--model rigid|bspline|dense] [--size 96] [--steps 3] [--threads N]

Each method runs in its own process so the peak memory is its own. Synthetic pairs, batch 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
import torch
from regode.odenet.config import ModelConfig, TrainConfig
from regode.odenet.model import MSODENet
from regode.odenet.train import losses, make_source
kind, size, steps, threads, adjoint = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
sys.argv[5] == "1"
torch.set_num_threads(threads)
torch.manual_seed(0)
config = TrainConfig(model=ModelConfig(kind=kind), size=size, adjoint=adjoint)
model = MSODENet(config.model)
source = make_source(config)
pairs = [source.batch(2 * i, 2) for i in range(steps)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for pair in pairs:
    start = time.perf_counter()
    loss, info = losses(model, pair, config, adjoint=adjoint)
    model.zero_grad(set_to_none=True)
    loss.backward()
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": statistics.median(times), "peak_mib": peak / 1024, "data_mib": before / 1024,
"nfe": info["nfe"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dense", choices=["rigid", "bspline", "dense"])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.model}, {args.size}^3 at 2 mm, batch 2, {args.threads} threads, median of {args.steps} steps")
    for name, flag in (("backprop", "0"), ("adjoint", "1")):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, args.model, str(args.size), str(args.steps), str(args.threads), flag],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"  {name:9s} {r['seconds']:6.2f} s/step   peak RSS {r['peak_mib']:7.0f} MiB   (after loading "
            f"data {r['data_mib']:.0f} MiB)   NFE {r['nfe']}"
        )


if __name__ == "__main__":
    main()
