"""The proxy classifier (models/proxy.py): the tiny CNN, its trainer on real digits, the classical
augmentation, and the arithmetic of confidence intervals and paired lifts over seeds."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from augflow.models.proxy import (
    Classical,
    TrainConfig,
    accuracy,
    classical_augment,
    mean_ci,
    paired_lift,
    tiny_cnn,
    to_tensor,
    train_classifier,
)
from augflow.models.training.digits import digits_split, load_digits_16

Data = tuple[np.ndarray, np.ndarray]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two threads on a busy 2-core box make these tiny convolutions far slower (threads wait for
    # each other); the benchmark trains with one thread per process too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def few_shot() -> tuple[Data, Data]:
    """(5-shot training set, validation set) of the fixed digits split."""
    images, labels = load_digits_16()
    s = digits_split(labels)
    return (images[s.labelled[5]], labels[s.labelled[5]]), (images[s.val], labels[s.val])


# --- the network and its input -----------------------------------------------------------------


def test_tiny_cnn_maps_grey_squares_to_class_logits() -> None:
    net = tiny_cnn(num_classes=7, side=16)
    assert net(torch.zeros(3, 1, 16, 16)).shape == (3, 7)
    assert tiny_cnn(10, 32)(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
    assert sum(p.numel() for p in tiny_cnn().parameters()) < 15_000  # "tiny": ≈ 10 k weights
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny_cnn(10, 18)


def test_to_tensor_centres_uint8_images_with_a_channel_axis() -> None:
    x = to_tensor(np.array([[[0, 255], [51, 102]]], dtype=np.uint8))
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    assert x.flatten().tolist() == pytest.approx([-0.5, 0.5, -0.3, -0.1])


def test_classical_augment_is_seeded_bounded_and_keeps_a_black_background() -> None:
    digit = np.zeros((4, 16, 16), dtype=np.uint8)
    digit[:, 5:11, 6:10] = 255
    x = to_tensor(digit)
    a = classical_augment(x, Classical(), torch.Generator().manual_seed(0))
    b = classical_augment(x, Classical(), torch.Generator().manual_seed(0))
    c = classical_augment(x, Classical(), torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -0.5 and a.max() <= 0.5
    assert not torch.equal(a[0], a[1])  # every image of a batch gets its own transform
    # corners stay black (padding is black, not mid grey) and the stroke stays bright
    assert a[:, :, 0, 0].max() < -0.3 and a[:, :, 6:10, 7:9].mean() > 0.2
    still = Classical(max_degrees=0, max_shift=0, max_scale=0, noise_std=0)
    same = classical_augment(x, still, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-5)  # no transform, no noise: the input comes back


# --- training ----------------------------------------------------------------------------------


def test_classifier_trains_well_above_chance_on_real_few_shot_data(few_shot) -> None:
    (x, y), (vx, vy) = few_shot
    acc = accuracy(train_classifier(x, y, seed=0), vx, vy)
    # chance is 10%; measured 0.87 (5 seeds: 0.869 ± 0.010)
    assert acc > 0.75
    # classical augmentation keeps the digit: trained on it, the classifier still learns
    assert accuracy(train_classifier(x, y, seed=0, classical=Classical()), vx, vy) > 0.75


def test_same_seed_same_classifier_and_the_seed_matters(few_shot) -> None:
    (x, y), (vx, vy) = few_shot
    cfg = TrainConfig(steps=30)
    a = [accuracy(train_classifier(x, y, seed=s, cfg=cfg), vx, vy) for s in (0, 0, 1)]
    assert a[0] == a[1]
    assert a[0] != a[2]


def test_the_synthetic_share_of_each_batch_shapes_what_is_learnt(few_shot) -> None:
    (x, y), (vx, _) = few_shot
    cfg = TrainConfig(steps=40, batch=32)
    # synthetic images that are all labelled 3: the more of each batch they fill, the more the
    # classifier answers 3 on real digits
    sx, sy = x, np.full(len(x), 3)

    def share_of_threes(share: float) -> float:
        model = train_classifier(x, y, seed=0, synth_x=sx, synth_y=sy, share=share, cfg=cfg)
        with torch.no_grad():
            return float((model(to_tensor(vx)).argmax(1) == 3).float().mean())

    none, most = share_of_threes(0.0), share_of_threes(0.9)
    assert most > 0.8 and none < 0.3
    # an empty synthetic set with a share is the real-only run, to the weight
    empty = np.zeros((0, 16, 16), np.uint8)
    a = train_classifier(x, y, seed=0, cfg=cfg)
    b = train_classifier(x, y, seed=0, synth_x=empty, synth_y=empty[:, 0, 0], share=0.5, cfg=cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not a.training  # handed back ready to score


def test_accuracy_is_the_share_of_right_answers() -> None:
    images = np.zeros((4, 16, 16), np.uint8)
    model = tiny_cnn(10)
    with torch.no_grad():
        pred = int(model(to_tensor(images[:1])).argmax())
    labels = np.array([pred, pred, (pred + 1) % 10, pred])
    assert accuracy(model.eval(), images, labels) == 0.75


# --- summaries over seeds ----------------------------------------------------------------------


def test_summaries_are_t_intervals_of_paired_differences() -> None:
    s = mean_ci([0.5, 0.7])
    assert s["mean"] == pytest.approx(0.6)
    # t(0.975, 1) = 12.706; sd = 0.1414; half = 12.706 * 0.1414 / sqrt(2)
    assert s["ci95"][1] - 0.6 == pytest.approx(12.706 * 0.14142 / 2**0.5, rel=1e-3)
    assert paired_lift([0.6, 0.8], [0.5, 0.7])["ci95"] == pytest.approx([0.1, 0.1])


def test_confidence_intervals_and_paired_lifts() -> None:
    s = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.303, sd = 1, n = 3
    assert s["mean"] == 2.0
    assert s["ci95"] == pytest.approx([2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5], abs=1e-3)
    lift = paired_lift([0.8, 0.9, 0.7], [0.7, 0.8, 0.6])
    assert lift["mean"] == pytest.approx(0.1)
    assert lift["ci95"] == pytest.approx([0.1, 0.1])  # same gap every seed: no spread
    wide = paired_lift([0.8, 0.6, 0.7], [0.7, 0.7, 0.7])
    assert wide["ci95"][0] < 0 < wide["ci95"][1]
    with pytest.raises(ValueError, match="same seeds"):
        paired_lift([0.1], [0.1, 0.2])


def test_one_seed_is_its_own_interval_and_none_is_refused() -> None:
    assert mean_ci([0.42]) == {"mean": 0.42, "ci95": [0.42, 0.42]}
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])
    many = mean_ci([0.5, 0.7] * 50)  # more seeds, tighter interval around the same mean
    assert many["ci95"][1] - many["ci95"][0] < 0.05 and not math.isnan(many["mean"])
