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


# --- complete validation: finite numbers, bounded sizes, hostile request files -----------------


def _request_models() -> list[type]:
    from augflow.schemas.request import Frozen

    out, todo = [], [Frozen]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


_BODIES = {
    "generate": _body(),
    "img2img": _body(operation={"kind": "img2img"}, inputs="/x"),
    "denoise": _body(operation={"kind": "denoise"}, inputs="/x"),
    "upscale": _body(operation={"kind": "upscale"}, inputs="/x"),
    "inpaint": _body(operation={"kind": "inpaint", "mask": "m.png"}, inputs="/x"),
}


def _float_fields() -> list[tuple[str, dict, str]]:
    """(case, body, dotted field) for every float field of every request model."""
    from augflow.schemas import request as rq

    sections = {"quality": rq.QualityThresholds, "compute": rq.ComputeSpec}
    sections |= {"execution": rq.ExecutionSpec, "model": rq.ModelSpec}
    cases = []
    for name, field in rq.AugmentRequest.model_fields.items():
        if "float" in str(field.annotation):
            cases.append(("generate", name))
    for section, model in sections.items():
        for name, field in model.model_fields.items():
            if "float" in str(field.annotation):
                cases.append(("generate", f"{section}.{name}"))
    for op in (rq.GenerateOp, rq.Img2ImgOp, rq.DenoiseOp, rq.UpscaleOp, rq.InpaintOp):
        kind = op.model_fields["kind"].default
        for name, field in op.model_fields.items():
            if "float" in str(field.annotation):
                cases.append((kind, f"operation.{name}"))
    return [(kind, _BODIES[kind], path) for kind, path in cases]


def test_every_request_model_refuses_nan_and_inf() -> None:
    assert all(m.model_config.get("allow_inf_nan") is False for m in _request_models())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused_in_every_float_field(value: float) -> None:
    import copy

    fields = _float_fields()
    assert len(fields) >= 8  # guidance_scale, quality.*, strengths, noise_level, ...
    for _kind, body, path in fields:
        data = copy.deepcopy(body)
        *parents, leaf = path.split(".")
        target = data
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
        with pytest.raises(RequestError) as err:
            parse_request(data)
        assert err.value.field == path, (path, str(err.value))
        assert "finite" in str(err.value), path


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"dataset": "ok-name\n"}, "dataset", "not a valid"),
        ({"dataset": "a/../b"}, "dataset", "not a valid"),
        ({"inputs": "/photos\x00/x"}, "inputs", "control character"),
        ({"output": "out\nput"}, "output", "control character"),
        ({"model": {"id": "m\x00"}}, "model.id", "control character"),
        ({"inputs": ""}, "inputs", "at least 1"),
        ({"operation": {"kind": "generate", "num_images": 1, "prompts": ["p"] * 10_001}},
         "operation.prompts", "at most 10000"),
        ({"operation": {"kind": "generate", "num_images": 1, "class_labels": [-1]}},
         "operation.class_labels.0", "greater than or equal to 0"),
        ({"operation": {"kind": "generate", "num_images": 1, "class_labels": [2**40]}},
         "operation.class_labels.0", "less than or equal to"),
        ({"operation": {"kind": "generate", "num_images": 1, "prompts": ["x" * 10_001]}},
         "operation.prompts.0", "at most 10000"),
        ({"quality": {"min_side": 0}}, "quality.min_side", "greater than or equal to 1"),
        ({"quality": {"max_aspect_ratio": 0.5}}, "quality.max_aspect_ratio", "greater than"),
        ({"steps": True}, "steps", "valid integer"),
        ({"steps": "4"}, "steps", "valid integer"),
        ({"guidance_scale": False}, "guidance_scale", "valid number"),
    ],
)  # fmt: skip
def test_bounds_and_plain_text(over: dict, field: str, words: str | None) -> None:
    body = _body(**over)
    if "inputs" in over:
        body["operation"] = {"kind": "denoise"}
    with pytest.raises(RequestError) as err:
        parse_request(body)
    assert err.value.field == field
    if words:
        assert words in str(err.value)


def test_degenerate_limits_default_and_leave_old_hashes_alone() -> None:
    from augflow.schemas.request import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MIN_SIDE

    req = parse_request(_body())
    assert (req.quality.min_side, req.quality.max_aspect_ratio) == (16, 10.0)
    assert (DEFAULT_MIN_SIDE, DEFAULT_MAX_ASPECT_RATIO) == (16, 10.0)
    assert "min_side" not in req.hashed_fields()["quality"]
    stricter = parse_request(_body(quality={"min_side": 64}))
    assert stricter.request_hash != req.request_hash  # a changed limit can change the rows


# --- request files ------------------------------------------------------------------------------

GOOD_YAML = "dataset: cats\noperation: {kind: generate, num_images: 2}\nmodel: {id: m}\n"


def _file(tmp_path, content: bytes | str, name: str = "req.yaml"):
    from pathlib import Path

    p = Path(tmp_path) / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


