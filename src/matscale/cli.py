"""``matscale <verb>``: parses arguments and dispatches; the work lives in the packages."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, NoReturn

from matscale.arguments import non_negative_int
from matscale.bench.commands import add_verbs as add_bench_verbs
from matscale.calc.commands import add_verbs as add_calc_verbs
from matscale.data.generate.relabel import CHUNK as RELABEL_CHUNK
from matscale.data.generate.run import PRESETS as GENERATE_PRESETS
from matscale.data.generate.teacher import TEACHERS
from matscale.data.readers import DATA_SUFFIXES, add_reader_args, parse_reader_options
from matscale.errors import (
    ConfigError,
    CorruptShardError,
    DataError,
    ExtrapolationWarning,
    RunInterrupted,
    SimulationError,
    TrainingError,
)
from matscale.helpformat import DefaultsHelp
from matscale.parallel.commands import add_verbs as add_plan_verbs
from matscale.parallel.distributed import launch_position
from matscale.pretrained.commands import add_verbs as add_model_verbs
from matscale.scaling.commands import add_verbs as add_scaling_verbs
from matscale.signals import EXIT_INTERRUPTED

#: A dotted ``KEY=VALUE`` override on the command line (``train.lr=1e-3``).
OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=.*", re.DOTALL)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``matscale`` console script; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may follow options (`train run.yaml --no-progress train.lr=1e-3`):
    # argparse fills a list of positionals once, and hands back the later ones unparsed
    late = [x for x in extra if OVERRIDE.fullmatch(x)]
    unknown = [x for x in extra if x not in late or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if late:
        args.overrides = [*args.overrides, *late]
    args.command_line = " ".join(["matscale", *(sys.argv[1:] if argv is None else argv)])
    if not hasattr(args, "run"):
        parser.print_help()
        return 1
    position = launch_position()
    several = position.world > 1
    try:
        with warnings.catch_warnings():
            warnings.showwarning = functools.partial(_show_warning, rank=position.rank)
            code = int(args.run(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
    except Exception as exc:
        reported = _report(exc)
        if several:
            # Leave before `exc` is released: its frames hold the failed run's process group,
            # whose teardown can wait forever on a peer that is gone (seen with gloo). An error
            # we do not report as one line still gets its traceback.
            if reported is None:
                traceback.print_exc()
            _leave(1 if reported is None else reported)
        if reported is None:
            raise
        code = reported
    if several:
        _leave(code)  # gloo can abort at interpreter exit even after a correct run
    return code


def _report(exc: Exception) -> int | None:
    """Print ``exc`` as the one line a user's mistake or a stopped run deserves and return the
    exit code; ``None`` for anything else (a bug: its traceback is the useful report)."""
    if isinstance(exc, CorruptShardError):  # met by any verb reading a store, as --verify
        print(f"matscale: error: {exc}", file=sys.stderr)
        return 3
    if isinstance(exc, (DataError, ConfigError)):
        print(f"matscale: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, (TrainingError, SimulationError)):  # stopped, and says why (non-finite)
        print(f"matscale: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, RunInterrupted):  # a signal: the checkpoint is written, rerun to resume
        print(f"matscale: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        # the reader of our output left (`matscale data info STORE | head`): not an error;
        # point stdout at /dev/null so that the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if isinstance(exc, OSError):  # a path that cannot be read or written: its name and why
        print(f"matscale: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return None


_SHOW_WARNING = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
    *,
    rank: int = 0,
) -> None:
    """matscale's own warnings as one line to a user (``matscale: warning: ...``), not with
    the source line that raised them, and on rank 0 only: every rank of a multi-process run
    sees the same structures (a domain run's ghosts, a replicated evaluation). Anything else
    as Python shows it."""
    if not issubclass(category, ExtrapolationWarning):
        _SHOW_WARNING(message, category, filename, lineno, file, line)
    elif rank == 0:
        print(f"matscale: warning: {message}", file=file or sys.stderr)


def _leave(code: int) -> NoReturn:
    """End a process of a multi-process run now, with ``code``, skipping interpreter teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that left: nothing more to say to it
            pass
    os._exit(code)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="matscale", description=__doc__)
    verbs = p.add_subparsers(title="verbs")
    demo = verbs.add_parser(
        "demo",
        help="generate the default data, train the default model on it, report its errors",
        formatter_class=DefaultsHelp,
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where raw files and the store go",
    )
    demo.add_argument("--small", action="store_true", help="a few hundred structures (seconds)")
    demo.add_argument(
        "--workers", type=non_negative_int, default=0, help="processes (0: every core)"
    )
    demo.set_defaults(run=_demo)

    tr = verbs.add_parser("train", help="train a model on a store (one process or torchrun)")
    tr.add_argument(
        "config",
        nargs="?",
        type=Path,
        default=None,
        help="YAML run config (default: the built-in defaults)",
    )
    tr.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.lr=1e-3 model.width=256",
    )
    tr.add_argument("--help-config", action="store_true", help="list every config key")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(run=_train)

    ft = verbs.add_parser(
        "finetune",
        help="fine-tune a trained or shipped model on a store (a new head, or the head of the "
        "store's source)",
    )
    ft.add_argument("model", help="model file (model.pt) or a shipped model's name")
    ft.add_argument("store", type=Path, help="packed store of the new data")
    ft.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the fine-tuning defaults "
        + " ".join(f"{k}={v}" for k, v in FINETUNE_DEFAULTS.items()),
    )
    ft.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train the readout heads only (train.freeze=backbone)",
    )
    ft.add_argument(
        "--replay",
        type=Path,
        metavar="STORE",
        help="also train on this store of pretraining data (sources the model has heads for), "
        "so the old heads are not forgotten",
    )
    ft.add_argument(
        "--replay-share",
        type=float,
        default=None,
        help=f"share of each epoch drawn from the --replay store (default {REPLAY_SHARE})",
    )
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.set_defaults(run=_finetune)

    ex = verbs.add_parser("export", help="write the inference file of a run's last checkpoint")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/model.pt")
    ex.set_defaults(run=_export)

    data = verbs.add_parser("data", help="generate, pack, merge and inspect datasets")
    dverbs = data.add_subparsers(title="data verbs")
    g = dverbs.add_parser(
        "generate",
        help="label structures with EMT, GFN2-xTB, GFN1-xTB or a teacher potential",
        formatter_class=DefaultsHelp,
    )
    g.add_argument(
        "--out", type=Path, default=Path("data/raw"), help="folder for OUT/<source>/chunk-*"
    )
    g.add_argument(
        "--preset",
        choices=sorted(GENERATE_PRESETS),
        default="default",
        help="default: the demo's three sources; small: a few hundred structures; "
        "teacher: crystals across 84 elements labelled by SevenNet-0 (extra `teachers`); "
        "foundation: default + teacher + GFN2-xTB molecules with Si, P, S, Cl, Br",
    )
    g.add_argument(
        "--small",
        action="store_const",
        const="small",
        dest="preset",
        help="same as --preset small (a few hundred structures, for tests)",
    )
    g.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="SOURCE=N",
        help="structures for one source, overriding the preset (repeatable; 0 leaves that "
        "source alone)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the structures drawn")
    g.add_argument("--workers", type=non_negative_int, default=0, help="processes (0: every core)")
    g.set_defaults(run=_generate)

    lb = dverbs.add_parser(
        "label",
        help="label structures you have (files or folders) with a teacher potential",
        formatter_class=DefaultsHelp,
    )
    lb.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="files or directories (searched for " + ", ".join(DATA_SUFFIXES) + ")",
    )
    lb.add_argument("--out", type=Path, required=True, help="folder for OUT/<teacher>/chunk-*")
    lb.add_argument(
        "--teacher",
        choices=[t.source for t in TEACHERS],
        default=TEACHERS[0].source,
        help="the teacher whose labels (and source, head) the structures get (extra `teachers`)",
    )
    lb.add_argument("--chunk", type=int, default=RELABEL_CHUNK, help="structures per file and task")
    lb.add_argument("--workers", type=non_negative_int, default=0, help="processes (0: every core)")
    lb.set_defaults(run=_label)

    k = dverbs.add_parser(
        "pack", help="stream files into a sharded store", formatter_class=DefaultsHelp
    )
    k.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="files or directories (searched for " + ", ".join(DATA_SUFFIXES) + ")",
    )
    k.add_argument("--out", type=Path, required=True, help="store directory")
    k.add_argument(
        "--cutoff",
        type=float,
        default=5.0,
        help="radius (Å) at which neighbours are counted and the shortest contacts recorded: "
        "the largest model.cutoff a run on the store may have",
    )
    k.add_argument("--shard-mb", type=float, default=64.0, help="target shard size (MiB)")
    k.add_argument(
        "--require",
        default="energy",
        help="comma-separated labels each record must have (energy,forces,stress)",
    )
    k.add_argument(
        "--max-force",
        type=float,
        default=100.0,
        help="skip structures with a force above this (eV/Å); 0 keeps all",
    )
    add_reader_args(k)
    k.add_argument("--source", default=None, help="source name for records that carry none")
    k.add_argument("--workers", type=non_negative_int, default=0, help="processes (0: every core)")
    k.add_argument(
        "--part",
        type=str,
        default="0/1",
        metavar="I/N",
        help="pack part I of N (several nodes), then run `matscale data merge`",
    )
    k.add_argument("--overwrite", action="store_true", help="replace an existing store")
    k.set_defaults(run=_pack)

    m = dverbs.add_parser("merge", help="merge the parts packed by several nodes")
    m.add_argument("store", type=Path)
    m.set_defaults(run=lambda a: _print_info(_merge(a.store)))

    c = dverbs.add_parser(
        "combine",
        help="one store read as the union of others (hard links, no copy), e.g. a model's "
        "store and new data to continue its training on",
    )
    c.add_argument("stores", type=Path, nargs="+", help="packed stores, in order")
    c.add_argument("--out", type=Path, required=True, help="the combined store")
    c.add_argument(
        "--keep-split",
        metavar="MODEL",
        default=None,
        help="the first store keeps the train/val/test split and held-out families MODEL (a "
        "model file or shipped name) was trained with on it, so that continuing MODEL's "
        "training never trains on its validation and test structures; the other stores are "
        "split by the run",
    )
    c.set_defaults(run=_combine)

    i = dverbs.add_parser("info", help="print a store's statistics")
    i.add_argument("store", type=Path)
    i.add_argument(
        "--verify", action="store_true", help="check every shard's and index array's checksum"
    )
    i.set_defaults(run=_info)
    add_scaling_verbs(verbs)
    add_calc_verbs(verbs)
    add_bench_verbs(verbs)
    add_model_verbs(verbs)
    add_plan_verbs(verbs)
    return p


