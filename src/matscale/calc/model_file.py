"""The model file (``model.pt``): weights plus everything inference needs, and its loader.

A model file holds the weights (EMA when the run kept them), the model config, the inference
transform (:class:`~matscale.data.transform.GraphSettings`: cutoff, neighbour limit, heads and
the elements each head saw, dtype), the data statistics, the run config, the final metrics and
what the training cost. :func:`load_potential` rebuilds a :class:`Potential` from it.

Formats: ``matscale-model/2`` (this one). ``matscale-model/1`` files (before the transform was
saved) still load: their transform is rebuilt from the run config (``data.max_neighbours``) and
the statistics (elements per source), which is what they were trained with.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import matscale
from matscale.allocator import keep_freed_memory
from matscale.data.transform import GeometryDtype, GraphSettings
from matscale.errors import DataError
from matscale.models.egnn import EGNN, EGNNConfig, upgrade_config

#: The format written now, and the older ones :func:`load_potential` still reads.
MODEL_FORMAT = "matscale-model/2"
READABLE_FORMATS = ("matscale-model/1", MODEL_FORMAT)


@dataclass
class Potential:
    """A trained model ready for inference: the network and the transform that feeds it.

    ``info`` holds the rest of the model file (run config, statistics, metrics, training
    time, ...), for model cards and reports.
    """

    model: EGNN
    graph: GraphSettings
    info: dict[str, Any] = field(default_factory=dict)
    explicit_forces: bool = False
    """Forces and stress with the first derivative written out
    (:mod:`matscale.models.explicit_forces`) instead of by autograd: what a compiled potential
    runs (``load_potential(compile=True)``), where the model's layer allows."""

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.model.reference_energy.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the geometry fed to the network."""
        return getattr(torch, self.graph.dtype)

    @property
    def conservative(self) -> bool:
        """Forces are −∂E/∂x (energy-conserving; stress available)."""
        return self.model.config.force_head == "conservative"

    def require_stress(self, what: str = "stress") -> None:
        """Raise :class:`DataError` unless the model gives stress (``what`` names the caller's
        need: ``"NPT"``, ``"cell relaxation"``, ...)."""
        if not self.conservative:
            need = "stress needs" if what == "stress" else f"{what} needs stress, which needs"
            raise DataError(
                f"{need} a conservative model; this one has a direct force head",
                file=self.info.get("path"),
            )

    @property
    def heads(self) -> tuple[str, ...]:
        """Names of the readout heads (levels of theory)."""
        return self.graph.heads

    def to(self, device: torch.device | str) -> Potential:
        """Move the weights to ``device`` (in place); returns self."""
        self.model.to(device)
        return self


def model_file_blob(
    *,
    model_config: dict[str, Any],
    graph: GraphSettings,
    state_dict: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The dictionary a model file holds (``torch.save`` it): the format and version, the
    architecture, its config, the transform and the weights, plus ``extra`` (statistics, run
    config, metrics, training time, ...)."""
    return {
        **extra,
        "format": MODEL_FORMAT,
        "version": matscale.__version__,
        "architecture": "egnn",
        "model_config": model_config,
        "graph": graph.to_dict(),
        "state_dict": state_dict,
    }


def read_model_file(path: str | Path, *, trusted: bool = False) -> dict[str, Any]:
    """The model file's dictionary, upgraded to the current format; :class:`DataError`
    naming the file for anything that is not a readable matscale model file.

    The file is unpickled with ``weights_only=True``: tensors and plain data only, so a model
    file from elsewhere cannot run code. ``trusted=True`` allows any object, for a file
    whose pickle holds more (a model file edited by hand, say) from a source you trust."""
    from torch.torch_version import TorchVersion

    path = Path(path)
    if not path.is_file():
        raise not_a_model_file(path)
    try:
        # TorchVersion: early format-2 files recorded torch.__version__ unconverted
        with torch.serialization.safe_globals([TorchVersion]):
            blob = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a pickle of ours at all
            raise DataError(
                "not a matscale model file (unreadable pickle)", file=str(path)
            ) from None
        from matscale.train.checkpoint import is_checkpoint_name

        if is_checkpoint_name(path):
            raise DataError(
                "a training checkpoint, not a model file: `matscale export RUN_FOLDER` writes "
                "the run's model file (RUN_FOLDER/model.pt) from its last checkpoint",
                file=str(path),
            ) from None
        raise DataError(
            "the file holds objects beyond tensors and plain data, which could run code when "
            "loaded; if you trust where it came from, load it from Python with "
            "load_potential(path, trusted=True)",
            file=str(path),
        ) from None
    except Exception as exc:  # any other unpickling failure means: not a file we wrote
        raise DataError(
            f"not a matscale model file (torch.load failed: {type(exc).__name__})", file=str(path)
        ) from None
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt not in READABLE_FORMATS:
        found = f"format {fmt!r}" if fmt else "no format field"
        readable = ", ".join(READABLE_FORMATS)
        raise DataError(
            f"not a matscale model file ({found}; this matscale reads {readable})",
            file=str(path),
        )
    if fmt == "matscale-model/1":
        blob = _upgrade_v1(blob)
    return blob


def is_model_file(path: Path) -> bool:
    """Whether ``path`` is a model file matscale wrote (any readable format). Memory-mapped:
    a billion-parameter file costs no reading of its weights."""
    from torch.torch_version import TorchVersion

    try:
        with torch.serialization.safe_globals([TorchVersion]):
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable, or not tensors and plain data (a checkpoint, a config)
        return False
    return isinstance(blob, dict) and blob.get("format") in READABLE_FORMATS


