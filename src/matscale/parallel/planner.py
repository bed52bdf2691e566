"""Memory per device and time per step of a training run on given hardware, before running it:
``matscale plan CONFIG --hardware NAME --devices N``.

Memory per device, in bytes (P parameters, W devices):

- **model state**: weights 4P (fp32 masters; under DeepSpeed bf16 the weights are bf16, 2P, and
  the fp32 masters and gradients live in the optimizer state), gradients 4P (2P), AdamW 8P
  (DeepSpeed: 12P, its own float32 copy of the weights besides the two moments, in float32
  training too; bf16: 16P, with fp32 gradients), the EMA of the weights 4P
  (``train.ema_decay``), DDP's gradient buckets 4P. Sharded over W: DeepSpeed stage 1 the
  optimizer state, stage 2 also the gradients, stage 3 also the weights; FSDP2 everything,
  EMA included, plus the gathered weights of the largest layer (twice: the next one is
  prefetched) — or of every layer, for conservative forces taken by autograd (kept gathered
  through the double backward: parallel/fsdp.py). ``parallel.cpu_offload`` moves the
  optimizer state (FSDP2: its shard of all state) to host memory, reported apart.
- **activations**: the bytes autograd keeps between the forward (and, for conservative forces,
  the force pass) and the backward, ``a·N + b·E`` for a batch of N atoms and E edges, with
  ``a`` and ``b`` linear in the width: measured, not assumed, by running the same architecture
  (depth, radial basis, heads, per-layer checkpointing) at widths 8 and 16 on two small
  crystals of different edge densities, counting the storages autograd saves
  (:func:`saved_bytes`). Plus one layer's worth again for the gradients in flight during the
  backward (and for the layer being recomputed under checkpointing). Against the measured
  steps of docs/training.md (width 256, 1,024 atoms, 43k edges): 3,170 MiB planned for 3,211
  measured without checkpointing, 2,908 for 2,874 per layer. Edge chunks are not modelled
  (counting saved storages does not see what chunked recomputation frees): the planner gives
  the figure without them, an upper bound, and says so.
- **the batch** (positions, edges, labels: ~100 bytes per atom and per edge) and the runtime
  (the framework's own resident memory: the hardware's ``runtime_GiB``).

Time per step: the matmul FLOPs of ``models/size.py`` (training: 6x the forward for
conservative forces, 3x for direct, one forward more under checkpointing) at a stated share
of the device's peak (``--utilisation``), plus communication at the link bandwidth without
overlap: gradients all-reduced (2(W−1)/W of their bytes) under DDP and DeepSpeed stages 1–2;
weights gathered in the forward, the force pass and the backward and gradients
reduce-scattered (4(W−1)/W) under FSDP2 and stage 3.

What it cannot know, it says: the number of edges per atom comes from the store when it
exists (its densest source: the batches that set the peak; else ``--edges-per-atom``), the
utilisation is the user's; fragmentation and the caching allocator's slack are not modelled
(``benchmarks/planner_check.py`` shows how close it comes to measured runs and to the paper's
logged run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from matscale.config import RunConfig
from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.size import TRAINING_MULTIPLIER, forward_flops, parameter_count
from matscale.parallel.plan import shards_weights

GiB = 2**30


@dataclass(frozen=True)
class Hardware:
    """One device of a cluster, and its share of the links and host."""

    name: str
    memory_GiB: float
    """Device memory (the CPU: RAM per process)."""
    tflops_fp32: float
    """Dense fp32 matmul peak (TFLOP/s)."""
    tflops_bf16: float
    """Dense bf16 matmul peak (TFLOP/s)."""
    link_GBps: float
    """Bandwidth a collective reaches per device (GB/s): NVLink within a node, the network
    across nodes, whichever bounds the collective."""
    runtime_GiB: float = 0.5
    """Memory the framework holds before the model (CUDA context, or the Python process)."""
    cores: int | None = None
    """A CPU row: the cores of the one machine whose memory and peak the row gives. The run's
    processes share that machine: each gets ``1/devices`` of its memory and of its FLOP/s.
    None: each process has a device of its own."""

    def share(self, devices: int) -> float:
        """The fraction of this row's memory and peak one of ``devices`` processes gets."""
        return 1.0 / max(devices, 1) if self.cores is not None else 1.0