def _train(args: argparse.Namespace) -> int:
    from matscale.config import describe, load
    from matscale.train.loop import train

    if args.help_config:
        print("\n".join(describe()))
        return 0
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in str(config):  # only overrides were given
        overrides.insert(0, str(config))
        config = None
    train(load(config, overrides), progress=not args.no_progress)  # errors: main's one line
    return 0


#: Share of each fine-tuning epoch drawn from the ``--replay`` store.
REPLAY_SHARE = 0.25
#: What ``matscale finetune`` changes from a training run's defaults: a learning rate 5x lower
#: than training from scratch (the weights are already good), a short warm-up, fewer steps.
FINETUNE_DEFAULTS = {
    "name": "finetune",
    "out_dir": "data/runs",
    "train.lr": "1e-3",
    "train.warmup_steps": "20",
    "train.steps": "1000",
    "train.eval_every": "100",
    "train.checkpoint_every": "500",
}


def _finetune(args: argparse.Namespace) -> int:
    from matscale.config import load
    from matscale.train.loop import train

    overrides = [f"{k}={v}" for k, v in FINETUNE_DEFAULTS.items()]
    overrides += [f"train.init_from={args.model}", f"data.store={args.store}"]
    if args.freeze_backbone:
        overrides.append("train.freeze=backbone")
    if args.replay_share is not None and args.replay is None:
        raise ConfigError("--replay-share sets the share of the --replay store: give --replay")
    cfg = load(None, [*overrides, *args.overrides])
    from matscale.train.finetune import with_trained_settings

    cfg = with_trained_settings(cfg, {o.split("=", 1)[0].strip() for o in args.overrides})
    if args.replay is not None:
        from matscale.train.finetune import with_replay

        share = REPLAY_SHARE if args.replay_share is None else args.replay_share
        cfg = with_replay(cfg, args.replay, share)
    train(cfg, progress=not args.no_progress)
    return 0


