"""Model size in closed form: parameters, matmul FLOPs per atom and per edge, and the width
that gives a target parameter count. Exact for :class:`~matscale.models.egnn.EGNN` (tests
compare with ``numel()`` sums and with ``torch.utils.flop_counter``).

FLOPs count multiply-adds of matrix products as 2 (what flop counters and MFU figures use);
elementwise work, gathers and scatters are left out (they are O(H) per edge, against O(H²)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from matscale.models.egnn import EGNN, MAX_Z, EGNNConfig


def _norm_params(cfg: EGNNConfig) -> int:
    return {"none": 0, "layer": 2 * cfg.width, "rms": cfg.width}[cfg.norm]


def _moving_layers(cfg: EGNNConfig) -> int:
    return cfg.depth - 1 if cfg.coord_update else 0


def parameter_count(cfg: EGNNConfig) -> int:
    """Exact number of trainable parameters of ``EGNN(cfg)``."""
    h, r, rh = cfg.width, cfg.n_radial, cfg.readout_hidden
    embedding = (MAX_Z + 1) * h
    edge = 3 * h * h + r * h + 2 * h  # W_centre (+bias), W_neighbour, W_radial, out (+bias)
    c = cfg.vector_channels
    node = 3 * h * h + 2 * h + c * h  # Linear(2H+C→H) + Linear(H→H), with biases
    node += 2 * c * h + 2 * c * c  # vector gates Linear(H→2C), U and V: Linear(C→C), no biases
    coord = h * h + 2 * h  # Linear(H→H) + Linear(H→1, no bias)
    layers = cfg.depth * (edge + node + _norm_params(cfg)) + _moving_layers(cfg) * coord
    readout = len(cfg.heads) * (h * rh + rh + rh + 1)
    force = h * h + 2 * h if cfg.force_head == "direct" else 0
    return embedding + r + layers + _norm_params(cfg) + readout + force


def non_embedding_parameters(cfg: EGNNConfig) -> int:
    """Parameters outside the element embedding (the N of scaling laws, as in Kaplan et al.)."""
    return parameter_count(cfg) - (MAX_Z + 1) * cfg.width


@dataclass(frozen=True)
class Flops:
    """Forward matmul FLOPs of one evaluation: ``per_atom * atoms + per_edge * edges``."""

    per_atom: int
    per_edge: int

    def total(self, atoms: int, edges: int) -> int:
        """FLOPs of a forward pass over ``atoms`` atoms and ``edges`` directed edges."""
        return self.per_atom * atoms + self.per_edge * edges


def forward_flops(cfg: EGNNConfig) -> Flops:
    """Forward matmul FLOPs per atom and per edge of ``EGNN(cfg)``."""
    h, r, rh, c = cfg.width, cfg.n_radial, cfg.readout_hidden, cfg.vector_channels
    per_atom = cfg.depth * 2 * (3 * h * h + c * h)  # node MLP: (2H+C→H) + (H→H)
    per_atom += cfg.depth * 2 * (2 * 3 * c * c)  # U v and V v: [3, C] @ [C, C] each
    per_edge_vec = cfg.depth * 2 * (h * 2 * c)  # vector gates on every edge
    per_edge = cfg.depth * 2 * (h * h + r * h) + per_edge_vec  # 2nd edge linear, radial
    if cfg.factored:
        per_atom += cfg.depth * 2 * (2 * h * h)  # W_centre h, W_neighbour h per node
    else:
        per_edge += cfg.depth * 2 * (2 * h * h)  # the same products per edge
    per_edge += _moving_layers(cfg) * 2 * (h * h + h)
    per_atom += 2 * (h * rh + rh)  # one readout head per atom
    if cfg.force_head == "direct":
        per_edge += 2 * (h * h + h)
    return Flops(per_atom=per_atom, per_edge=per_edge)


#: Matmul FLOPs of a training step in units of the forward pass's. Direct forces: forward (1)
#: and backward (2: gradients of activations and of weights). Conservative forces add the
#: force pass, −dE/dx (1: gradients of activations only), and that pass's own backward (2).
TRAINING_MULTIPLIER = {"direct": 3, "conservative": 6}


def training_flops(cfg: EGNNConfig, atoms: int, edges: int) -> int:
    """Matmul FLOPs of training steps that together processed ``atoms`` atoms and ``edges``
    edges (the C of compute-optimal scaling)."""
    return TRAINING_MULTIPLIER[cfg.force_head] * forward_flops(cfg).total(atoms, edges)


def width_for(
    params: float, *, depth: int = 3, non_embedding: bool = False, **config: object
) -> int:
    """The width whose ``EGNNConfig(width=..., depth=depth, **config)`` has the parameter count
    (with ``non_embedding``: the count outside the element embedding) closest to ``params``."""
    counter = non_embedding_parameters if non_embedding else parameter_count

    def count(width: int) -> int:
        return counter(EGNNConfig(width=width, depth=depth, **config))  # type: ignore[arg-type]

    # the count is close to a·H² + b·H: solve with three samples, then search nearby integers
    c1, c2, c3 = count(8), count(16), count(32)
    a = ((c3 - c2) / 16 - (c2 - c1) / 8) / 24
    b = (c2 - c1) / 8 - 24 * a
    c = c1 - 64 * a - 8 * b
    guess = (-b + math.sqrt(max(b * b - 4 * a * (c - params), 0.0))) / (2 * a)
    candidates = range(max(1, int(guess) - 3), int(guess) + 4)
    return min(candidates, key=lambda w: abs(count(w) - params))


#: The paper's widths at depth 3 (≈1.2M to 3.8B parameters).
PAPER_WIDTHS = (250, 800, 1100, 1700, 2500, 3400, 5400, 7700, 11000, 15000)

#: Named sizes: parameter targets at depth 3 (width from :func:`width_for`).
PRESET_PARAMS: dict[str, float] = {
    "10k": 1e4, "100k": 1e5, "1M": 1e6, "10M": 1e7, "100M": 1e8, "1B": 1e9, "5B": 5e9,
}  # fmt: skip


def preset(name: str, **config: object) -> EGNNConfig:
    """The EGNNConfig of a named size (``"10k"`` … ``"5B"``), other fields from ``config``."""
    if name not in PRESET_PARAMS:
        raise ValueError(f"unknown size {name!r}; known: {list(PRESET_PARAMS)}")
    depth = int(config.pop("depth", 3))  # type: ignore[call-overload]
    width = width_for(PRESET_PARAMS[name], depth=depth, **config)  # type: ignore[arg-type]
    return EGNNConfig(width=width, depth=depth, **config)  # type: ignore[arg-type]


def build_on_meta(cfg: EGNNConfig) -> EGNN:
    """Build the model on the meta device: shapes only, no memory, in seconds at any size."""
    with torch.device("meta"):
        return EGNN(cfg)


def scaled(cfg: EGNNConfig, width: int) -> EGNNConfig:
    """The same architecture at another width."""
    return replace(cfg, width=width)