#: Devices ``--hardware`` knows by name (vendor peaks; the CPU row is this machine, measured:
#: 381 GFLOP/s fp32 on 2 cores by benchmarks/train_throughput.py; 0.36 GiB: the peak RSS of
#: a training run of a width-8 model, whose state and activations are negligible).
HARDWARE: dict[str, Hardware] = {
    h.name: h
    for h in (
        Hardware("cpu-2core", 24, 0.381, 0.381, 10.0, runtime_GiB=0.36, cores=2),
        Hardware("a100-40gb", 40, 19.5, 312, 25.0),
        Hardware("a100-80gb", 80, 19.5, 312, 25.0),
        Hardware("h100-80gb", 80, 67, 989, 50.0),
        Hardware("h200", 141, 67, 989, 50.0),
        # one graphics compute die of an MI250X (Frontier), the paper's sizing runs
        Hardware("mi250x-gcd", 64, 47.9, 191.5, 25.0),
    )
}


@dataclass(frozen=True)
class ModelCosts:
    """What the planner needs of an architecture: parameters, the largest layer's
    parameters, forward FLOPs per atom and edge, the training multiplier, and activation bytes
    kept per atom and per edge (with one layer's share for the transient)."""

    parameters: int
    largest_layer: int
    flops_per_atom: float
    flops_per_edge: float
    training_multiplier: int
    saved_per_atom: float
    saved_per_edge: float
    layer_per_atom: float
    layer_per_edge: float


@dataclass
class Plan:
    """The planner's answer for one device (bytes, seconds)."""

    devices: int
    atoms: float
    edges: float
    memory: dict[str, float]
    host: dict[str, float]
    flops: float
    seconds: dict[str, float]
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> float:
        return sum(self.memory.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "atoms_per_device": self.atoms,
            "edges_per_device": self.edges,
            "memory_bytes": self.memory,
            "memory_total_GiB": self.total_bytes / GiB,
            "host_bytes": self.host,
            "flops_per_step": self.flops,
            "seconds": self.seconds,
            "assumptions": self.assumptions,
        }