def legacy_graph(
    model_config: dict[str, Any], run_config: dict[str, Any], stats: dict[str, Any]
) -> GraphSettings:
    """The transform a file or checkpoint written before transforms were saved was trained
    with: the model's cutoff and heads, the run's ``data.max_neighbours``, and per head the
    elements of its source in the statistics."""
    return GraphSettings.from_stats(
        cutoff=float(model_config["cutoff"]),
        max_neighbours=run_config.get("data", {}).get("max_neighbours"),
        heads=tuple(model_config["heads"]),
        stats=stats,
    )


def _upgrade_v1(blob: dict[str, Any]) -> dict[str, Any]:
    """A ``matscale-model/1`` file's dictionary in the current format."""
    graph = legacy_graph(blob["model_config"], blob.get("run_config", {}), blob.get("stats", {}))
    return {**blob, "format": MODEL_FORMAT, "graph": graph.to_dict(), "upgraded_from": "1"}


def not_a_model_file(path: Path) -> DataError:
    """The error for a model path that is no file: a folder says where its model file is (a
    training run's folder holds ``model.pt``), a missing path lists the shipped models."""
    if path.is_dir():
        inside = path / "model.pt"
        where = f"; its model file is {inside}" if inside.is_file() else " (and holds no model.pt)"
        return DataError(f"is a folder, not a model file{where}", file=str(path))
    from matscale.pretrained import available  # the package's models: imports this module

    shipped = ", ".join(available()) or "none"
    return DataError(f"no such model file (shipped models: {shipped})", file=str(path))


def load_potential(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    dtype: GeometryDtype | torch.dtype | None = None,
    edge_chunk: int = 0,
    compile: bool = False,
    trusted: bool = False,
) -> Potential:
    """The :class:`Potential` of a model file (``matscale export`` or a run's ``model.pt``),
    in eval mode on ``device``.

    ``dtype`` overrides the dtype the model was trained in (``"float64"`` or
    ``torch.float64`` for finite differences, phonons and tight relaxations; the weights are
    cast, nothing is retrained).

    ``edge_chunk`` > 0 computes each layer's edge terms that many edges at a time and
    recomputes them for the forces (activation checkpointing): the same numbers with memory
    bounded by a chunk instead of every edge, for structures of 10⁵ atoms and more, at the
    cost of one more forward pass.

    ``compile`` runs the model through ``torch.compile`` (dynamic shapes: one compilation for
    every size and edge count, so MD and relaxations compile once; the first call takes
    seconds to a minute, cached on disk), with the forces written out where the layer allows
    (every shipped model): ~2x the atoms/s of the eager model on 2 CPU cores at 4,000 atoms,
    the same numbers to float32 round-off. Not with ``edge_chunk``.

    ``trusted`` allows a file holding arbitrary Python objects (see
    :func:`read_model_file`)."""
    device = _device(device)
    keep_freed_memory()  # every force call frees and reallocates its edge tensors
    if compile and edge_chunk:
        raise DataError(
            "compile and edge_chunk cannot be combined (the compiled forces keep every edge); "
            "choose one",
            field="compile",
        )
    from matscale.config import ConfigError, from_dict

    blob = read_model_file(path, trusted=trusted)
    try:
        model = EGNN(from_dict(EGNNConfig, upgrade_config(blob["model_config"])))
        model.load_state_dict(blob["state_dict"])
        graph = GraphSettings.from_dict(blob["graph"])
    except (KeyError, RuntimeError, ConfigError, ValueError) as exc:
        raise DataError(
            f"model file is damaged or from an incompatible matscale ({exc})", file=str(path)
        ) from None
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")  # torch.float64 → "float64"
        if name not in ("float32", "float64"):
            raise DataError(f"dtype must be float32 or float64, got {dtype!r}", field="dtype")
        graph = replace(graph, dtype="float64" if name == "float64" else "float32")
    if graph.heads != model.config.heads or abs(graph.cutoff - model.config.cutoff) > 1e-9:
        raise DataError(
            "model file's transform disagrees with its model config (heads or cutoff)",
            file=str(path),
        )
    model.to(dtype=getattr(torch, graph.dtype)).to(device).eval()
    if edge_chunk:
        from matscale.parallel.checkpointing import apply_ac

        apply_ac(model, edge_chunk, whole_layers=False)
    for p in model.parameters():  # inference differentiates positions, never the weights
        p.requires_grad_(False)
    explicit = False
    if compile:
        explicit = _compile(model, device, path)
    info = {k: v for k, v in blob.items() if k not in ("state_dict", "graph", "model_config")}
    info["model_config"] = blob["model_config"]
    info["path"] = str(path)
    return Potential(model=model, graph=graph, info=info, explicit_forces=explicit)


def _compile(model: EGNN, device: torch.device, path: str | Path) -> bool:
    """Compile ``model``'s forward pass in place; whether its forces can be written out."""
    from matscale.models.explicit_forces import unsupported
    from matscale.parallel.plan import compile_forward, cpp_compiler

    if device.type == "cpu" and cpp_compiler() is None:
        raise DataError(
            "compile on a CPU writes C++ and needs a compiler (g++ or clang++; none found on "
            "PATH): install one, or load without compile",
            file=str(path),
        )
    compile_forward(model)
    # a direct force head has nothing to write out: its compiled forward gives the forces
    return unsupported(model.config) is None


def _device(device: torch.device | str) -> torch.device:
    """``device`` as a torch device this machine has; :class:`DataError` otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DataError(
            f"unknown device {device!r}; use cpu, cuda or cuda:N", field="device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(
            f"device {device!r} asked for, but this torch build or machine has no CUDA",
            field="device",
        )
    if dev.type not in ("cpu", "cuda"):
        raise DataError(f"device {device!r} is not supported; use cpu or cuda", field="device")
    return dev
