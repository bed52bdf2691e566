"""The typed configuration tree of a run, YAML round-trips and dotted-key overrides.

``RunConfig`` = ``DataConfig`` + ``EGNNConfig`` (model) + ``TrainConfig`` + ``ParallelConfig``.
Every field has a docstring (shown by ``matscale train --help-config``); the resolved tree is
saved with every checkpoint and exported model. Overrides from the command line use dotted
keys with values parsed as YAML: ``train.lr=3e-4 model.width=256 data.holdout_families=[surface]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from matscale.errors import ConfigError
from matscale.models.egnn import EGNNConfig
from matscale.validation import check_config

__all__ = ["ConfigError", "DataConfig", "ParallelConfig", "RunConfig", "TrainConfig"]


@dataclass(kw_only=True)
class DataConfig:
    """Which structures a run reads and how it batches them."""

    store: str = "data/store-default"
    """Store directory (made by ``matscale data pack``)."""
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)
    """Train / validation / test fractions (the paper: 90/5/5)."""
    split_seed: int = 0
    """Seed of the random split (fixed across a sweep, so test sets agree)."""
    fraction: float = 1.0
    """Share of the training split used; smaller fractions are nested in larger ones."""
    holdout_families: tuple[str, ...] = ()
    """Families removed from training and validation and reported on their own."""
    max_atoms: int = 1024
    """Most atoms per batch per process."""
    max_edges: int | None = None
    """Most edges (at the store's cutoff) per batch per process; None: no bound."""
    mixture: dict[str, float] | None = None
    """Relative sampling weight per source; None samples in proportion to size."""
    max_neighbours: int | None = None
    """Nearest neighbours kept per atom (the paper: 50); None keeps all within the cutoff."""
    workers: int = 0
    """DataLoader processes that build graphs (0: in the training process)."""
    val_max_structures: int = 2000
    """Validation structures evaluated at each evaluation (a fixed subset of the split)."""


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation, loss, schedule, evaluation and checkpoints."""

    steps: int = 2000
    """Optimizer steps (the run stops at ``steps`` or ``max_minutes``, whichever comes first)."""
    max_minutes: float | None = None
    """Wall-clock budget of this invocation: the run stops at ``steps`` or here, whichever
    comes first (``schedule="cosine-time"`` also ends its decay here)."""
    lr: float = 5e-3
    """Peak learning rate. 5e-3 measured best for the default EGNN on 2 CPU cores
    (docs/peers.md, round 3: 0.67x the force error of 2e-3 at 2 minutes, 0.69x / 0.85x on
    metals / molecules at 5); larger models usually want less (the scaling presets set it)."""
    min_lr_ratio: float = 0.01
    """Final learning rate as a share of ``lr`` (cosine)."""
    warmup_steps: int = 100
    """Linear warm-up from 0 to ``lr``."""
    schedule: Literal["cosine", "cosine-time", "constant", "plateau"] = "cosine-time"
    """``cosine-time`` (default): warm-up, then a cosine decay over whichever of ``steps`` and
    ``max_minutes`` ends first, so a run cut by the clock ends annealed whatever the
    machine's speed (a resumed run anneals what is left within its new budget); without
    ``max_minutes`` it is ``cosine``, a decay over ``steps`` that the clock may cut mid-way;
    ``constant``; or the paper's reduce-on-plateau on the validation loss (factor 0.5,
    patience in evaluations, floor ``lr · min_lr_ratio``). At equal steps the two cosines
    gave the same force error at the demo's settings (150 / 152 meV/Å at step 1,500, the
    time-annealed one with 0.89x the energy error): what the clock decides is how many steps
    a run gets, and only ``cosine-time`` ends annealed whatever that number (docs/training.md)."""
    plateau_patience: int = 5
    """Evaluations without improvement before ``plateau`` halves the learning rate."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (not applied to biases, norms and embeddings)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's β1, β2."""
    grad_clip: float | None = 10.0
    """Clip the global gradient norm to this; None: no clipping."""
    accumulation: int = 1
    """Micro-batches per optimizer step (global batch = processes × accumulation × batch)."""
    ema_decay: float | None = 0.99
    """Exponential moving average of the weights used for evaluation and export; None: off.
    Ramped up from the start (``train.step.ema_decay_at``): 0.18 after one step, 0.9 after 80,
    0.99 from step 890 on."""
    loss: Literal["mae", "mse", "huber"] = "mae"
    """Error function of every target (the paper: MAE)."""
    force_loss: Literal["mae", "mse", "huber"] | None = None
    """Error function of the forces alone (None: ``loss``): ``mse`` with ``loss=mae`` weighs
    large force errors (far from equilibrium) without giving energies an MSE."""
    huber_delta: float = 0.01
    """Huber's transition point, in the target's units (eV/atom, eV/Å, eV/Å³)."""
    energy_weight: float = 1.0
    """Weight of the per-atom energy error (eV/atom)."""
    force_weight: float = 1.0
    """Weight of the force error (eV/Å, per component)."""
    force_weighting: Literal["uniform", "magnitude"] = "uniform"
    """``magnitude``: each atom's force error weighted by 1 + |F| / mean |F| of its batch (the
    large-force tail counts more, for extrapolation far from equilibrium); ``uniform``: every
    force component alike."""
    stress_weight: float = 0.0
    """Weight of the stress error (eV/Å³, per component), on structures that carry stress."""
    eval_every: int = 200
    """Steps between validation evaluations (and at the end)."""
    log_every: int = 20
    """Steps between TensorBoard points of the training metrics (``metrics.jsonl`` has a row
    for every step: the exact record of what was seen)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (and at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept; older ones are deleted after a newer one is safely written."""
    seed: int = 0
    """Seed of model initialisation and sampling."""
    max_bad_steps: int = 10
    """A step whose loss or gradient is not finite is skipped (counted in the log and the
    summary); this many in a row stop the run, naming the step and the batch's structures."""
    init_from: str | None = None
    """Fine-tuning: a trained model (a model file or a shipped model's name) to start from.
    Its architecture is used (``model.*`` is not) and its heads kept; each source of the
    store tunes the head of its name or gets a new one (:mod:`matscale.train.finetune`)."""
    freeze: Literal["none", "backbone"] = "none"
    """Fine-tuning: ``backbone`` trains the readout heads only (the embedding and interaction
    layers stay as trained), which needs few structures; ``none`` trains everything."""


