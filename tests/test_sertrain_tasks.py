"""The task registry (sertrain.tasks), the dimensional tasks' metrics and loss, and the refusals.

Stores carry dimensional ratings (``segments()`` columns ``arousal``, ``valence``,
``dominance``, float32 with NaN = missing, and ``StoreReader.dimension_scales()``). The cv grid
test trains on a real store's ratings (the fixture corpus' summary lines); where a test needs
chosen values (ratings off the scale, missing ones, a fixed seed's draw), :class:`RatedReader`
lays them over a real fixture store's reader in that same form.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sertrain.config import apply_overrides, load_config
from sertrain.data import SegmentBatchDataset, SegmentLabels, read_dimensions, speaker_map
from sertrain.errors import InputError
from sertrain.metrics import ccc, pearson_r, regression_metrics, rmse
from sertrain.model import InputSpec, build_model
from sertrain.tasks import DIMENSIONS, TASKS, ccc_loss, head_sizes, parse_aux
from sertrain.train import check_task_targets, multitask_loss

SPEC = InputSpec(n_mels=40, frames=300)


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------
def test_aux_settings_follow_the_registry():
    assert parse_aux("none") == ()
    assert parse_aux("gender+speaker") == ("gender", "speaker")
    assert parse_aux("speaker+gender") == ("gender", "speaker")  # registry order
    assert parse_aux("vad") == DIMENSIONS
    assert parse_aux("gender+speaker+vad") == ("gender", "speaker", *DIMENSIONS)
    assert parse_aux("valence") == ("valence",)
    with pytest.raises(InputError, match="'emotion' is not a task"):
        parse_aux("gender+emotion")
    with pytest.raises(InputError, match="names valence twice"):
        parse_aux("vad+valence")


def test_head_sizes_keep_the_legacy_heads_and_add_active_dimensions():
    counts = {"genders": 2, "speakers": 6}
    assert head_sizes(counts, ()) == {"gender": 2, "speaker": 6}
    assert head_sizes({"genders": 2, "speakers": 0}, ()) == {"gender": 2}
    assert head_sizes(counts, ("arousal", "valence")) == {"gender": 2, "speaker": 6, "arousal": 1, "valence": 1}
    assert [TASKS[t].metric for t in TASKS] == ["accuracy", "accuracy", "ccc", "ccc", "ccc"]


def test_model_heads_and_state_dict_keys():
    """Without dimensions, the same keys and initial weights as before the registry; with vad,
    one output per dimension on top."""
    cfg = load_config("cpu-small").model
    torch.manual_seed(0)
    plain = build_model(cfg, SPEC, 4, 2, 6)
    torch.manual_seed(0)
    rated = build_model(cfg, SPEC, 4, 2, 6, parse_aux("gender+speaker+vad"))
    assert not any(k.startswith(("arousal", "valence", "dominance")) for k in plain.state_dict())
    extra = sorted(set(rated.state_dict()) - set(plain.state_dict()))
    assert extra == sorted(f"{d}_head.{p}" for d in DIMENSIONS for p in ("weight", "bias"))
    for key, value in plain.state_dict().items():  # dimension heads come last: same draws before them
        assert torch.equal(value, rated.state_dict()[key]), key
    rated.eval()
    out = rated(torch.randn(3, 3, 300, 40), torch.tensor([300, 120, 20]))
    assert all(out[d].shape == (3, 1) for d in DIMENSIONS)
    assert out["gender"].shape == (3, 2) and out["speaker"].shape == (3, 6)


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------
def _ccc_direct(y, p):
    """Lin (1989), written out term by term."""
    n = len(y)
    my, mp = sum(y) / n, sum(p) / n
    sy = sum((a - my) ** 2 for a in y) / n
    sp = sum((b - mp) ** 2 for b in p) / n
    sxy = sum((a - my) * (b - mp) for a, b in zip(y, p)) / n
    return 2 * sxy / (sy + sp + (my - mp) ** 2)


def test_ccc_against_the_direct_formula_and_known_cases():
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 5, 200)
    p = 0.6 * y + rng.normal(0, 0.5, 200) + 0.3
    assert ccc(y, p) == pytest.approx(_ccc_direct(list(y), list(p)), rel=1e-12)
    assert ccc(y, y) == pytest.approx(1.0)  # perfect
    # Shifted: r stays 1, CCC drops by the squared shift: 2 var / (2 var + d^2).
    var = y.var()
    assert ccc(y, y + 1.0) == pytest.approx(2 * var / (2 * var + 1.0))
    assert pearson_r(y, y + 1.0) == pytest.approx(1.0)
    # Scaled by a: 2 a var / (var + a^2 var + (1 - a)^2 mean^2).
    a, m = 2.0, y.mean()
    assert ccc(y, a * y) == pytest.approx(2 * a * var / (var + a * a * var + (1 - a) ** 2 * m * m))
    assert ccc(y, -y + 2 * m) == pytest.approx(-1.0)  # mirrored about the mean
    assert pearson_r(y, p) == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert rmse(y, y + 0.5) == pytest.approx(0.5)


def test_regression_metrics_mask_missing_and_refuse_non_finite():
    y = np.array([1.0, np.nan, 3.0, 4.0, np.nan])
    p = np.array([1.5, 99.0, 2.5, 4.5, np.nan])  # predictions of unrated segments do not count
    m = regression_metrics(y, p)
    assert m["n"] == 3
    assert m["ccc"] == pytest.approx(_ccc_direct([1, 3, 4], [1.5, 2.5, 4.5]))
    assert m["rmse"] == pytest.approx(0.5)
    assert regression_metrics([np.nan], [0.0]) == {"n": 0, "ccc": None, "pearson_r": None, "rmse": None}
    with pytest.raises(ValueError, match="predictions hold non-finite"):
        ccc([1.0, 2.0], [1.0, np.inf])
    with pytest.raises(ValueError, match="infinite"):
        ccc([1.0, np.inf], [1.0, 2.0])
    with pytest.raises(ValueError, match="differ in length"):
        rmse([1.0, 2.0], [1.0])


def test_ccc_loss_is_one_minus_ccc_over_rated_targets():
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 1, 32)
    p = y * 0.5 + rng.normal(0, 0.1, 32)
    y[[3, 7, 11]] = np.nan
    loss = ccc_loss(torch.tensor(p, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    assert float(loss) == pytest.approx(1 - ccc(y, p), abs=1e-6)
    perfect = torch.tensor([0.1, 0.5, 0.9])
    assert float(ccc_loss(perfect, perfect.clone())) == pytest.approx(0.0, abs=1e-6)
    # Gradients reach the rated predictions only.
    pt = torch.tensor(p, requires_grad=True)
    ccc_loss(pt, torch.tensor(y)).backward()
    assert torch.all(pt.grad[[3, 7, 11]] == 0) and torch.all(pt.grad[[0, 1, 2]] != 0)


def test_multitask_loss_adds_dimension_terms_and_leaves_unrated_batches_out():
    torch.manual_seed(0)
    out = {"emotion": torch.randn(4, 4), "gender": torch.randn(4, 2), "arousal": torch.randn(4, 1),
           "valence": torch.randn(4, 1)}
    batch = {"emotion": torch.tensor([0, 1, 2, 3]), "gender": torch.tensor([0, 1, 0, 1]),
             "arousal": torch.tensor([0.2, float("nan"), 0.9, 0.5]), "valence": torch.full((4,), float("nan"))}
    weights = {"gender": 0.3, "arousal": 0.5, "valence": 0.5}
    loss, parts = multitask_loss(out, batch, weights)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out["emotion"], batch["emotion"]) + 0.3 * ce(out["gender"], batch["gender"])
                + 0.5 * ccc_loss(out["arousal"].reshape(-1), batch["arousal"]))
    assert float(loss) == pytest.approx(float(expected))
    assert set(parts) == {"emotion", "gender", "arousal", "total"}  # valence: no rated segment


# ------------------------------------------------------------------------------------------
# Targets from a store
# ------------------------------------------------------------------------------------------
class RatedReader:
    """TEST HELPER: a store reader with dimensional ratings laid over it, as serprep's coming
    interface gives them (``segments()`` float32 columns, NaN = missing; ``dimension_scales()``).
    Everything else is the wrapped reader's."""

    def __init__(self, reader, ratings: dict[str, np.ndarray], scales: dict[str, tuple[float, float]]):
        self._reader, self._ratings, self._scales = reader, ratings, scales

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def segments(self) -> pd.DataFrame:
        # Only the chosen ratings: the store's own columns (if any) are replaced.
        seg = self._reader.segments().drop(columns=list(DIMENSIONS), errors="ignore")
        for name, values in self._ratings.items():
            seg[name] = np.asarray(values, dtype=np.float32)
        return seg

    def dimension_scales(self) -> dict[str, tuple[float, float]]:
        return dict(self._scales)