def test_a_good_file_loads_with_or_without_a_utf8_bom(tmp_path) -> None:
    from augflow.schemas import load_request

    assert load_request(_file(tmp_path, GOOD_YAML)).dataset == "cats"
    bom = _file(tmp_path, b"\xef\xbb\xbf" + GOOD_YAML.encode(), "bom.yaml")
    assert load_request(bom).dataset == "cats"
    js = _file(
        tmp_path,
        '{"dataset": "cats", "operation": {"kind": "generate", "num_images": 2}, '
        '"model": {"id": "m"}}',
        "req.json",
    )
    assert load_request(js).dataset == "cats"


@pytest.mark.parametrize(
    ("content", "name", "words"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "req.yaml", "binary file"),
        ("dataset: caf\xe9\n".encode("latin-1"), "req.yaml", "not UTF-8 text: byte 0xe9 on line 1"),
        ("dataset: cats\n".encode("utf-16"), "req.yaml", "UTF-16"),
        (b"", "req.yaml", "is empty"),
        (b"   \n# only a comment\n", "req.yaml", "is empty"),
        (b"- a\n- b\n", "req.yaml", "expected a mapping of fields, got list"),
        (b"just a string\n", "req.yaml", "expected a mapping of fields, got str"),
        (b"dataset: a\n---\ndataset: b\n", "req.yaml", "not valid YAML"),
        (b"dataset: a\ndataset: b\n", "req.yaml", "key 'dataset' appears twice"),
        (b"a: &a [*a]\n", "req.yaml", "a cycle"),
        (b"dataset: !!python/object/apply:os.system ['true']\n", "req.yaml", "not valid YAML"),
        (b"dataset: [\n", "req.yaml", "not valid YAML"),
        (b"[" * 100_000, "req.yaml", "nested too deeply"),
        (b"[" * 100_000, "req.json", "nested too deeply"),
        (b'{"dataset": "a", "dataset": "b"}', "req.json", "appears twice"),
        (b"{'dataset': 1}", "req.json", "not valid JSON"),
        (b'{"seed": ' + b"1" * 5000 + b"}", "req.json", "not valid JSON"),
        (b"seed: " + b"1" * 5000 + b"\n", "req.yaml", "not valid YAML"),
        (
            b'{"dataset": "cats", "operation": {"kind": "generate", "num_images": 2, '
            b'"prompts": ["a \\ud800 cat"]}, "model": {"id": "m"}}',
            "req.json",
            "`operation.prompts.0`: contains text that is not valid Unicode",
        ),
        (
            b'{"dataset": "cats", "operation": {"kind": "generate", "num_images": 2}, '
            b'"model": {"id": "m"}, "guidance_scale": NaN}',
            "req.json",
            "`guidance_scale`: Input should be a finite number",
        ),
        (
            GOOD_YAML.encode() + b"guidance_scale: .nan\n",
            "req.yaml",
            "`guidance_scale`: Input should be a finite number",
        ),
        (
            GOOD_YAML.encode() + b"steps: on\n",
            "req.yaml",
            "`steps`: Input should be a valid integer",
        ),
    ],
)
def test_hostile_request_files_are_refused_by_name(
    tmp_path, content: bytes, name: str, words: str
) -> None:
    from augflow.schemas import load_request

    with pytest.raises(RequestError) as err:
        load_request(_file(tmp_path, content, name))
    assert words in str(err.value)


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path) -> None:
    import time

    from augflow.schemas import load_request

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    start = time.perf_counter()
    with pytest.raises(RequestError, match="expands to more than"):
        load_request(_file(tmp_path, "\n".join(lines) + "\n"))
    assert time.perf_counter() - start < 2.0  # 9**10 values were never built


def test_an_oversized_or_special_file_is_refused_unread(tmp_path) -> None:
    import os

    from augflow.schemas import load_request
    from augflow.schemas.request import MAX_REQUEST_BYTES

    big = _file(tmp_path, GOOD_YAML + "#" * MAX_REQUEST_BYTES, "big.yaml")
    with pytest.raises(RequestError, match="larger than 1024 KiB"):
        load_request(big)
    os.mkfifo(tmp_path / "fifo.yaml")  # reading it would block
    with pytest.raises(RequestError, match="not a regular file"):
        load_request(tmp_path / "fifo.yaml")
    with pytest.raises(RequestError, match="not a regular file"):
        load_request(tmp_path)
    with pytest.raises(RequestError, match="does not exist"):
        load_request(tmp_path / "missing.yaml")


def test_yaml_aliases_that_stay_small_are_fine(tmp_path) -> None:
    from augflow.schemas import load_request

    text = "defaults: &op {kind: generate, num_images: 2}\ndataset: cats\nmodel: {id: m}\n"
    with pytest.raises(RequestError, match="`defaults`"):  # aliases work; unknown keys do not
        load_request(_file(tmp_path, text + "operation: *op\n"))
    shared = "model: &m {id: m}\ndataset: cats\noperation: {kind: generate, num_images: 2}\n"
    assert load_request(_file(tmp_path, shared, "ok.yaml")).model.id == "m"
