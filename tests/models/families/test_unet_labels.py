"""Class-conditional pixel UNets on sources (issue 13): img2img, denoise and upscale condition on
each item's label, fall back to the model's null label, and refuse what they cannot condition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dummy_models import items_for, make_request, make_tiny_ddpm, photo

from augflow.models.runner import AugmentModel

CLASSES = 3  # the tiny model's num_class_embeds


@pytest.fixture(scope="module")
def cond_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Classes 0..2, no null label."""
    return make_tiny_ddpm(
        tmp_path_factory.mktemp("m") / "cond", num_class_embeds=CLASSES, scheduler="ddim"
    )


@pytest.fixture(scope="module")
def null_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights, declaring class 2 as "label unknown" the way the bundled digits model
    does (``_null_class_label`` in unet/config.json)."""
    path = make_tiny_ddpm(
        tmp_path_factory.mktemp("m") / "null", num_class_embeds=CLASSES, scheduler="ddim"
    )
    config = path / "unet" / "config.json"
    body = json.loads(config.read_text())
    body["_null_class_label"] = CLASSES - 1
    config.write_text(json.dumps(body))
    return path


OPS = [
    {"kind": "img2img", "strength": 0.6},
    {"kind": "denoise", "noise_level": 25},
    {"kind": "upscale", "factor": 2, "strength": 0.3},
]


def _labelled(model_dir: Path, op: dict, labels: list[int | None]):
    # one image per model call: an item computed in a pair and then alone gets the same bytes
    # only when the batch shape is the same (the CPU default would batch the pair)
    req = make_request(model_dir, op, compute={"micro_batch": 1})
    firsts = [it for it in items_for(req, len(labels)) if it.variant == 0]
    items = [
        it.model_copy(update={"class_label": lab}) for it, lab in zip(firsts, labels, strict=True)
    ]
    return AugmentModel(req, "cpu"), items


@pytest.mark.parametrize("op", OPS, ids=lambda o: o["kind"])
def test_the_source_label_conditions_the_model(cond_dir: Path, op: dict) -> None:
    src = photo(16, 16, seed=1)
    model, items = _labelled(cond_dir, op, [0, 1])
    # the same item (same seed) under two labels: only the label differs
    same_seed = [items[0], items[0].model_copy(update={"class_label": 1})]
    outs = model(same_seed, [src, src])
    assert all(o.error is None for o in outs), [o.error for o in outs]
    assert outs[0].png != outs[1].png
    again = model([items[0]], [src])
    assert again[0].png == outs[0].png  # deterministic: the difference is the label's


@pytest.mark.parametrize("op", OPS, ids=lambda o: o["kind"])
def test_an_unlabelled_source_gets_the_null_label(null_dir: Path, op: dict) -> None:
    src = photo(16, 16, seed=2)
    model, items = _labelled(null_dir, op, [None])
    as_null = items[0].model_copy(update={"class_label": CLASSES - 1})
    as_zero = items[0].model_copy(update={"class_label": 0})
    none_out, null_out, zero_out = (model([it], [src])[0] for it in (items[0], as_null, as_zero))
    assert none_out.error is None and none_out.png == null_out.png
    assert none_out.png != zero_out.png


def test_no_label_and_no_null_label_is_a_request_error(cond_dir: Path) -> None:
    model, items = _labelled(cond_dir, OPS[0], [None, 7, 1])
    outs = model(items, [photo(16, 16)] * 3)
    # the runner isolates the failing items; their reason is the RequestError's message
    assert outs[0].png is None and "RequestError" in (outs[0].error or "")
    assert "no null label" in (outs[0].error or "") and "`label` column" in (outs[0].error or "")
    assert outs[1].png is None and "outside the classes 0..2" in (outs[1].error or "")
    assert outs[2].error is None and outs[2].png is not None
