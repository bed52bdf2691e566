"""Fine-tuning: a trained model's weights and heads carried into a run on new data."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from matscale.calc.ase_calculator import MatscaleCalculator
from matscale.calc.model_file import load_potential
from matscale.config import ConfigError, load
from matscale.data.pack import PackConfig, pack
from matscale.train.loop import train
from tests.calc.conftest import train_tiny
from tests.conftest import emt_structures

SHORT = ["train.steps=4", "train.eval_every=4", "train.checkpoint_every=4", "data.max_atoms=64"]


@pytest.fixture(scope="module")
def trained(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tiny_store, tmp_path_factory.mktemp("pre"))


def _store(tmp_path: Path, source: str, seed: int = 5) -> Path:
    path = tmp_path / f"{source}.extxyz"
    ase.io.write(path, [s.to_atoms() for s in emt_structures(24, seed=seed, source=source)])
    pack([path], tmp_path / f"store-{source}", PackConfig(workers=1, cutoff=4.0), progress=False)
    return tmp_path / f"store-{source}"


def _finetune(store: Path, out: Path, trained: Path, *extra: str) -> Path:
    cfg = load(
        None,
        [f"data.store={store}", f"out_dir={out}", "name=ft", f"train.init_from={trained}",
         "train.lr=1e-3", "train.warmup_steps=1", *SHORT, *extra],
    )  # fmt: skip
    train(cfg, progress=False)
    return cfg.run_dir / "model.pt"


def _energy(model: Path, head: str) -> float:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = MatscaleCalculator.from_file(model, head=head)
    return float(atoms.get_potential_energy())


def test_a_new_source_gets_a_new_head_and_the_old_heads_stay(trained: Path, tmp_path: Path) -> None:
    tuned = _finetune(_store(tmp_path, "emt-new"), tmp_path, trained, "train.freeze=backbone")
    before, after = load_potential(trained), load_potential(tuned)
    assert after.graph.heads == ("emt", "mol", "emt-new")
    assert after.model.config.width == before.model.config.width  # the trained architecture
    # a frozen backbone and heads that saw no data: the old levels of theory answer as before
    for name, p in before.model.state_dict().items():  # backbone, old heads, their buffers
        assert torch.equal(p, after.model.state_dict()[name][: len(p)]), name
    assert _energy(tuned, "emt") == pytest.approx(_energy(trained, "emt"), abs=1e-6)
    # the new head started from a trained one and learned from the new data
    new = after.model.state_dict()
    assert not torch.equal(new["readout.heads.2.0.weight"], new["readout.heads.0.0.weight"])
    assert set(after.graph.elements[2]) == {29, 46, 79} or after.graph.elements[2]  # its data's
    assert np.isfinite(_energy(tuned, "emt-new"))
    # its card names the model it started from (its own steps and time are this run's only)
    assert f"| started from | `{trained}` |" in tuned.with_suffix(".md").read_text().replace(
        " (steps and time above are this run's only)", ""
    )
    # heads without data in this run show no statistics, not "0.0 atoms, 0.000 eV/Å"
    card = tuned.with_suffix(".md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| mol |"))
    assert row.rstrip().endswith("| — | — |") and "0.000" not in row, row
    assert f"It was fine-tuned from `{trained}`, whose card gives" in card


def test_an_existing_source_tunes_its_head_and_the_whole_model(
    trained: Path, tmp_path: Path
) -> None:
    tuned = _finetune(_store(tmp_path, "emt", seed=9), tmp_path, trained)
    before, after = load_potential(trained), load_potential(tuned)
    assert after.graph.heads == ("emt", "mol")
    b, a = before.model.state_dict(), after.model.state_dict()
    assert not torch.equal(b["embedding.weight"], a["embedding.weight"])  # not frozen
    assert not torch.equal(b["readout.heads.0.0.weight"], a["readout.heads.0.0.weight"])
    # the same level of theory keeps its reference energies
    assert torch.equal(b["reference_energy"], a["reference_energy"])


def test_an_unknown_starting_model_is_one_clear_error(tiny_store: Path, tmp_path: Path) -> None:
    cfg = load(None, [f"data.store={tiny_store}", f"out_dir={tmp_path}", "train.init_from=nope.pt"])
    with pytest.raises(ConfigError, match=r"init_from: .*nope\.pt.*no such model file"):
        train(cfg, progress=False)


def test_the_finetune_verb(trained: Path, tmp_path: Path, capsys) -> None:
    from matscale.cli import main

    store = _store(tmp_path, "emt-cli")
    code = main(
        ["finetune", str(trained), str(store), f"out_dir={tmp_path}", "name=cli", *SHORT,
         "--freeze-backbone", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    cfg = load(tmp_path / "cli" / "config.yaml", [])
    assert cfg.train.init_from == str(trained) and cfg.train.freeze == "backbone"
    assert cfg.train.lr == 1e-3
    assert load_potential(tmp_path / "cli" / "model.pt").graph.heads == ("emt", "mol", "emt-cli")


def test_replay_trains_on_the_pretraining_data_at_its_share(
    trained: Path, tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matscale.cli import main
    from matscale.data.store import Store
    from matscale.train import finetune
    from matscale.train.data import make_splits, sampler_for
    from matscale.train.finetune import REPLAY_STORE

    reads: list[str] = []
    read = finetune.load_potential

    def counted(path: str) -> object:
        reads.append(path)
        return read(path)

    monkeypatch.setattr(finetune, "load_potential", counted)
    store = _store(tmp_path, "emt-replay")
    args = ["finetune", str(trained), str(store), f"out_dir={tmp_path}", "name=rp", *SHORT,
            "--replay", str(tiny_store), "--replay-share", "0.4", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    # the trained model was read three times (its settings, the replay's heads, the start)
    assert reads == [str(trained.resolve())]
    cfg = load(tmp_path / "rp" / "config.yaml", [])
    assert cfg.data.store == str(tmp_path / "rp" / REPLAY_STORE)
    # the replayed sources by their sizes (the tiny model's run set no mixture): 40 and 24
    assert cfg.data.mixture == pytest.approx({"emt-replay": 0.6, "emt": 0.25, "mol": 0.15})
    combined = Store(cfg.data.store)
    n_new = len(Store(store))
    assert len(combined) == n_new + len(Store(tiny_store))
    # the new data is split as it would be alone; the replayed store as its model was trained:
    # none of the pretraining validation or test structures is trained on
    splits = make_splits(combined, cfg.data)
    alone = make_splits(Store(store), load(None, [f"data.store={store}"]).data)
    assert np.array_equal(splits.train[splits.train < n_new], alone.train)
    assert np.array_equal(splits.val[splits.val < n_new], alone.val)
    pre_cfg = load(trained.parent / "config.yaml", [])
    pre = make_splits(Store(tiny_store), pre_cfg.data)
    replayed_train = splits.train[splits.train >= n_new] - n_new
    assert np.array_equal(replayed_train, pre.train)
    assert not set(replayed_train) & (set(pre.val) | set(pre.test))
    # an epoch of the training sampler draws each source at its share
    sampler = sampler_for(
        combined,
        make_splits(combined, cfg.data).train,
        cfg.data,
        train=True,
        seed=0,
        rank=0,
        world=1,
    )
    drawn = np.concatenate(list(sampler))
    share = {s: np.mean(combined.source_ids[drawn] == k) for k, s in enumerate(combined.sources)}
    assert share["emt-replay"] == pytest.approx(0.6, abs=0.1)
    assert share["emt"] + share["mol"] == pytest.approx(0.4, abs=0.1)
    # the old heads are evaluated beside the new one
    log = (tmp_path / "rp" / "metrics.jsonl").read_text()
    assert "emt-replay/forces_mae_meV_per_A" in log and "mol/forces_mae_meV_per_A" in log
    # the same command again resumes the finished run with the same combined store
    assert main(args) == 0


def test_replay_refuses_what_it_cannot_do(trained: Path, tiny_store: Path, tmp_path: Path) -> None:
    from matscale.train.finetune import with_replay

    new = _store(tmp_path, "emt-new2")
    base = [f"data.store={new}", f"out_dir={tmp_path}", f"train.init_from={trained}"]
    cfg = load(None, base)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        with_replay(cfg, tiny_store, 1.0)
    with pytest.raises(ConfigError, match=r"sources \['emt-new2'\] are not heads of"):
        with_replay(cfg, new, 0.2)  # the model never had a head for this data
    same = load(None, [*base[1:], f"data.store={_store(tmp_path, 'emt', seed=2)}"])
    with pytest.raises(ConfigError, match=r"sources \['emt'\] are in both"):
        with_replay(same, tiny_store, 0.2)
    with pytest.raises(ConfigError, match=r"data\.mixture is set by the replay share"):
        with_replay(load(None, [*base, "data.mixture={emt-new2: 1.0}"]), tiny_store, 0.2)


def test_the_finetune_verb_refuses_what_it_would_ignore_and_a_missing_store(
    trained: Path, tmp_path: Path, capsys
) -> None:
    # --replay-share without --replay was ignored; a store path that does not exist was
    # "not a matscale store (meta.json missing)"
    from matscale.cli import main

    store = _store(tmp_path, "emt-share")
    verb = ["finetune", str(trained), f"out_dir={tmp_path}", "name=share", *SHORT, "--no-progress"]
    assert main([*verb[:2], str(store), *verb[2:], "--replay-share", "0.3"]) == 2
    assert "--replay-share sets the share of the --replay store" in capsys.readouterr().err
    assert main([*verb[:2], str(tmp_path / "nowhere"), *verb[2:]]) == 2
    assert "nowhere: no such store folder" in capsys.readouterr().err
    # model.* was ignored without a word: the starting model's architecture is kept; and
    # so was a value equal to the default (model.width=128), which no config compare sees
    for asked in ("model.width=64", "model.width=128"):
        assert main([*verb[:2], str(store), *verb[2:], asked]) == 2
        assert f"{asked} (the model's: 16): fine-tuning keeps the architecture of" in (
            capsys.readouterr().err
        )
    assert not (tmp_path / "share").exists()


def test_the_finetune_verb_keeps_the_models_loss_and_records_its_architecture(
    tiny_store: Path, tmp_path: Path
) -> None:
    """A fine-tuning run trains with the loss its model was trained with (the foundation
    model's stress weight 30 was replaced by the default 0: the new data's stress labels
    were left unused), unless given; and its config.yaml names the model it trained (it
    said width 128 and one head `default` for a 16-wide model of three heads)."""
    from matscale.cli import main

    trained = train_tiny(tiny_store, tmp_path / "pre", "train.stress_weight=2.5",
                         "train.force_loss=mse", "train.energy_weight=3")  # fmt: skip
    store = _store(tmp_path, "emt-loss")
    verb = ["finetune", str(trained), str(store), f"out_dir={tmp_path}", *SHORT, "--no-progress"]
    assert main([*verb, "name=kept"]) == 0
    cfg = load(tmp_path / "kept" / "config.yaml", [])
    assert (cfg.train.stress_weight, cfg.train.force_loss, cfg.train.energy_weight) == (
        2.5,
        "mse",
        3.0,
    )
    assert (cfg.model.width, cfg.model.depth) == (16, 2)
    assert cfg.model.heads == ("emt", "mol", "emt-loss")
    ran = torch.load(tmp_path / "kept" / "model.pt", weights_only=False)
    assert ran["run_config"]["model"]["width"] == 16
    assert ran["run_config"]["train"]["stress_weight"] == 2.5
    assert main([*verb, "name=given", "train.stress_weight=0"]) == 0  # the user's word stands
    given = load(tmp_path / "given" / "config.yaml", [])
    assert given.train.stress_weight == 0 and given.train.force_loss == "mse"


def test_continuing_on_a_grown_store_keeps_the_models_split(
    trained: Path, tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """More data of a source the model has (`data combine --keep-split`): the model's own store
    keeps the split it was trained with, so a continued run never trains on its validation or
    test structures; the new data is split by the run."""
    from matscale.cli import main
    from matscale.data.store import Store
    from matscale.train.data import make_splits

    more = _store(tmp_path, "emt")  # the same source as one of the model's heads
    out = tmp_path / "grown"
    # the stores in the other order: `more` would be split as the model's store, and the
    # model's own store split by the run, its validation structures trained on
    assert main(["data", "combine", str(more), str(tiny_store), "--out", str(out),
                 "--keep-split", str(trained)]) == 2  # fmt: skip
    assert f"{more} is not the store it was trained on" in capsys.readouterr().err
    assert not out.exists()
    assert main(["data", "combine", str(tiny_store), str(more), "--out", str(out),
                 "--keep-split", str(trained)]) == 0  # fmt: skip
    grown = Store(out)
    n_old = len(Store(tiny_store))
    assert len(grown) == n_old + len(Store(more))
    # another split seed for the continued run: the kept block must not follow it
    cfg = load(None, [f"data.store={out}", "data.split_seed=7"]).data
    splits = make_splits(grown, cfg)
    pre = make_splits(Store(tiny_store), load(trained.parent / "config.yaml", []).data)
    for field in ("train", "val", "test"):
        got = getattr(splits, field)
        assert np.array_equal(got[got < n_old], getattr(pre, field)), field
    alone = make_splits(Store(more), load(None, [f"data.store={more}", "data.split_seed=7"]).data)
    assert np.array_equal(splits.val[splits.val >= n_old] - n_old, alone.val)
    # the continued run starts from the model, tunes its head and trains
    cfg_run = load(None, [f"data.store={out}", f"out_dir={tmp_path}", "name=more",
                          f"train.init_from={trained}", *SHORT])  # fmt: skip
    train(cfg_run, progress=False)
    assert load_potential(tmp_path / "more" / "model.pt").graph.heads == ("emt", "mol")
    card = (tmp_path / "more" / "model.md").read_text()  # the card says which part kept what
    assert (f"combined from `{tiny_store.name}` ({n_old:,} structures, the split of the run it "
            "was trained with kept") in card  # fmt: skip
    assert f"`{more.name}` ({len(Store(more)):,} structures, split by these settings)" in card
    # without --keep-split the whole union is split by the run: the model's val structures
    # would be trained on
    main(["data", "combine", str(tiny_store), str(more), "--out", str(tmp_path / "plain")])
    plain = make_splits(Store(tmp_path / "plain"), cfg)
    assert set(plain.train[plain.train < n_old]) & set(pre.val)


def test_a_run_folder_of_another_starting_model_is_refused_not_loaded(
    trained: Path, tiny_store: Path, tmp_path: Path
) -> None:
    """The same run name started from a model of another width: one line naming what differs,
    not torch's shape mismatch from inside load_state_dict."""
    other = train_tiny(tiny_store, tmp_path / "other", "model.width=24")
    store = _store(tmp_path, "emt-again")
    _finetune(store, tmp_path, trained)
    cfg = load(None, [f"data.store={store}", f"out_dir={tmp_path}", "name=ft",
                      f"train.init_from={other}", "train.lr=1e-3", "train.warmup_steps=1",
                      *SHORT])  # fmt: skip
    with pytest.raises(ConfigError, match=r"holds checkpoints of another run .*train\.init_from"):
        train(cfg, progress=False)


