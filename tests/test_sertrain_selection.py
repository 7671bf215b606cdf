"""sertrain.selection: every rule on hand-made histories with known answers, early stopping
equal to sertrain.train's rule, the kept-epochs guarantee on random histories, and weight
averaging on a real model's state dict."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch

from serprep.config import FeatureConfig
from sertrain.config import load_config
from sertrain.model import InputSpec, build_model
from sertrain.selection import (
    RULES,
    Selection,
    SmoothedValUA,
    TopKAverage,
    average_state_dicts,
    get_rule,
    kept_epochs,
    select,
    selection_state,
    should_stop,
)

SPEC = InputSpec(n_mels=40, frames=300, feature_config_json=FeatureConfig().to_json())


def hist(*rows: tuple[Any, Any]) -> list[dict[str, Any]]:
    """History entries (epoch 1, 2, ...) from (val_ua, val_loss) pairs, with the other keys a
    training run writes, so rules are seen to read only what they should."""
    return [
        {"epoch": i, "val_ua": ua, "val_loss": loss, "val_wa": ua, "val_f1": ua, "train_loss": 9.0 - i,
         "train_acc": 0.99, "lr": 1e-3}
        for i, (ua, loss) in enumerate(rows, start=1)
    ]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def test_registry_names_and_descriptions():
    assert {"val_ua", "val_loss", "val_ua_smooth3", "top3_average"} <= set(RULES)
    for name, rule in RULES.items():
        assert rule.name == name
        assert rule.description and "\n" not in rule.description
        assert get_rule(name) is rule


@pytest.mark.parametrize("call", [
    lambda: select("best", hist((0.5, 1.0))),
    lambda: should_stop("best", hist((0.5, 1.0)), 0),
    lambda: kept_epochs("best", hist((0.5, 1.0))),
    lambda: get_rule("val-ua"),
])
def test_unknown_rule_names_the_valid_ones(call):
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert "unknown selection rule" in msg
    for name in ("val_ua", "val_loss", "val_ua_smooth3", "top3_average"):
        assert name in msg


# --------------------------------------------------------------------------------------------
# val_ua
# --------------------------------------------------------------------------------------------
def test_val_ua_best_epoch():
    h = hist((0.58, 1.2), (0.92, 1.1), (0.63, 0.9), (0.70, 0.8))
    assert select("val_ua", h) == Selection((2,), 0.92)


def test_val_ua_tie_goes_to_lower_loss_then_earlier_epoch():
    h = hist((0.6, 1.0), (0.8, 0.9), (0.8, 0.7), (0.5, 0.1), (0.8, 0.7))
    # epochs 2, 3 and 5 tie on UA; 3 and 5 tie on loss too: the earlier, 3, wins.
    assert select("val_ua", h).epochs == (3,)
    # A missing or NaN loss never wins a tie.
    h = hist((0.8, None), (0.8, float("nan")), (0.8, 2.0))
    assert select("val_ua", h).epochs == (3,)


# --------------------------------------------------------------------------------------------
# val_loss
# --------------------------------------------------------------------------------------------
def test_val_loss_lowest_loss():
    h = hist((0.9, 1.0), (0.5, 0.6), (0.7, 0.8))
    sel = select("val_loss", h)
    assert sel.epochs == (2,)
    assert sel.score == pytest.approx(-0.6)


def test_val_loss_nan_counts_as_worst_and_ties_go_to_higher_ua():
    h = hist((0.9, float("nan")), (0.5, 1.5), (0.7, None), (0.6, 1.5))
    assert select("val_loss", h).epochs == (4,)  # 2 and 4 tie on loss; 4 has the higher UA
    # With no finite loss at all, every epoch is +inf and the UA decides.
    h = hist((0.4, None), (0.6, float("nan")), (0.6, float("inf")))
    sel = select("val_loss", h)
    assert sel.epochs == (2,) and sel.score == -math.inf


# --------------------------------------------------------------------------------------------
# val_ua_smooth3
# --------------------------------------------------------------------------------------------
def test_smooth3_selects_the_last_epoch_of_the_best_window():
    # Window means: e1 .50, e2 .70, e3 .6667, e4 .7333, e5 .70 -> e4 (a spike at e2 alone
    # does not win, the plain val_ua rule would take it).
    h = hist((0.5, 1.0), (0.9, 1.0), (0.6, 1.0), (0.7, 1.0), (0.8, 1.0))
    sel = select("val_ua_smooth3", h)
    assert sel.epochs == (4,)
    assert sel.score == pytest.approx((0.9 + 0.6 + 0.7) / 3)
    assert select("val_ua", h).epochs == (2,)


def test_smooth3_window_is_shorter_at_the_start():
    # e1's window is e1 alone (0.9); e2's is e1..e2 (0.55); later windows stay below 0.9.
    rows = [(0.9, 1.0), (0.2, 1.0), (0.2, 1.0), (0.85, 1.0), (0.85, 1.0), (0.85, 1.0)]
    assert select("val_ua_smooth3", hist(*rows)) == Selection((1,), 0.9)
    # A later full window with a higher mean (0.95 + 0.95 + 1.0) / 3 beats it.
    rows += [(0.95, 1.0), (0.95, 1.0), (1.0, 1.0)]
    sel = select("val_ua_smooth3", hist(*rows))
    assert sel.epochs == (9,) and sel.score == pytest.approx(2.9 / 3)


def test_smooth3_equal_windows_tie_exactly_and_go_to_lower_loss_then_earlier_epoch():
    # Windows ending at e3 (.6, .7, .8) and e7 (.8, .7, .6) hold the same values in another
    # order: their means must tie exactly (float sums in another order need not), so the
    # tie-break decides. Every other window is lower.
    uas = [0.6, 0.7, 0.8, 0.1, 0.8, 0.7, 0.6]
    same_loss = hist(*[(u, 1.0) for u in uas])
    assert select("val_ua_smooth3", same_loss).epochs == (3,)
    lower_at_7 = hist(*[(u, 0.5 if i == 6 else 1.0) for i, u in enumerate(uas)])
    assert select("val_ua_smooth3", lower_at_7).epochs == (7,)


def test_smooth_window_skips_epochs_without_validation():
    h = hist((0.6, 1.0), (None, None), (0.9, 1.0), (0.9, 1.0))
    # Validated epochs 1, 3, 4: window at 4 = (0.6 + 0.9 + 0.9) / 3, at 3 = 0.75, at 1 = 0.6.
    sel = select("val_ua_smooth3", h)
    assert sel.epochs == (4,)
    assert sel.score == pytest.approx(0.8)


def test_smooth_window_one_is_val_ua():
    h = hist((0.6, 1.0), (0.9, 0.5), (0.9, 0.4), (0.3, 0.1))
    assert SmoothedValUA(1).select(h) == select("val_ua", h)
    with pytest.raises(ValueError):
        SmoothedValUA(0)


# --------------------------------------------------------------------------------------------
# top3_average
# --------------------------------------------------------------------------------------------
def test_top3_average_three_best_with_ties_by_loss():
    h = hist((0.5, 1.0), (0.8, 0.9), (0.7, 1.0), (0.8, 0.5), (0.7, 0.8), (0.6, 0.1))
    sel = select("top3_average", h)
    # 0.8 (e4, lower loss), 0.8 (e2), then 0.7: e5 (loss 0.8) before e3 (loss 1.0).
    assert sel.epochs == (2, 4, 5)
    assert sel.score == pytest.approx((0.8 + 0.8 + 0.7) / 3)


def test_top3_average_uses_fewer_epochs_while_fewer_exist():
    assert select("top3_average", hist((0.5, 1.0))) == Selection((1,), 0.5)
    sel = select("top3_average", hist((0.5, 1.0), (0.7, 1.0)))
    assert sel.epochs == (1, 2) and sel.score == pytest.approx(0.6)
    # Epochs without validation do not count towards the three.
    sel = select("top3_average", hist((0.5, 1.0), (None, None), (0.7, 1.0)))
    assert sel.epochs == (1, 3)
    assert TopKAverage(1).select(hist((0.5, 1.0), (0.7, 1.0))).epochs == (2,)


# --------------------------------------------------------------------------------------------
# No validation, malformed histories
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", sorted(RULES))
def test_no_validation_selects_nothing_and_never_stops(rule):
    for h in ([], hist((None, None), (None, None), (None, None)), hist((float("nan"), 1.0))):
        assert select(rule, h) is None
        assert kept_epochs(rule, h) == set()
        assert should_stop(rule, h, 1) is False


@pytest.mark.parametrize("rule", sorted(RULES))
def test_history_out_of_order_is_refused(rule):
    h = hist((0.5, 1.0), (0.6, 1.0))
    h[1]["epoch"] = 1
    with pytest.raises(ValueError, match="increase"):
        select(rule, h)


# --------------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------------
def train_py_stop_epochs(history: list[dict[str, Any]], patience: int) -> tuple[int, int]:
    """(epochs trained, best epoch) as sertrain.train's ``_train_fold`` loop decides them, for a
    run whose epochs would produce ``history``. A transcription of that loop: the first
    epoch always improves; later ones when UA is higher, or equal with a lower loss; before
    epoch ``e`` the run stops when ``patience and e - 1 - best_epoch >= patience``."""
    best_epoch, best_ua, best_loss = 0, float("-inf"), float("inf")
    trained = 0
    for entry in history:
        e = entry["epoch"]
        if patience and e - 1 - best_epoch >= patience:
            break
        trained = e
        ua, loss = entry["val_ua"], entry["val_loss"]
        if best_epoch == 0 or ua > best_ua or (ua == best_ua and loss < best_loss):
            best_epoch, best_ua, best_loss = e, ua, loss
    return trained, best_epoch


def random_history(rng: random.Random, n: int, gaps: bool = False) -> list[dict[str, Any]]:
    """Validation UA and loss on coarse grids (ties are frequent, as with ~25 utterances)."""
    rows = []
    for _ in range(n):
        if gaps and rng.random() < 0.15:
            rows.append((None, None))
            continue
        ua = rng.randrange(0, 9) / 8
        loss = rng.choice([None, float("nan")]) if gaps and rng.random() < 0.1 else rng.randrange(1, 6) / 4
        rows.append((ua, loss))
    return hist(*rows)


def test_val_ua_early_stop_equals_train_py_rule():
    rng = random.Random(0)
    checked_stops = 0
    for _ in range(400):
        h = random_history(rng, rng.randrange(1, 25))
        for patience in (0, 1, 2, 3, 6):
            trained, best = train_py_stop_epochs(h, patience)
            # Replay the loop with should_stop deciding, before each epoch, on what came before.
            ours = len(h)
            for n in range(1, len(h)):
                if should_stop("val_ua", h[:n], patience):
                    ours = n
                    break
            assert ours == trained, (h, patience)
            assert select("val_ua", h[:trained]).epochs == (best,)
            checked_stops += trained < len(h)
    assert checked_stops > 100  # the comparison did exercise early stops


def test_should_stop_counts_from_the_newest_selected_epoch():
    h = hist((0.9, 1.0), (0.95, 1.0), (0.5, 1.0), (0.5, 1.0), (0.94, 1.0))
    # val_ua: best e2, last e5 -> 3 epochs without improvement.
    assert should_stop("val_ua", h, 3) and not should_stop("val_ua", h, 4)
    # top3_average: e5 entered the top 3 (e1, e2, e5): nothing to wait out yet.
    assert select("top3_average", h).epochs == (1, 2, 5)
    assert not should_stop("top3_average", h, 1)
    assert should_stop("top3_average", h, 0) is False  # patience 0: never


# --------------------------------------------------------------------------------------------
# Kept epochs suffice
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", sorted(RULES))
def test_next_selection_uses_only_kept_epochs_and_the_new_one(rule):
    """What lets a training loop keep only a few states: after epoch e + 1 the selection uses
    only kept_epochs(after e) and e + 1, on many random histories (ties, gaps, NaN losses)."""
    rng = random.Random(sorted(RULES).index(rule))  # hash() of a str varies per process
    changed = 0
    for _ in range(300):
        h = random_history(rng, rng.randrange(1, 30), gaps=rng.random() < 0.5)
        kept: set[int] = set()
        for n in range(1, len(h) + 1):
            sel = select(rule, h[:n])
            new_epoch = h[n - 1]["epoch"]
            if sel is not None:
                assert set(sel.epochs) <= kept | {new_epoch}, (rule, h[:n], kept)
                assert list(sel.epochs) == sorted(set(sel.epochs))
                changed += new_epoch in sel.epochs and n > 1
            kept = kept_epochs(rule, h[:n])
            assert kept == (set(sel.epochs) if sel else set())
    assert changed > 50  # selections did move to new epochs during the runs


# --------------------------------------------------------------------------------------------
# Weight averaging
# --------------------------------------------------------------------------------------------
def model_state(seed: int, batches: int) -> dict[str, torch.Tensor]:
    """A real cpu-small state dict: random init for ``seed``, batch norm statistics moved by
    ``batches`` training-mode forward passes (so running stats and counters differ)."""
    torch.manual_seed(seed)
    model = build_model(load_config("cpu-small").model, SPEC, 4, 2, 6).train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(3, 3, 300, 40), torch.tensor([300, 200, 100]))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def three_states():
    return [model_state(0, 1), model_state(1, 2), model_state(2, 4)]


def test_average_matches_hand_computation(three_states):
    a, b, c = three_states
    avg = average_state_dicts(three_states)
    assert list(avg) == list(a)
    counters = [k for k in a if k.endswith("num_batches_tracked")]
    running = [k for k in a if k.endswith("running_mean")]
    assert counters and running
    for key, value in avg.items():
        assert value.dtype == a[key].dtype and value.shape == a[key].shape
        if key in counters:
            # Counters are taken from the newest state (the last), not averaged: 4, not 7/3.
            assert value.dtype == torch.int64 and int(value) == 4 == int(c[key])
        else:
            by_hand = (a[key].double() + b[key].double() + c[key].double()) / 3
            torch.testing.assert_close(value.double(), by_hand, rtol=0, atol=1e-7)
    # The states really differ, so the average is not one of them.
    w = next(k for k in a if k.endswith("weight") and a[k].dim() > 1)
    assert not torch.equal(avg[w], a[w]) and not torch.equal(avg[w], c[w])
    # Inputs untouched, outputs not aliasing them.
    assert torch.equal(three_states[0][w], model_state(0, 1)[w])
    avg[counters[0]].add_(1)
    assert int(c[counters[0]]) == 4


def test_averaged_state_loads_into_the_model_and_runs(three_states):
    torch.manual_seed(5)
    model = build_model(load_config("cpu-small").model, SPEC, 4, 2, 6)
    model.load_state_dict(average_state_dicts(three_states), strict=True)
    out = model.eval()(torch.randn(2, 3, 300, 40), torch.tensor([300, 150]))
    assert torch.isfinite(out["emotion"]).all()


def test_average_of_one_state_is_that_state(three_states):
    avg = average_state_dicts(three_states[:1])
    for k, v in three_states[0].items():
        assert torch.equal(avg[k], v)


def test_average_in_float64_then_cast_back():
    # 1 + 2**-24 is not a float32; the float64 mean of 1 and 1 + 2**-23 is, and a float32
    # running sum (1 + 1 + 2**-23 = 2 + 2**-23 rounds to 2) would give exactly 1 instead.
    s1 = {"w": torch.tensor([1.0], dtype=torch.float32)}
    s2 = {"w": torch.tensor([1.0 + 2 ** -23], dtype=torch.float32)}
    s3 = {"w": torch.tensor([1.0 + 2 ** -23], dtype=torch.float32)}
    avg = average_state_dicts([s1, s2, s3])["w"]
    assert avg.dtype == torch.float32
    assert float(avg) == float(torch.tensor((1.0 + 2 * (1.0 + 2 ** -23)) / 3, dtype=torch.float64).float())
    assert float(avg) > 1.0


def test_average_refuses_mismatched_states(three_states):
    a = three_states[0]
    with pytest.raises(ValueError, match="at least one"):
        average_state_dicts([])
    missing = {k: v for k, v in a.items() if not k.startswith("emotion")}
    with pytest.raises(ValueError, match="other keys"):
        average_state_dicts([a, missing])
    other = build_model(load_config("cpu-small").model, SPEC, 4, 2, 9).state_dict()  # 9 speakers
    with pytest.raises(ValueError, match="speaker"):
        average_state_dicts([a, other])
    as_half = {k: (v.half() if v.is_floating_point() else v) for k, v in a.items()}
    with pytest.raises(ValueError, match="float16"):
        average_state_dicts([a, as_half])


def test_selection_state_builds_the_selected_weights(three_states):
    states = {3: three_states[0], 5: three_states[1], 8: three_states[2]}
    single = selection_state(Selection((5,), 0.7), states)
    for k, v in three_states[1].items():
        assert torch.equal(single[k], v)
    several = selection_state(Selection((3, 5, 8), 0.7), states)
    expected = average_state_dicts(three_states)
    for k, v in expected.items():
        assert torch.equal(several[k], v)
    with pytest.raises(KeyError, match="4"):
        selection_state(Selection((4, 5), 0.7), states)
