"""Activation and gradient scale at initialisation, across widths (64 to 4096).

    .venv/bin/python benchmarks/init_scale.py

For each width (depth 3), on a batch of a periodic Cu/Au cell and an ethanol molecule: the RMS
of node features after each layer, of the per-atom energy output, of the conservative forces,
and of the gradients of a loss E + |F|² with respect to each parameter group. With unit-variance
initialisation these stay of order one from width 64 to 4096, which is what lets one learning
rate (or muP's per-group multipliers, later) serve every size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_json

from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.physics import predict
from tests.physics.structures import graph, molecular, periodic


def rms(t: torch.Tensor) -> float:
    return float(t.detach().pow(2).mean().sqrt())


def measure(width: int) -> dict:
    torch.manual_seed(0)
    model = EGNN(EGNNConfig(width=width, depth=3))
    g = graph(periodic(), molecular())
    g = g.__class__(
        **{k: (v.float() if v.dtype == torch.float64 else v) for k, v in g.__dict__.items()}
    )
    g.source.zero_()
    feats: list[float] = []
    hooks = [
        layer.register_forward_hook(lambda m, i, o: feats.append(rms(o[0])))
        for layer in model.layers
    ]
    out = predict(model, g, create_graph=True)
    loss = out["energy_net"].sum() / len(g.numbers) + out["forces"].pow(2).mean()
    loss.backward()
    for h in hooks:
        h.remove()
    groups = {"embedding": model.embedding, "layers": model.layers, "readout": model.readout}
    grads = {}
    for name, module in groups.items():
        gs = [p.grad for p in module.parameters() if p.grad is not None]
        grads[name] = rms(torch.cat([x.flatten() for x in gs]))
    return {
        "width": width,
        "node_feature_rms_per_layer": feats,
        "atom_energy_rms": rms(out["node_energy"] - model.reference_energy[0, g.numbers]),
        "force_rms": rms(out["forces"]),
        "grad_rms": grads,
    }


def main() -> None:
    widths = [int(w) for w in sys.argv[1:]] or [64, 256, 1024, 4096]
    runs = []
    for w in widths:
        r = measure(w)
        runs.append(r)
        feats = ", ".join(f"{f:.2f}" for f in r["node_feature_rms_per_layer"])
        grads = ", ".join(f"{k} {v:.2e}" for k, v in r["grad_rms"].items())
        print(
            f"width {w:>5}: node RMS per layer [{feats}], atom energy RMS "
            f"{r['atom_energy_rms']:.2f}, force RMS {r['force_rms']:.2f}; grad RMS: {grads}",
            flush=True,
        )
    write_json("init_scale", {"command": " ".join(sys.argv), "runs": runs})


if __name__ == "__main__":
    main()