@dataclass(kw_only=True)
class ParallelConfig:
    """How the plain model is distributed, in which precision, with what checkpointing."""

    backend: Literal["none", "ddp", "fsdp", "deepspeed"] = "none"
    """``none`` (one process), ``ddp`` (data parallel over torchrun's processes), ``fsdp``
    (FSDP2: parameters, gradients and optimizer state sharded per layer, ZeRO-3) or
    ``deepspeed`` (ZeRO stage ``zero_stage``; needs the ``deepspeed`` extra)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage: 1 optimizer state, 2 + gradients, 3 + parameters (direct forces
    only; conservative forces with sharded parameters go through ``fsdp``)."""
    cpu_offload: bool = False
    """Keep sharded parameters and optimizer state (fsdp) or optimizer state (deepspeed) in
    CPU memory."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Network arithmetic; geometry, forces, stress and loss reductions stay float32."""
    threads: int | None = None
    """Intra-op threads per process (None: torch's default, all cores / processes)."""
    activation_checkpointing: bool = False
    """Recompute each interaction layer's activations in the backward pass (less memory,
    more time); correct under conservative forces' double backward."""
    edge_chunk: int = 0
    """Checkpoint each layer's edge terms in chunks of this many edges (0: off), alone or
    inside whole-layer checkpointing, for graphs whose edges dominate memory."""
    explicit_forces: bool = False
    """Conservative forces and stress from a backward pass written out as tensor code
    (``models/explicit_forces.py``) instead of autograd's double backward: the same numbers
    to float32 round-off in fewer passes over the edge tensors, and the form ``compile`` can
    fuse. The default layer only (no norm, coordinate or vector channels; SiLU), and not with
    fsdp, ZeRO-3 or activation checkpointing, which act on the layers' own forward passes."""
    compile: bool = False
    """``torch.compile`` the model's forward pass (with conservative forces it needs
    ``explicit_forces``: autograd's double backward cannot be compiled). The first steps
    compile (minutes on a CPU; cached on disk for later runs); needs a C++ compiler on a CPU."""
    timeout_s: float = 600.0
    """Seconds a process waits in a collective for the others before the run fails: the
    bound on how long a rank that died or hangs can hold up the rest (a failing rank also
    tells the others at once; this is the backstop)."""