def saved_bytes(model: torch.nn.Module, graph: Any, *, conservative: bool) -> int:
    """Bytes of the storages autograd keeps for the backward of one training step of
    ``model`` on ``graph`` (forward, and the force pass with ``create_graph`` for conservative
    forces), parameters excluded, each storage once: those still alive when the backward
    would start (a checkpointed region's recomputed activations are saved and freed again)."""
    import weakref

    from matscale.models.physics import predict

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: list[tuple[weakref.ref, int, int]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved.append((weakref.ref(t), storage.data_ptr(), storage.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = predict(model, graph, forces=True, create_graph=conservative)
        loss = out["energy_net"].sum() + out["forces"].pow(2).sum()
    alive = {ptr: nbytes for ref, ptr, nbytes in saved if ref() is not None}
    del loss, out
    return sum(alive.values())


def _calibration_graphs(cutoff: float) -> list[Any]:
    """Two small fcc crystals of different densities (about 2.3x the edges per atom)."""
    from ase.build import bulk

    from matscale.calc.inference import as_structure
    from matscale.data.batch import collate, graph_sample

    graphs = []
    for a, reps in ((3.6, (2, 2, 2)), (4.8, (2, 2, 3))):
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(reps)
        atoms.rattle(0.05, seed=0)
        graphs.append(collate([graph_sample(as_structure(atoms), cutoff)]))
    return graphs


def saved_coefficients(
    make: Callable[[int], torch.nn.Module], *, cutoff: float, conservative: bool, width: int
) -> tuple[float, float]:
    """Saved bytes per atom and per edge of a training step of the model ``make(width)``
    builds: measured at widths 8 and 16 on two crystals and extrapolated linearly in the
    width (every saved tensor is [atoms or edges, width or a constant])."""
    graphs = _calibration_graphs(cutoff)
    design, target = [], []
    for w in (8, 16):
        torch.manual_seed(0)
        model = make(w)
        for g in graphs:
            n, e = len(g.numbers), int(g.edge_index.shape[1])
            design.append([n * w, n, e * w, e])
            target.append(saved_bytes(model, g, conservative=conservative))
    # bytes = N (a1 H + a0) + E (b1 H + b0): four unknowns, four measurements
    solution = np.linalg.lstsq(np.array(design, float), np.array(target, float), rcond=None)[0]
    a1, a0, b1, b0 = (float(x) for x in solution)
    return a1 * width + a0, b1 * width + b0


def activation_coefficients(
    cfg: EGNNConfig, *, checkpointing: bool
) -> tuple[float, float, float, float]:
    """Saved bytes per atom and per edge of a training step of ``cfg`` with or without
    per-layer checkpointing, and one layer's bytes per atom and per edge without it
    (:func:`saved_coefficients`)."""
    from matscale.parallel.checkpointing import apply_ac

    conservative = cfg.force_head == "conservative"

    def solve(checkpoint: bool) -> tuple[float, float]:
        def make(width: int) -> torch.nn.Module:
            model = EGNN(replace(cfg, width=width))
            return apply_ac(model, whole_layers=True) if checkpoint else model

        return saved_coefficients(
            make, cutoff=cfg.cutoff, conservative=conservative, width=cfg.width
        )

    per_atom, per_edge = solve(checkpointing)
    full_atom, full_edge = solve(False) if checkpointing else (per_atom, per_edge)
    return per_atom, per_edge, full_atom / cfg.depth, full_edge / cfg.depth


def model_costs(cfg: EGNNConfig, *, checkpointing: bool = False) -> ModelCosts:
    """:class:`ModelCosts` of matscale's EGNN ``cfg`` (edge chunks are not modelled: see
    :func:`plan`)."""
    flops = forward_flops(cfg)
    saved_atom, saved_edge, layer_atom, layer_edge = activation_coefficients(
        cfg, checkpointing=checkpointing
    )
    layer_params = _largest_layer(cfg)
    return ModelCosts(
        parameters=parameter_count(cfg),
        largest_layer=layer_params,
        flops_per_atom=flops.per_atom,
        flops_per_edge=flops.per_edge,
        training_multiplier=TRAINING_MULTIPLIER[cfg.force_head] + (1 if checkpointing else 0),
        saved_per_atom=saved_atom,
        saved_per_edge=saved_edge,
        layer_per_atom=layer_atom,
        layer_per_edge=layer_edge,
    )


def _largest_layer(cfg: EGNNConfig) -> int:
    from matscale.models.size import build_on_meta

    model = build_on_meta(cfg)
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    return max([*sizes, model.embedding.weight.numel()])


def plan(
    cfg: RunConfig,
    hardware: Hardware,
    devices: int,
    costs: ModelCosts,
    *,
    edges_per_atom: float,
    utilisation: float,
) -> Plan:
    """Memory per device and time per step of ``cfg`` on ``devices`` of ``hardware``, each
    step ``data.max_atoms`` atoms per device (the sampler's bound: batches come close to it)."""
    par, t = cfg.parallel, cfg.train
    p = costs.parameters
    w = max(devices, 1)
    bf16_ds = par.backend == "deepspeed" and par.precision == "bf16"
    weights, grads = (2.0 * p, 2.0 * p) if bf16_ds else (4.0 * p, 4.0 * p)
    optimizer = 8.0 * p
    if par.backend == "deepspeed":
        # DeepSpeed's optimizer keeps a float32 copy of the weights (its "masters") whatever
        # the precision — in float32 training a second copy (its ZeRO-1/2/3 optimizers clone
        # the partition) — and under bf16 float32 gradients too
        optimizer = (16.0 if bf16_ds else 12.0) * p
    ema = 4.0 * p if t.ema_decay else 0.0
    buckets = 4.0 * p if par.backend == "ddp" and w > 1 else 0.0
    gathered = 0.0
    notes = []
    if par.backend == "deepspeed":
        stage = par.zero_stage
        optimizer /= w
        grads /= w if stage >= 2 else 1
        weights /= w if stage >= 3 else 1
    elif par.backend == "fsdp":
        weights, grads, optimizer, ema = weights / w, grads / w, optimizer / w, ema / w
        dtype_bytes = 2.0 if par.precision == "bf16" else 4.0
        if cfg.model.force_head == "conservative" and not par.explicit_forces:
            # fsdp_step_hooks keeps every layer gathered through autograd's double backward
            gathered = dtype_bytes * p
            notes.append(
                "FSDP2, conservative forces by autograd: every layer's weights gathered from "
                "the forward to the end of the backward (parallel.explicit_forces gathers "
                "one layer at a time)"
            )
        else:
            gathered = 2 * dtype_bytes * costs.largest_layer
            notes.append("FSDP2: the largest layer's weights gathered twice (prefetch)")
    host: dict[str, float] = {}
    if par.cpu_offload:
        if par.backend == "fsdp":
            host = {"weights": weights, "gradients": grads, "optimizer": optimizer}
            weights = grads = optimizer = 0.0
        else:
            host = {"optimizer": optimizer}
            optimizer = 0.0
    atoms = float(cfg.data.max_atoms)
    edges = atoms * edges_per_atom
    activations = costs.saved_per_atom * atoms + costs.saved_per_edge * edges
    transient = costs.layer_per_atom * atoms + costs.layer_per_edge * edges
    memory = {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "ema": ema,
        "ddp_buckets": buckets,
        "gathered_layer": gathered,
        "activations": activations,
        "backward_transient": transient,
        "batch": 100.0 * (atoms + edges),
        "runtime": hardware.runtime_GiB * GiB,
    }
    flops = costs.training_multiplier * (
        costs.flops_per_atom * atoms + costs.flops_per_edge * edges
    )
    peak = hardware.tflops_bf16 if par.precision == "bf16" else hardware.tflops_fp32
    compute_s = flops / (peak * hardware.share(w) * 1e12 * utilisation)
    grad_bytes = 2.0 * p if par.precision == "bf16" else 4.0 * p
    if w == 1:
        volume = 0.0
    elif shards_weights(par):
        volume = 4 * (w - 1) / w * grad_bytes
    else:
        volume = 2 * (w - 1) / w * grad_bytes
    comm_s = volume / (hardware.link_GBps * 1e9)
    if par.precision == "bf16":
        notes.append(
            "activations as measured in float32: an upper bound under bf16 autocast (the "
            "geometry and force terms stay float32)"
        )
    if par.edge_chunk:
        notes.append(
            "edge chunks are not modelled: activations are those without them, an upper bound "
            "(measured: 0.49-0.53x of that peak at width 256, docs/training.md)"
        )
    if hardware.cores is not None:
        notes.append(
            f"{w} process{'es' if w > 1 else ''} on one machine of {hardware.cores} cores and "
            f"{hardware.memory_GiB:g} GiB"
            + (", sharing its memory and its peak" if w > 1 else "")
            + (
                f": more processes than cores, each gets a fraction of a core (train with at "
                f"most {hardware.cores})"
                if w > hardware.cores
                else ""
            )
        )
    notes += [
        f"{atoms:,.0f} atoms and {edges:,.0f} edges per device per step "
        f"({edges_per_atom:.1f} edges per atom)",
        f"compute at {utilisation:.0%} of the {peak * hardware.share(w):.3g} TFLOP/s "
        f"{par.precision} peak{' per process' if hardware.cores is not None else ''}; "
        "communication not overlapped with compute",
    ]
    return Plan(
        devices=w,
        atoms=atoms,
        edges=edges,
        memory=memory,
        host=host,
        flops=flops,
        seconds={"compute": compute_s, "communication": comm_s, "step": compute_s + comm_s},
        assumptions=notes,
    )


def edges_per_atom_of(store_path: str, cutoff: float | None = None) -> float | None:
    """Directed edges per atom of a packed store, as the memory peak sees them: the mean of
    its densest source (a batch drawn from it alone is the step that sets the peak), or None
    if ``store_path`` is not a store. Counted at the store's cutoff, and scaled by the cube of
    ``cutoff`` / the store's when the model's is shorter (neighbours grow with the volume)."""
    from matscale.data.store import Store
    from matscale.errors import DataError

    try:
        store = Store(store_path)
    except (DataError, OSError):
        return None
    atoms = np.asarray(store.n_atoms, dtype=np.float64)
    edges = np.asarray(store.n_edges, dtype=np.float64)
    sources = np.asarray(store.source_ids)
    ratios = [
        edges[sources == k].sum() / atoms[sources == k].sum()
        for k in range(len(store.sources))
        if atoms[sources == k].sum() > 0
    ]
    if not ratios:
        return None
    scale = min(1.0, (cutoff / store.cutoff) ** 3) if cutoff else 1.0
    return float(max(ratios) * scale)  # a Python float: plans are written as JSON


def fits(plan_: Plan, hardware: Hardware) -> bool:
    """Whether one process's planned memory fits its share of ``hardware``: the device's
    memory, or on a CPU row its machine's RAM divided among the processes, which also holds
    what is "offloaded" to the host."""
    held = plan_.total_bytes
    if hardware.cores is not None:
        held += sum(plan_.host.values())
    return bool(held <= hardware.memory_GiB * GiB * hardware.share(plan_.devices))


def _amount(nbytes: float) -> str:
    """A memory figure in GiB, or in MiB below a tenth of one (a small model's state)."""
    if nbytes >= GiB / 10 or not math.isfinite(nbytes):
        return f"{nbytes / GiB:>10.2f} GiB"
    return f"{nbytes / 2**20:>10.2f} MiB"


def format_plan(plan_: Plan, hardware: Hardware) -> str:
    """The plan as a table of GiB and seconds, with its assumptions."""
    devices = f"{plan_.devices} device{'s' if plan_.devices > 1 else ''}"
    lines = [f"per device ({hardware.name}, {devices}):"]
    for key, value in plan_.memory.items():
        if value:
            lines.append(f"  {key:<20}{_amount(value)}")
    total = plan_.total_bytes / GiB
    available = hardware.memory_GiB * hardware.share(plan_.devices)
    if hardware.cores is not None:
        of = f"{available:.3g} ({hardware.memory_GiB:g} shared by {plan_.devices})"
    else:
        of = f"{available:g}"
    verdict = "fits" if fits(plan_, hardware) else "DOES NOT FIT"
    lines.append(f"  {'total':<20}{total:>10.2f} GiB of {of} ({verdict})")
    for key, value in plan_.host.items():
        lines.append(f"  host: {key:<14}{_amount(value)}")
    s = plan_.seconds
    work = (
        f"{plan_.flops / 1e12:,.2f} TFLOP"
        if plan_.flops >= 1e11
        else f"{plan_.flops / 1e9:.3g} GFLOP"
    )
    lines.append(
        f"step: {work} per device, {s['compute']:.3g} s compute + "
        f"{s['communication']:.3g} s communication = {s['step']:.3g} s"
    )
    lines += [f"assumes: {a}" for a in plan_.assumptions]
    if not math.isfinite(total):
        lines.append("warning: a term is not finite")
    return "\n".join(lines)