class _Segments:
    """The smallest reader ``read_dimensions`` needs (no store)."""

    path = "fake.h5"

    def __init__(self, columns, scales):
        self.columns, self.scales = columns, scales

    def segments(self):
        return pd.DataFrame(self.columns)

    def dimension_scales(self):
        return self.scales


def test_ratings_are_normalised_by_the_corpus_scale():
    reader = _Segments({"arousal": np.array([1.0, 5.0, np.nan, 2.0], np.float32)}, {"arousal": (1.0, 5.0)})
    dims = read_dimensions(reader, reader.segments())
    assert list(dims) == ["arousal"]
    np.testing.assert_allclose(dims["arousal"], [0.0, 1.0, np.nan, 0.25])
    assert dims["arousal"].dtype == np.float32
    assert read_dimensions(_Segments({"x": [1]}, {}), pd.DataFrame({"x": [1]})) == {}


@pytest.mark.parametrize("columns, scales, message", [
    ({"valence": [1.0, 6.0]}, {"valence": (1.0, 5.0)}, "fake.h5: segment 1 has valence 6.0, outside its scale"),
    ({"valence": [1.0, np.inf]}, {"valence": (1.0, 5.0)}, "segment 1 has valence inf"),
    ({"valence": [1.0]}, {}, "fake.h5: segments have a valence column but the store records no scale"),
    ({"valence": [1.0]}, {"valence": (5.0, 1.0)}, "the scale of valence is"),
    ({"x": [1.0]}, {"dominance": (1.0, 5.0)}, "a scale for dominance but no dominance column"),
])
def test_bad_ratings_are_refused_naming_the_store(columns, scales, message):
    reader = _Segments(columns, scales)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        read_dimensions(reader, reader.segments())