def _export(args: argparse.Namespace) -> int:
    from matscale.train.checkpoint import check_export_target, export_run

    if not args.run_dir.is_dir():
        raise DataError("no such run folder", file=str(args.run_dir))
    out = args.out or args.run_dir / "model.pt"
    check_export_target(out)
    print(f"wrote {export_run(args.run_dir, out)}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from matscale.data.generate.run import PRESETS, GenerateConfig, generate

    sizes = dict(PRESETS[args.preset])
    for item in args.size:
        name, _, n = item.partition("=")
        if not n.isdigit():
            raise DataError(f"--size {item!r} is not SOURCE=N (e.g. emt-metals=1000)")
        sizes[name] = int(n)
    try:
        config = GenerateConfig(sizes=sizes, seed=args.seed, workers=args.workers)
        report = generate(args.out, config)
    except ValueError as exc:  # unknown source names
        raise DataError(str(exc)) from exc
    for source, n in report["written_now"].items():
        skipped = report["skipped_now"].get(source) or {}
        why = ", ".join(f"{r}: {c}" for r, c in skipped.items()) or "none"
        print(f"{source}: {n:,} structures written now (skipped: {why})")
    print(f"generated in {report['seconds']} s under {args.out}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from matscale.data.generate.relabel import label_files

    who = next(t for t in TEACHERS if t.source == args.teacher)
    report = label_files(args.inputs, args.out, who, chunk=args.chunk, workers=args.workers)
    why = ", ".join(f"{r}: {c}" for r, c in report["skipped_now"].items()) or "none"
    print(
        f"{who.source}: {report['written_now']:,} structures labelled now by {report['teacher']}"
        f" (skipped: {why}); {report['structures']:,} in the inputs, in {report['seconds']} s "
        f"under {args.out / who.source}"
    )
    return 0


def _parse_part(text: str) -> tuple[int, int]:
    part, _, n = text.partition("/")
    if not (part.isdigit() and n.isdigit()) or not int(part) < int(n):
        raise DataError(f"--part {text!r} is not I/N with 0 <= I < N (e.g. 0/4)")
    return int(part), int(n)


def _pack(args: argparse.Namespace) -> int:
    from matscale.data.pack import PackConfig, collect_inputs, pack

    part, n_parts = _parse_part(args.part)
    files, sources = collect_inputs(args.inputs)
    config = PackConfig(
        cutoff=args.cutoff,
        shard_mb=args.shard_mb,
        workers=args.workers,
        format=args.format,
        require=tuple(x for x in args.require.split(",") if x),
        source=args.source,
        max_force=args.max_force or None,
        part=part,
        n_parts=n_parts,
        reader_options=parse_reader_options(args.reader_option),
    )
    start = time.perf_counter()
    pack(files, args.out, config, sources=sources, overwrite=args.overwrite)
    print(f"packed in {time.perf_counter() - start:.1f} s")
    if config.n_parts == 1:
        _print_info(args.out)
    else:
        print(
            f"part {config.part} of {config.n_parts} done; run `matscale data merge {args.out}`"
            " once every part is packed"
        )
    return 0


def _merge(store: Path) -> Path:
    from matscale.data.store import merge_parts, repeats_note

    if note := repeats_note(merge_parts(store)):
        print(note)
    return store


def _combine(args: argparse.Namespace) -> int:
    from matscale.data.combine import combine_stores

    splits: list[dict[str, Any] | None] = [None] * len(args.stores)
    if args.keep_split:
        from matscale import pretrained
        from matscale.calc.model_file import load_potential
        from matscale.data.store import Store
        from matscale.train.finetune import check_trained_store, trained_split

        pre = load_potential(pretrained.model_file(args.keep_split))
        check_trained_store(pre, Store(args.stores[0]), model=args.keep_split)
        splits[0] = trained_split(pre)
    combine_stores(args.stores, args.out, splits=splits)
    return _print_info(args.out)


def _print_info(store: Path) -> int:
    from matscale.data.info import describe
    from matscale.data.store import Store

    print(describe(Store(store)))
    return 0


def _info(args: argparse.Namespace) -> int:
    from matscale.data.store import Store

    if args.verify:
        errors = Store(args.store, verify="never").check_all()
        for err in errors:
            print(f"CORRUPT {err}", file=sys.stderr)
        if errors:
            return 3
        print("all shards and index arrays match their checksums")
    return _print_info(args.store)


def _demo(args: argparse.Namespace) -> int:
    from matscale.data.generate.run import PRESETS, GenerateConfig, generate
    from matscale.data.pack import PackConfig, pack
    from matscale.data.store import META

    preset = "small" if args.small else "default"
    raw, store = args.data_dir / f"raw-{preset}", args.data_dir / f"store-{preset}"
    print(f"[1/4] generating the {preset} data under {raw} (chunks already there are kept)")
    report = generate(raw, GenerateConfig(sizes=dict(PRESETS[preset]), workers=args.workers))
    print(f"      {sum(report['written_now'].values()):,} new structures in {report['seconds']} s")
    for source, why in report["skipped_now"].items():  # the candidates a labeller refused
        for reason, count in why.items():
            print(f"      {source}: {count:,} candidates dropped, the labeller failed ({reason})")
    chunks = sorted(raw.glob("*/chunk-*.extxyz"))
    sources = {f: f.parent.name for f in chunks}
    newest = max(f.stat().st_mtime for f in chunks)
    if not (store / META).exists() or newest > (store / META).stat().st_mtime:
        print(f"[2/4] packing into {store}")
        config = PackConfig(require=("energy", "forces"), workers=args.workers)
        pack(chunks, store, config, sources=sources, overwrite=True)  # derived from raw/
    else:
        print(f"[2/4] {store} is up to date")
    print("[3/4] statistics")
    _print_info(store)
    return _demo_train(args, preset, store)


#: The demo's training run (configs/demo.yaml holds the same settings for `matscale train`).
DEMO_RUN = [
    "name=demo",
    "data.max_atoms=256",
    "data.val_max_structures=1000",
    "model.width=80",
    "model.depth=2",
    "model.n_radial=16",
    "train.steps=3200",
    "train.max_minutes=4.0",
    "train.lr=0.005",
    "train.warmup_steps=50",
    "train.force_loss=mse",
    "train.force_weight=10",
    "train.eval_every=500",
    "train.checkpoint_every=500",
]
#: The small demo's: seconds, not minutes.
SMALL_RUN = [
    "name=demo-small",
    "data.max_atoms=256",
    "model.width=16",
    "model.depth=2",
    "train.steps=30",
    "train.eval_every=15",
    "train.checkpoint_every=15",
]


def _demo_train(args: argparse.Namespace, preset: str, store: Path) -> int:
    from matscale.config import load
    from matscale.train.loop import train

    overrides = SMALL_RUN if preset == "small" else DEMO_RUN
    cfg = load(None, [f"data.store={store}", f"out_dir={args.data_dir / 'runs'}", *overrides])
    minutes = f"{cfg.train.max_minutes:g} min" if cfg.train.max_minutes else "seconds"
    print(
        f"[4/4] training a {cfg.model.width}-wide, {cfg.model.depth}-layer EGNN for at most "
        f"{cfg.train.steps} steps or {minutes} into {cfg.run_dir}"
    )
    final = train(cfg)
    print(f"model: {cfg.run_dir / 'model.pt'}; metrics: {cfg.run_dir / 'metrics.jsonl'}")
    return 0 if final else 1