def test_model_settings_a_run_from_a_trained_model_would_ignore_are_refused(
    trained: Path, tmp_path: Path
) -> None:
    # `train.init_from=M model.width=64` (or a run's config.yaml reused as a template) trained
    # M's architecture without a word about the width asked for
    store = _store(tmp_path, "emt-arch")
    own = load_potential(trained).model.config
    with pytest.raises(ConfigError, match=r"model\.width=64: a run from train\.init_from keeps"):
        _finetune(store, tmp_path, trained, "model.width=64")
    assert not (tmp_path / "ft" / "model.pt").exists()
    # the trained model's own values, as a copied config.yaml holds them, are no request
    model = _finetune(store, tmp_path, trained, f"model.width={own.width}",
                      f"model.depth={own.depth}")  # fmt: skip
    assert load_potential(model).model.config.width == own.width


def _nickel_store(tmp_path: Path) -> tuple[Path, float]:
    """A store of EMT-labelled Ni cells under the source `emt` (the tiny model's EMT head
    knows Cu, Pd, Au), and the least-squares Ni reference energy of its energies (eV/atom)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames, per_atom = [], []
    for k in range(24):
        atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((1, 1, 1 + k % 2))
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["source"] = "emt"
        frames.append(atoms)
        per_atom.append((len(atoms), energy))
    path = tmp_path / "ni.extxyz"
    ase.io.write(path, frames)
    pack([path], tmp_path / "store-ni", PackConfig(workers=1, cutoff=4.0), progress=False)
    n, e = np.array(per_atom).T
    return tmp_path / "store-ni", float((n * e).sum() / (n * n).sum())


def test_a_kept_head_fits_the_reference_energy_of_an_element_it_never_saw(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fine-tuning the EMT head on Fe data left Fe's reference energy at 0 (318 meV/atom of
    error against 51 as a new head), without a word; a frozen backbone kept the new
    element's embedding at its random start."""
    store, expected = _nickel_store(tmp_path)
    tuned = _finetune(store, tmp_path, trained)
    said = capsys.readouterr().out
    assert "head 'emt' meets element(s) it never saw" in said and "Ni " in said
    after = load_potential(tuned)
    emt = after.graph.heads.index("emt")
    assert float(after.model.reference_energy[emt, 28]) == pytest.approx(expected, abs=1e-9)
    before = load_potential(trained)  # the elements it knew keep theirs
    for z in (29, 46, 79):
        assert after.model.reference_energy[emt, z] == before.model.reference_energy[emt, z]
    with pytest.raises(ConfigError, match=r"holds Ni, which .* never saw: their embeddings"):
        _finetune(store, tmp_path / "frozen", trained, "train.freeze=backbone")


def test_resuming_on_another_store_names_the_store_not_init_from(
    tiny_store: Path, tmp_path: Path
) -> None:
    """A run resumed on another store was refused naming "the model built from
    train.init_from (avg_neighbours, heads)" in a run that never set train.init_from."""
    other = _store(tmp_path, "emt-other")
    base = [f"out_dir={tmp_path}", "name=same", "model.width=8", "model.depth=1",
            "model.cutoff=4.0", "train.warmup_steps=1", *SHORT]  # fmt: skip
    train(load(None, [f"data.store={tiny_store}", *base]), progress=False)
    with pytest.raises(ConfigError, match=r"another run \(the model built from the store \(") as e:
        train(load(None, [f"data.store={other}", *base]), progress=False)
    assert "init_from" not in str(e.value) and "the content of data.store" in str(e.value)
