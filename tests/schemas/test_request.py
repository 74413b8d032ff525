from __future__ import annotations

import pytest

from augflow.schemas import AugmentRequest, RequestError, parse_request
from augflow.schemas.records import ShardSpec, SourceItem, iter_work_items
from augflow.schemas.rows import ROW_SCHEMA


def _body(**over: object) -> dict:
    body = {
        "dataset": "cats",
        "operation": {"kind": "generate", "num_images": 4},
        "model": {"id": "m"},
    }
    body.update(over)
    return body


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"dataset": "Cats!"}, "dataset", "lowercase"),
        ({"operation": {"kind": "blur"}}, "operation.kind", "generate, img2img, denoise, upscale"),
        ({"operation": {"num_images": 3}}, "operation.kind", "needs `kind`"),
        ({"operation": {"kind": "img2img", "strength": 0}}, "operation.strength", "greater than 0"),
        ({"operation": {"kind": "upscale", "factor": 3}}, "operation.factor", "2 or 4"),
        ({"operation": {"kind": "denoise"}}, "inputs", "needs `inputs`"),
        ({"inputs": "/photos"}, "inputs", "takes no inputs"),
        ({"image_size": 30}, "image_size", "multiple of 8"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"model": {"id": "m", "scheduler": "magic"}}, "model.scheduler", "ddim"),
        ({"output": "s3://AKIA:secret@bucket/x"}, "output", "must not carry credentials"),
        ({"aws_secret_access_key": "x"}, "aws_secret_access_key", "not a field"),
        ({"compute": {"micro_batch": 0}}, "compute.micro_batch", "greater than or equal to 1"),
        ({"execution": {"batch_size": 4}}, "execution", "moved to compute.micro_batch"),
        (
            {"operation": {"kind": "upscale", "tile": 64, "tile_overlap": 32}},
            "operation",
            "less than half",
        ),
    ],
)
def test_bad_fields_are_named(over: dict, field: str, words: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(_body(**over))
    assert err.value.field == field
    assert words in str(err.value)
    assert "secret@" not in str(err.value)


def test_request_is_frozen_and_forbids_extras() -> None:
    r = parse_request(_body())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is internal
        r.steps = 3  # type: ignore[misc]
    assert AugmentRequest.model_config["extra"] == "forbid"


def test_hash_ignores_how_but_not_what() -> None:
    base = parse_request(_body())
    same = parse_request(
        _body(output="s3://b/elsewhere", execution={"workers": 8, "max_retries": 5})
    )
    other = parse_request(_body(steps=49))
    batched = parse_request(_body(compute={"micro_batch": 4}))
    assert base.request_hash == same.request_hash
    assert base.request_hash != other.request_hash
    # batching can change bytes, so it is part of what the hash covers
    assert base.request_hash != batched.request_hash


def test_work_items_are_deterministic_and_distinct() -> None:
    r = parse_request(_body(operation={"kind": "img2img", "variants": 3}, inputs="/x"))
    shard = ShardSpec(
        shard_id="s",
        index=0,
        sources=(
            SourceItem(source_id="a.png", uri="file:///x/a.png"),
            SourceItem(source_id="b.png", uri="file:///x/b.png"),
        ),
    )
    a = list(iter_work_items(r, shard))
    b = list(iter_work_items(r, shard))
    assert a == b and len(a) == 6
    assert len({i.row_id for i in a}) == 6 and len({i.seed for i in a}) == 6
    other = parse_request(_body(operation={"kind": "img2img", "variants": 3}, inputs="/x", seed=1))
    assert {i.seed for i in iter_work_items(other, shard)}.isdisjoint({i.seed for i in a})


def test_generate_cycles_class_labels() -> None:
    r = parse_request(
        _body(operation={"kind": "generate", "num_images": 5, "class_labels": [3, 7]})
    )
    items = list(iter_work_items(r, ShardSpec(shard_id="s", index=0, first=0, count=5)))
    assert [i.class_label for i in items] == [3, 7, 3, 7, 3]


def test_row_schema_carries_hf_image_feature() -> None:
    import json

    meta = json.loads(ROW_SCHEMA.metadata[b"huggingface"])
    assert meta["info"]["features"]["image"] == {"_type": "Image"}
    assert set(meta["info"]["features"]) == set(ROW_SCHEMA.names)


# --- generate/inpaint fields of text-conditioned models ---------------------------------------


@pytest.mark.parametrize(
    ("op", "field", "words"),
    [
        (
            {"prompt_template": "a {thing}", "class_names": ["x"]},
            "operation.prompt_template",
            "{label}",
        ),
        ({"prompt_template": "a {label}"}, "operation", "needs class_names"),
        ({"class_names": ["a"], "class_labels": [3]}, "operation", "no entry in class_names"),
        ({"class_names": []}, "operation.class_names", "non-empty"),
        ({"class_names": ["a"], "prompts": ["b"]}, "operation", "not both"),
    ],
)
def test_generate_text_fields_are_validated(op, field, words) -> None:
    body = {
        "dataset": "d",
        "model": {"id": "m"},
        "operation": {"kind": "generate", "num_images": 1, **op},
    }
    with pytest.raises(RequestError) as e:
        parse_request(body)
    assert e.value.field == field and words in str(e.value)


def test_inpaint_needs_exactly_one_mask() -> None:
    base = {"dataset": "d", "model": {"id": "m"}, "inputs": "/x"}
    for op in ({"kind": "inpaint"}, {"kind": "inpaint", "mask": "a.png", "mask_column": "m"}):
        with pytest.raises(RequestError, match="exactly one of mask"):
            parse_request({**base, "operation": op})
    with pytest.raises(RequestError) as e:
        parse_request({**base, "operation": {"kind": "inpaint", "mask": "s3://k:s@b/m.png"}})
    assert e.value.field == "operation.mask"


def test_new_fields_leave_old_request_hashes_alone() -> None:
    req = parse_request(
        {"dataset": "d", "model": {"id": "m"}, "operation": {"kind": "generate", "num_images": 1}}
    )
    op = req.hashed_fields()["operation"]
    assert "class_names" not in op and "prompt_template" not in op
    with_names = req.model_copy(
        update={"operation": req.operation.model_copy(update={"class_names": ["a"]})}
    )
    assert with_names.request_hash != req.request_hash
