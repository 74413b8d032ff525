"""The digits task and its generator's training (models/training/digits.py).

The split tests prove on pixels, not only on indices, that no test or val image reaches the
generator's training data (scikit-learn's digits have no duplicate images, checked here, so a
pixel match is an index match). The benchmark's own checks that no classifier and no augflow input
sees a test image are tests/bench/test_usefulness.py.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from augflow.models.training.digits import (
    NULL_LABEL,
    NUM_CLASSES,
    SIDE,
    SPLIT_DIGEST,
    Ema,
    digits_split,
    digits_unet,
    generator_training_set,
    load_digits_16,
    sample_batch,
    split_digest,
    to_model_space,
    train,
)

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "models" / "bundled" / "ddim-digits16"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _keys(images: np.ndarray) -> set[bytes]:
    return {im.tobytes() for im in images}


# --- the data and its split ----------------------------------------------------------------------


def test_digits_are_1797_grey_16px_images_over_the_full_range() -> None:
    images, labels = load_digits_16()
    assert images.shape == (1797, SIDE, SIDE) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(NUM_CLASSES))
    assert images.min() == 0 and images.max() == 255  # 0..16 scaled to 0..255, not left dark
    a, _ = load_digits_16()
    assert np.array_equal(a, images)


def test_split_is_deterministic_and_matches_its_recorded_digest() -> None:
    a, b = digits_split(), digits_split()
    assert split_digest(a) == split_digest(b) == SPLIT_DIGEST
    for name in ("test", "val", "pool"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


def test_the_digest_sees_one_image_moved_across_the_split() -> None:
    s = digits_split()
    moved = type(s)(s.test[1:], np.sort(np.append(s.val, s.test[0])), s.labelled, s.pool)
    assert split_digest(moved) != SPLIT_DIGEST


def test_split_parts_are_disjoint_cover_the_data_and_have_the_documented_shots() -> None:
    images, labels = load_digits_16()
    s = digits_split(labels)
    parts = {"test": s.test, "val": s.val, "pool": s.pool, "labelled10": s.labelled[10]}
    names = list(parts)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert not set(parts[x]) & set(parts[y]), f"{x} and {y} overlap"
    assert sorted(np.concatenate(list(parts.values()))) == list(range(len(labels)))
    assert set(s.labelled[5]) <= set(s.labelled[10])
    for shots in (5, 10):
        assert np.bincount(labels[s.labelled[shots]], minlength=10).tolist() == [shots] * 10
    assert (len(s.test), len(s.val)) == (500, 300)
    # no two digits are pixel-identical, so the pixel checks below are exact
    assert len(_keys(images)) == len(images)


def test_generator_trains_on_no_test_or_val_image_and_only_5_shot_labels() -> None:
    images, labels = load_digits_16()
    s = digits_split(labels)
    gen_images, gen_labels, idx = generator_training_set()
    assert not _keys(gen_images) & _keys(images[s.test])
    assert not _keys(gen_images) & _keys(images[s.val])
    known = idx[gen_labels != NULL_LABEL]
    assert sorted(known) == sorted(s.labelled[5])
    assert np.array_equal(gen_labels[gen_labels != NULL_LABEL], labels[known])
    assert len(idx) == 997 and set(idx) == set(s.generator_images)


def test_the_shipped_generator_was_trained_on_this_split() -> None:
    log = json.loads((BUNDLED / "train_log.json").read_text())
    assert log["split_digest"] == SPLIT_DIGEST
    assert log["train_images"] == 997 and log["train_labels"] == 50
    assert log["null_label"] == NULL_LABEL


# --- the model and its batches -------------------------------------------------------------------


def test_model_space_is_three_channel_minus_one_to_one() -> None:
    x = to_model_space(np.array([[[0, 255]] * 2], dtype=np.uint8))
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(x[:, 0], x[:, 2])  # grey in RGB: the channels are one image


def test_the_unet_knows_eleven_classes_and_which_one_means_unknown() -> None:
    unet = digits_unet()
    assert unet.config.num_class_embeds == NUM_CLASSES + 1
    assert unet.config._null_class_label == NULL_LABEL
    assert sum(p.numel() for p in unet.parameters()) < 1_000_000  # the 25 MB repository budget
    with torch.no_grad():
        x = torch.zeros(2, 3, SIDE, SIDE)
        out = unet(x, torch.tensor([5, 5]), class_labels=torch.tensor([3, NULL_LABEL])).sample
    assert out.shape == x.shape
    assert not torch.equal(out[0], out[1])  # the label reaches the prediction


def test_a_batch_is_half_labelled_half_unlabelled_with_label_dropout() -> None:
    images = np.arange(40, dtype=np.uint8)[:, None, None].repeat(SIDE, 1).repeat(SIDE, 2)
    labels = np.full(40, NULL_LABEL)
    labels[:5] = [0, 1, 2, 3, 4]  # five labelled images among forty
    x, lab = sample_batch(np.random.default_rng(0), images, labels, batch=64, label_dropout=0.0)
    assert x.shape == (64, 3, SIDE, SIDE) and lab.shape == (64,)
    # the first half: labelled images only, with their own labels; the second: unknown
    first = ((x[:32, 0, 0, 0] + 1) * 127.5).round().long()
    assert set(first.tolist()) <= set(range(5)) and torch.equal(lab[:32], first)
    assert (lab[32:] == NULL_LABEL).all()
    _, dropped = sample_batch(np.random.default_rng(0), images, labels, 2000, label_dropout=0.1)
    share = float((dropped[:1000] == NULL_LABEL).float().mean())
    assert 0.07 < share < 0.13
    a = sample_batch(np.random.default_rng(3), images, labels, 8, 0.1)
    b = sample_batch(np.random.default_rng(3), images, labels, 8, 0.1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_ema_starts_as_a_copy_and_moves_towards_the_model() -> None:
    model = torch.nn.Linear(2, 1)
    ema = Ema(model, decay=0.999)
    assert ema.model is not model and not ema.model.training
    before = ema.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)  # warm-up: decay (1 + 0) / 10 = 0.1, so 90% of the way at once
    assert torch.allclose(ema.model.weight, before + 0.9, atol=1e-6)
    ema.update(model, step=10_000)  # late: the configured decay
    assert torch.allclose(ema.model.weight, before + 0.9 + 0.1 * 0.001, atol=1e-6)


def test_a_short_run_exports_a_loadable_pipeline_and_resumes(tmp_path: Path) -> None:
    from diffusers import DDIMPipeline

    def args(steps: int) -> argparse.Namespace:
        return argparse.Namespace(
            out=str(tmp_path / "out"), steps=steps, batch=4, lr=1e-3, ema=0.9,
            label_dropout=0.1, seed=0, threads=1, save_every=1, state=str(tmp_path / "state.pt"),
        )  # fmt: skip

    train(args(1))
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["steps"] == 1 and log["split_digest"] == SPLIT_DIGEST
    assert (log["train_images"], log["train_labels"]) == (997, 50)
    assert "state" not in log["args"]  # a local resume path is not part of the model's record
    train(args(2))  # picks up at step 1 from the resume state
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["steps"] == 2
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 2 and len(state["losses"]) == 2
    assert list((tmp_path / "out").rglob("*.safetensors"))
    assert not list((tmp_path / "out").rglob("*.bin"))
    pipe = DDIMPipeline.from_pretrained(tmp_path / "out", use_safetensors=True)
    assert pipe.unet.config.num_class_embeds == NUM_CLASSES + 1
