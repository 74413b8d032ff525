"""Encoding overlaps compute (models/runner.py): ``submit`` returns once a call's micro-batches
are computed, while their PNGs and metrics are made on the encode threads — the same bytes and
metrics as encoding inline."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

from dummy_models import items_for, make_request

import augflow.models.runner as runner
from augflow.models.runner import AugmentModel


def _request(ddpm_dir: Path, n: int = 6):
    return make_request(ddpm_dir, {"kind": "generate", "num_images": n}, compute={"micro_batch": 2})


def test_encode_threads_give_the_same_bytes_and_metrics(ddpm_dir: Path) -> None:
    req = _request(ddpm_dir)
    items = items_for(req, 0)
    inline = AugmentModel(req, "cpu")(items, [None] * len(items))
    threaded = AugmentModel(req, "cpu", encode_threads=3)(items, [None] * len(items))
    assert [o.error for o in threaded] == [None] * len(items)
    assert [o.png for o in threaded] == [o.png for o in inline]
    assert [o.metrics for o in threaded] == [o.metrics for o in inline]


def test_submit_returns_before_the_encodings_finish(ddpm_dir: Path, monkeypatch) -> None:
    req = _request(ddpm_dir, 4)
    items = items_for(req, 0)
    release = threading.Event()
    real = runner.encode_png_array

    def held(pixels):  # every encoding waits until the caller got its PendingOutputs back
        if not release.wait(60):
            raise TimeoutError("submit waited for the encoder")
        return real(pixels)

    monkeypatch.setattr(runner, "encode_png_array", held)
    model = AugmentModel(req, "cpu", encode_threads=2)
    pending = model.submit(items, [None] * 4)
    assert model.first_batch_done_at is not None  # computed ...
    release.set()  # ... and only now encoded
    outs = pending.result()
    assert [o.error for o in outs] == [None] * 4
    assert all(o.png and o.metrics and o.metrics["decodable"] for o in outs)


def test_an_encoding_failure_fails_only_its_item(ddpm_dir: Path, monkeypatch) -> None:
    req = _request(ddpm_dir, 4)
    calls = itertools.count()
    real = runner.encode_png_array

    def flaky(pixels):
        if next(calls) == 1:
            raise OSError("encoder gave up")
        return real(pixels)

    monkeypatch.setattr(runner, "encode_png_array", flaky)
    outs = AugmentModel(req, "cpu", encode_threads=2)(items_for(req, 0), [None] * 4)
    errors = [o.error for o in outs if o.error]
    assert errors == ["OSError: encoder gave up"]
    assert sum(o.png is not None for o in outs) == 3
