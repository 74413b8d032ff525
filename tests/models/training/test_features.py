"""Training the bundled feature network (models/training/features.py): its data and degradations,
its losses and schedule, and short runs that export a loadable extractor, reproducibly and
resumably. Runs are 2–3 steps on batches of 4; nothing here trains a useful network."""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augflow.models import features as F
from augflow.models.training import features as T
from augflow.models.training.data import load_photo


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sources() -> T.Sources:
    return T.Sources()


def test_training_and_held_out_photos_are_disjoint() -> None:
    assert not set(T.FEATURE_TRAIN) & set(T.FEATURE_HELD_OUT)
    assert len(set(T.FEATURE_TRAIN)) == len(T.FEATURE_TRAIN) == 15


def test_surrogate_classes_are_photos_then_digits_then_backgrounds(sources: T.Sources) -> None:
    assert (sources.digit_class0, sources.background_class) == (15, 25)
    assert sources.num_classes == 26
    assert sources.photo_p.sum() == pytest.approx(1.0)
    assert len(sources.backgrounds) == 100  # LFW's non-face patches only, never its faces
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        crop, cls, sharp = sources.sample(rng)
        assert crop.shape == (T.SIZE, T.SIZE, 3) and crop.dtype == np.uint8
        assert 0 <= cls < sources.num_classes
        # only photo crops (downscaled, so sharp) carry a degradation target
        assert sharp == (cls < sources.digit_class0)
        seen.add("photo" if cls < 15 else "digit" if cls < 25 else "background")
    assert seen == {"photo", "digit", "background"}


def test_degrade_targets_say_what_was_done_and_zero_means_untouched() -> None:
    grey = np.full((T.SIZE, T.SIZE, 3), 128, np.uint8)
    kinds_done = np.zeros(len(T.DEGRADATIONS), int)
    for seed in range(60):
        out, target = T.degrade(grey, np.random.default_rng(seed))
        assert out.shape == grey.shape and out.dtype == np.uint8
        assert target.dtype == np.float32 and len(target) == len(T.DEGRADATIONS)
        assert target[:3].min() >= 0 and target[:3].max() <= 1
        assert target[3:].min() >= -1 and target[3:].max() <= 1
        kinds_done += target != 0
        if not target.any():
            assert np.array_equal(out, grey)
        if target[3:].any() and not target[:3].any():
            # a colour offset alone moves each channel of mid grey by shift × 255
            moved = out.astype(float).mean(axis=(0, 1)) - 128
            assert moved == pytest.approx(target[3:] * T.SHIFT_MAX * 255, abs=1.0)
    # each degradation happens about P_DEGRADE of the time, not always, not never
    assert all(8 <= k <= 40 for k in kinds_done), kinds_done
    a = T.degrade(grey, np.random.default_rng(5))
    b = T.degrade(grey, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_blurred_crop_has_less_fine_detail_the_more_its_target_says() -> None:
    photo = load_photo("chelsea")[:128, :128]
    crop = np.asarray(Image.fromarray(photo).resize((T.SIZE, T.SIZE)))

    def detail(img: np.ndarray) -> float:
        return float(np.abs(np.diff(img.astype(float), axis=1)).mean())

    blurred = []
    for seed in range(80):
        out, target = T.degrade(crop, np.random.default_rng(seed))
        if target[0] and not target[1:].any():
            blurred.append((target[0], detail(out)))
    assert len(blurred) >= 3
    assert all(d < detail(crop) for _, d in blurred)
    blurred.sort()
    assert blurred[0][1] > blurred[-1][1]  # the weakest blur keeps more than the strongest


def test_a_step_batch_is_fixed_by_seed_and_step(sources: T.Sources) -> None:
    x, cls, deg, weight = T.batch(sources, seed=1, step=7, n=12)
    assert x.shape == (12, 3, T.SIZE, T.SIZE) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert cls.shape == (12,) and deg.shape == (12, len(T.DEGRADATIONS))
    assert set(weight.tolist()) <= {0.0, 1.0}
    assert not deg[weight == 0].any()  # digits and backgrounds carry no degradation target
    again = T.batch(sources, seed=1, step=7, n=12)
    assert all(torch.equal(a, b) for a, b in zip((x, cls, deg, weight), again, strict=True))
    assert not torch.equal(T.batch(sources, seed=1, step=8, n=12)[0], x)


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    lrs = [T.lr_at(s, 200, 1.0, warmup=50) for s in range(200)]
    assert lrs[0] == pytest.approx(1 / 50) and lrs[49] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[50:]))
    assert T.lr_at(200, 200, 1.0, warmup=50) == pytest.approx(0.0, abs=1e-12)


def test_the_degradation_loss_ignores_rows_without_a_target() -> None:
    torch.manual_seed(0)
    model = T.Trainer(num_classes=5, dim=16)
    x = torch.rand(4, 3, T.SIZE, T.SIZE) * 2 - 1
    cls = torch.tensor([0, 1, 2, 3])
    deg = torch.zeros(4, len(T.DEGRADATIONS))
    weight = torch.tensor([1.0, 1.0, 0.0, 0.0])
    base = model.losses(x, cls, deg, weight)
    deg_other = deg.clone()
    deg_other[2:] = 0.9  # targets on unweighted rows: must not count
    assert torch.equal(model.losses(x, cls, deg_other, weight)["deg"], base["deg"])
    deg_other[0] = 0.9
    assert model.losses(x, cls, deg_other, weight)["deg"] > base["deg"]
    # no weighted row at all: zero, not a division by zero
    none = model.losses(x, cls, deg, torch.zeros(4))["deg"]
    assert torch.isfinite(none) and none == 0
    assert 0 <= base["cls_acc"] <= 1 and base["cls"] > 0


def _args(tmp_path: Path, name: str, steps: int, work: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(
        steps=steps, batch=4, lr=1e-3, seed=3, threads=1, log_every=1, save_every=1, eval_n=8,
        out=str(tmp_path / name), work=str(tmp_path / (work or f"{name}-work")),
    )  # fmt: skip


def test_training_script_is_reproducible(tmp_path: Path) -> None:
    def run(name: str) -> Path:
        T.train(_args(tmp_path, name, steps=2))
        return tmp_path / name

    a, b = run("a"), run("b")
    assert (a / F.WEIGHTS_FILE).read_bytes() == (b / F.WEIGHTS_FILE).read_bytes()
    ext = F.load_feature_extractor(a)
    assert ext.name == "local:a"
    assert ext(F.prepare_images([Image.new("RGB", (40, 30), "red")], 64)).shape == (1, 960)
    log = json.loads((a / "train_log.json").read_text())
    assert log["steps"] == 2 and "held_out_degradation_r2" in log


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    # Steps 0-2 are inside the 50-step warm-up, where the learning rate does not depend on the
    # total, so 2 steps, then resuming to 3, must equal 3 steps in one go.
    T.train(_args(tmp_path, "first-two", steps=2, work="resumed-work"))
    T.train(_args(tmp_path, "resumed", steps=3, work="resumed-work"))
    T.train(_args(tmp_path, "straight", steps=3))
    resumed = (tmp_path / "resumed" / F.WEIGHTS_FILE).read_bytes()
    assert resumed == (tmp_path / "straight" / F.WEIGHTS_FILE).read_bytes()
    assert resumed != (tmp_path / "first-two" / F.WEIGHTS_FILE).read_bytes()
    history = json.loads((tmp_path / "resumed-work" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