def test_asking_for_dimensions_the_store_lacks_is_refused_in_one_line():
    labels = SegmentLabels(utt=np.zeros(2, np.int64), emotion=np.zeros(2, np.int64), gender=np.zeros(2, np.int64),
                           speaker=np.zeros(2, np.int64))
    cfg = apply_overrides(load_config("cpu-small"), {"loss.aux": "gender+speaker+vad"})
    with pytest.raises(InputError, match=r"^s\.h5: --aux gender\+speaker\+vad asks for arousal\+valence\+dominance "
                                         r"but the store has no dimensional ratings"):
        check_task_targets(cfg, labels, "s.h5")
    check_task_targets(load_config("cpu-small"), labels, "s.h5")  # no dimension asked for: fine
    labels.dimensions = {"arousal": np.zeros(2, np.float32)}
    check_task_targets(cfg, labels, "s.h5")  # vad: the dimensions the store rates
    with pytest.raises(InputError, match="asks for valence but the store rates only arousal"):
        check_task_targets(apply_overrides(cfg, {"loss.aux": "valence"}), labels, "s.h5")


def test_batches_carry_the_registry_targets(tmp_path_factory):
    from sertrain.data import open_store
    from sertrain_fixtures import learnable_store, store_base

    path = learnable_store(store_base(tmp_path_factory), utts_per_speaker=4)
    reader = open_store(path)
    try:
        n = len(reader.segments())
        arousal = np.linspace(1.0, 5.0, n).astype(np.float32)
        arousal[::3] = np.nan
        rated = RatedReader(reader, {"arousal": arousal}, {"arousal": (1.0, 5.0)})
        labels = SegmentLabels.from_reader(rated)
        unrated = RatedReader(reader, {}, {})  # a store without ratings (e.g. EmoDB, or schema 2)
        plain = SegmentLabels.from_reader(unrated)
        assert plain.dimensions == {} and list(labels.dimensions) == ["arousal"]
        # The store's own ratings (IEMOCAP, 1-5) reach the labels scaled to [0, 1].
        own = SegmentLabels.from_reader(reader)
        seg = reader.segments()
        assert sorted(own.dimensions) == sorted(DIMENSIONS)
        for dim in DIMENSIONS:
            np.testing.assert_allclose(own.dimensions[dim], (seg[dim].to_numpy(np.float64) - 1) / 4, rtol=1e-6)
        spk = speaker_map(list(reader.vocab("speaker")), list(reader.vocab("speaker"))[:3])
        ds = SegmentBatchDataset(rated, labels, np.zeros((3, 40)), np.ones((3, 40)), spk)
        idx = np.arange(min(n, 6))
        batch = ds.labels_for(idx)
        assert list(batch) == ["emotion", "gender", "speaker", "arousal", "segment", "utt"]
        np.testing.assert_allclose(batch["arousal"].numpy(), (arousal[idx] - 1) / 4)
        assert list(SegmentBatchDataset(unrated, plain, np.zeros((3, 40)), np.ones((3, 40)), spk).labels_for(idx)) \
            == ["emotion", "gender", "speaker", "segment", "utt"]
    finally:
        reader.close()


