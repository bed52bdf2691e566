"""Models shipped inside the package: nothing is downloaded.

    from matscale import pretrained
    pretrained.available()                  # names of the shipped models
    potential = pretrained.load(NAME)       # a Potential, as load_potential gives
    print(pretrained.card(NAME))            # its model card: data, size, errors, limits
    # on the command line: `matscale models` lists them, `matscale models NAME` prints a card
    calc = MatscaleCalculator.pretrained(NAME)              # its default head
    calc = MatscaleCalculator.pretrained(NAME, head="xtb-molecules")

Each model is ``models/NAME.pt`` (a model file with ``default_head``, the head a calculator
uses unless told otherwise) beside its card ``models/NAME.md`` and, once it has been measured
against references, ``models/NAME.limits.md`` (the card shows both). :func:`ship` puts a
trained model there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from matscale.calc.model_file import Potential, load_potential, not_a_model_file, read_model_file
from matscale.data.transform import GeometryDtype
from matscale.errors import DataError

#: Where the shipped models lie (inside the installed package).
MODELS = Path(__file__).parent / "models"
#: Largest model file the package ships (bytes): the wheel stays small enough to install.
MAX_BYTES = 20 * 2**20


def available() -> list[str]:
    """Names of the shipped models, sorted."""
    return sorted(p.stem for p in MODELS.glob("*.pt"))


def path(name: str) -> Path:
    """The model file of the shipped model ``name``; :class:`DataError` listing the shipped
    ones for any other name."""
    file = MODELS / f"{name}.pt"
    if not file.is_file():
        shipped = ", ".join(available()) or "none"
        raise DataError(f"no shipped model {name!r}; shipped: {shipped}", field="name")
    return file


def model_file(spec: str | Path) -> Path:
    """The model file ``spec`` names: a path to a model file, or a shipped model's name;
    :class:`DataError` listing the shipped models when it is neither."""
    if Path(spec).is_file():
        return Path(spec)
    if str(spec) in available():
        return path(str(spec))
    shipped = ", ".join(available()) or "none"
    if Path(spec).is_dir() or Path(spec).suffix or len(Path(spec).parts) > 1:  # meant as a file
        raise not_a_model_file(Path(spec))
    raise DataError(f"{str(spec)!r} is neither a model file nor a shipped model ({shipped})")


def load(
    name: str,
    *,
    device: torch.device | str = "cpu",
    dtype: GeometryDtype | torch.dtype | None = None,
    compile: bool = False,
) -> Potential:
    """The shipped model ``name`` as a :class:`Potential` on ``device`` (``dtype``,
    ``compile``: see :func:`matscale.calc.load_potential`)."""
    return load_potential(path(name), device=device, dtype=dtype, compile=compile)


def default_head(potential: Potential) -> str:
    """The head a calculator of ``potential`` uses unless told otherwise: the file's
    ``default_head``, else its only head (an error listing the heads if it has several)."""
    head = potential.info.get("default_head")
    if head is None:
        return potential.graph.heads[potential.graph.head_index(None)]
    return str(head)


def describe(name: str) -> dict[str, Any]:
    """What ``matscale models`` lists of the shipped model ``name``: file size (MiB),
    parameters, heads and default head."""
    from matscale.calc.card import is_parameter

    file = path(name)
    blob = read_model_file(file)
    return {
        "mib": file.stat().st_size / 2**20,
        "parameters": sum(int(t.numel()) for k, t in blob["state_dict"].items() if is_parameter(k)),
        "heads": list(blob["graph"]["heads"]),
        "default_head": str(blob.get("default_head", "")),
    }


def card(name: str) -> str:
    """The model card of the shipped model ``name`` (markdown): the card made when it was
    shipped, then ``NAME.limits.md`` if there is one, what was measured of it afterwards (its
    benchmarks against references, its failures), which a card made from the training run
    alone cannot say."""
    text = path(name).with_suffix(".md").read_text()
    limits = MODELS / f"{name}.limits.md"
    return text + limits.read_text() if limits.is_file() else text


def ship(model_file: str | Path, name: str, *, default_head: str) -> Path:
    """Copy a trained model file into the package as ``name`` with its ``default_head`` (one
    of its heads) and its model card; refuses files over :data:`MAX_BYTES`."""
    from matscale.calc.card import model_card
    from matscale.train.checkpoint import save_atomic

    blob = read_model_file(model_file)
    heads = list(blob["graph"]["heads"])
    if default_head not in heads:
        raise DataError(
            f"default_head {default_head!r} is not one of the model's heads {heads}",
            file=str(model_file),
        )
    MODELS.mkdir(exist_ok=True)
    out = MODELS / f"{name}.pt"
    save_atomic({**blob, "default_head": default_head, "shipped_as": name}, out)
    if out.stat().st_size > MAX_BYTES:
        size = out.stat().st_size / 2**20
        out.unlink()
        raise DataError(
            f"{size:.1f} MiB is over the {MAX_BYTES / 2**20:.0f} MiB a shipped model may take",
            file=str(model_file),
        )
    card_text = model_card(torch.load(out, map_location="cpu", weights_only=True), name=out.name)
    out.with_suffix(".md").write_text(card_text)
    return out


__all__ = [
    "MAX_BYTES", "MODELS", "available", "card", "default_head", "describe", "load", "path", "ship",
]  # fmt: skip