@dataclass(kw_only=True)
class RunConfig:
    """Everything that defines a training run."""

    name: str = "run"
    """Run name: its directory is ``out_dir/name``."""
    out_dir: str = "data/runs"
    """Where run directories go (beside the stores in ``data/``, as ``matscale demo`` and
    ``finetune`` put them; it was ``runs`` for ``train`` alone)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: EGNNConfig = field(default_factory=EGNNConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    @property
    def run_dir(self) -> Path:
        """``out_dir / name``."""
        return Path(self.out_dir) / self.name


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass tree as plain dicts, lists and scalars (YAML- and JSON-safe)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        else:
            out[f.name] = value
    return out


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking names and types; unknown keys fail."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_named(where)}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{_named(where)}: unknown keys {sorted(unknown)}; known: {sorted(names)}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{_named(where)}: {exc}") from exc


def _named(where: str) -> str:
    """The prefix of an error: a section (``train.``) or a file (``sweep.yaml: ``) without
    its separator, or ``config``."""
    return where.rstrip(". :") or "config"


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` (converting lists to tuples, ints to floats)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{where}.")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, where) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def load(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply dotted
    ``key=value`` overrides; every value is checked against its range
    (:func:`matscale.validation.check_config`)."""
    try:
        cfg = load_tree(RunConfig, path, overrides)
    except ConfigError as exc:
        if path is not None and "unknown keys" in str(exc) and _is_sweep(Path(path)):
            raise ConfigError(
                f"{path} is a sweep config (base, sizes, ...), not a run config: give it to "
                "`matscale sweep plan` or `matscale sweep run`"
            ) from None
        raise
    check_config(cfg)
    return cfg


def _is_sweep(path: Path) -> bool:
    """Whether the YAML file ``path`` holds a sweep config (its top-level keys)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"base", "sizes"} <= set(data)


def load_tree(
    cls: type, path: str | Path | None, overrides: list[str] | tuple[str, ...], where: str = ""
) -> Any:
    """Dataclass ``cls`` from a YAML file (or its defaults when ``path`` is None) with dotted
    ``key=value`` overrides; errors name the file and key (prefixed by ``where``)."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeys) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML config (not UTF-8 text)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections (data:, model:, train:, ...), got "
                f"{type(data).__name__}"
            )
    set_dotted(data, overrides)
    return from_dict(cls, data, where)


def set_dotted(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to nested dicts in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-3)")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = _yaml_problem(exc)
            raise ConfigError(f"override {item!r}: not a YAML value ({problem})") from None


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last
    one silently, and a config edited in two places would run with whichever came later."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what, and where (line and column, counted from 1)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or type(exc).__name__}{where}"


def with_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """A copy of ``cfg`` with dotted overrides applied and checked."""
    data = to_dict(cfg)
    set_dotted(data, overrides)
    out = from_dict(RunConfig, data)
    check_config(out)
    return out


def dump(cfg: RunConfig) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted key, default and docstring (the CLI's --help-config)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    source = inspect.getsource(cls)
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    lines = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            lines += describe(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            continue
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        lines.append(f"{prefix}{f.name} = {default!r}: {docs.get(f.name, '')}")
    return lines