def test_training_with_vad_as_auxiliary_tasks(tmp_path_factory):
    """--aux gender+speaker+vad on a store with ratings (here: arousal and valence only, the
    dominance head gets no term): the dimension losses enter the epoch statistics and the
    checkpoint holds their heads; a store without ratings is refused before training."""
    from sertrain.checkpoint import load_checkpoint
    from sertrain.data import open_store
    from sertrain.train import train_fold
    from sertrain_fixtures import learnable_store, store_base, unrated_store

    path = learnable_store(store_base(tmp_path_factory), utts_per_speaker=4)
    unrated = unrated_store(store_base(tmp_path_factory))
    cfg = apply_overrides(load_config("cpu-small"), {
        "loss.aux": "gender+speaker+vad", "train.num_workers": 0, "train.epochs": 1, "train.steps_per_epoch": 2,
        "train.batch_size": 8})
    reader = open_store(path)
    try:
        with pytest.raises(InputError, match=f"^{unrated}: --aux gender\\+speaker\\+vad asks for"):
            train_fold(unrated, 1, cfg, tmp_path_factory.mktemp("refused"), device="cpu")
        n = len(reader.segments())
        rng = np.random.default_rng(0)
        ratings = {"arousal": rng.uniform(1, 5, n), "valence": rng.uniform(1, 5, n)}
        ratings["valence"][::4] = np.nan
        rated = RatedReader(reader, ratings, {"arousal": (1.0, 5.0), "valence": (1.0, 5.0)})
        out = tmp_path_factory.mktemp("vad")
        result = train_fold(rated, 1, cfg, out, device="cpu")
    finally:
        reader.close()
    entry = result.history[0]
    for name in ("gender", "speaker", "arousal", "valence"):
        assert np.isfinite(entry[f"train_loss_{name}"]), name
    assert entry["train_loss_dominance"] is None  # not rated: its term is left out
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.run_config().loss.aux == "gender+speaker+vad"
    assert {f"{d}_head.weight" for d in DIMENSIONS} <= set(ckpt.model_state)
    assert result.test["n"] > 0
    # Test metrics of the rated dimensions, at utterance level (normalised units), in metrics.json too.
    assert set(result.test["dimensions"]) == {"arousal", "valence"}
    for d in ("arousal", "valence"):
        m = result.test["dimensions"][d]
        assert m["n"] > 0 and -1 <= m["ccc"] <= 1 and m["rmse"] >= 0
        assert entry[f"val_ccc_{d}"] is None or -1 <= entry[f"val_ccc_{d}"] <= 1
    pred = pd.read_csv(out / "predictions.csv")
    m = result.test["dimensions"]["arousal"]
    assert ccc(pred["arousal"], pred["pred_arousal"]) == pytest.approx(m["ccc"], abs=1e-4)  # CSV rounding


def test_cli_refuses_vad_on_a_store_without_ratings_and_unknown_tasks(tmp_path_factory):
    """One error line naming the store, nothing written; an unknown task name in --aux is a
    usage error naming the registry's tasks; --help lists them."""
    from click.testing import CliRunner

    from sertrain.cli import main
    from sertrain_fixtures import assert_one_line_error, store_base, unrated_store

    path = unrated_store(store_base(tmp_path_factory))
    out = tmp_path_factory.mktemp("cli_vad")
    fast = ["--epochs", "1", "--num-workers", "0", "--device", "cpu", "--config", "cpu-small"]
    ran = CliRunner().invoke(main, ["train", str(path), "--fold", "1", "--out", str(out / "t"), "--aux",
                                    "gender+speaker+vad", *fast])
    assert_one_line_error(ran, 2, f"{path}: --aux gender+speaker+vad asks for arousal+valence+dominance but the "
                                  "store has no dimensional ratings")
    ran = CliRunner().invoke(main, ["cv", str(path), "--out", str(out / "c"), "--aux", "none,vad", *fast])
    assert_one_line_error(ran, 2, f"{path}: --aux vad asks for")  # before the grid's none setting trains
    assert not (out / "t").exists() and not (out / "c" / "none").exists()
    ran = CliRunner().invoke(main, ["train", str(path), "--fold", "1", "--out", str(out / "u"), "--aux", "age", *fast])
    assert ran.exit_code == 2 and "'age' is not a task (gender, speaker, arousal, valence, dominance, vad)" in ran.output
    helptext = CliRunner().invoke(main, ["train", "--help"]).output
    assert "gender+speaker+vad" in helptext and "--w-valence" in helptext


def test_aux_grid_with_vad_shows_ccc_in_the_cv_and_comparison_tables(tmp_path_factory):
    """--aux none,gender+speaker+vad (part of the issue's ablation): the vad setting's cv table
    and metrics.json carry CCC, r and RMSE per dimension (per fold and mean ± std), and the one
    comparison table a CCC column per dimension ("-" for the setting without it)."""
    import json

    from sertrain.cv import run_cv
    from sertrain.data import open_store
    from sertrain_fixtures import learnable_store, store_base

    path = learnable_store(store_base(tmp_path_factory), utts_per_speaker=4)
    cfg = apply_overrides(load_config("cpu-small"), {
        "train.num_workers": 0, "train.epochs": 1, "train.steps_per_epoch": 2, "train.batch_size": 8})
    reader = open_store(path)
    tables: list[str] = []
    try:
        # The store's own ratings, as serprep wrote them (IEMOCAP's 1-5 scale, every segment rated).
        assert reader.dimension_scales() == {d: (1.0, 5.0) for d in ("valence", "arousal", "dominance")}
        assert not reader.segments()[list(DIMENSIONS)].isna().any().any()
        out = tmp_path_factory.mktemp("grid")
        run_cv(reader, cfg, out, folds=[1, 2], aux_settings=["none", "gender+speaker+vad"], device="cpu",
               report=tables.append, html=False, n_resamples=1000)
    finally:
        reader.close()
    vad = json.loads((out / "gender+speaker+vad" / "metrics.json").read_text())
    for d in DIMENSIONS:
        assert vad["summary"][f"ccc_{d}"]["n"] == 2 and -1 <= vad["summary"][f"ccc_{d}"]["mean"] <= 1
        assert all(f"rmse_{d}" in fold for fold in vad["per_fold"])
    none = json.loads((out / "none" / "metrics.json").read_text())
    assert not any(k.startswith("ccc_") for k in none["summary"])
    text = "\n".join(tables)
    assert "CCC arousal" in text and "RMSE dominance" in text
    comparison = (out / "comparison.md").read_text()
    assert "CCC arousal" in comparison and "CCC valence" in comparison and "CCC dominance" in comparison
    row = next(line for line in comparison.splitlines() if line.startswith("none "))
    assert row.count(" - ") >= 3  # no CCC for the setting without dimensions
