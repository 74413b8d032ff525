"""The whole run on a real S3 server (SeaweedFS, auth on, loopback): inputs, output, registry,
reports and preview all in a bucket, through the same code path as ``file://``."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from augflow.schemas import parse_request
from augflow.schemas.errors import ExecutionError, StorageError
from augflow.tasks import layout
from augflow.tasks.register import file_uris, get_version, list_versions
from augflow.tasks.storage import Storage, arrow_filesystem, storage_options_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "ray_local")]


def _generate(model: Path, root: str, **extra: Any) -> Any:
    body = {
        "dataset": "s3-gen",
        "operation": {"kind": "generate", "num_images": 4},
        "model": {"id": str(model)},
        "output": root,
        "steps": 2,
        "shard_size": 2,
        "compute": {"micro_batch": 2},
    }
    body.update(extra)
    return parse_request(body)


def _key(root: str, uri: str) -> str:
    return uri.removeprefix(root + "/")


def _flow_run_records(flow_run_id: Any) -> dict[str, Any]:
    """Parameters, logs and artifacts of a flow run, read back from the Prefect server."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            arts = await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                artifact_filter=ArtifactFilter(),
            )
            return {
                "parameters": repr(run.parameters),
                "logs": "\n".join(log.message for log in logs),
                "artifacts": "\n".join(f"{a.key} {a.data} {a.description}" for a in arts),
                "num_artifacts": len(arts),
            }

    return asyncio.run(read())


def test_img2img_and_generate_on_s3_register_readable_versions_and_leak_no_secret(
    tiny_model: Path,
    photos_dir: Path,
    s3_root: str,
    s3_env: Any,
    capfd: Any,
    caplog: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datasets
    from datasets import load_dataset

    # The suite runs with HF_HUB_OFFLINE=1, under which `datasets` refuses every non-local URL,
    # s3:// on loopback included; the hub itself is never contacted (data_files are explicit).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    from augflow.flows.augment import augment

    canary = s3_env.secret
    # Inputs live in the bucket too.
    inputs = Storage(f"{s3_root}/inputs")
    for f in sorted(photos_dir.rglob("*")):
        if f.is_file():
            inputs.write_bytes(str(f.relative_to(photos_dir)), f.read_bytes())
    request = parse_request(
        {
            "dataset": "s3-variants",
            "operation": {"kind": "img2img", "variants": 2, "strength": 0.5},
            "inputs": f"{s3_root}/inputs",
            "model": {"id": str(tiny_model)},
            "output": f"{s3_root}/out",
            "steps": 2,
            "image_size": 16,
            "shard_size": 4,
            # a random tiny model's variants fail the effect and set checks (issue 11, tested
            # in tests/flows/test_quality_gate.py); this test is about what happens around them
            "quality": {
                "max_quarantine_fraction": 0.2,
                "effect_checks": False,
                "set_checks": False,
            },
        }
    )
    state = augment(request, return_state=True)
    outcome = state.result()
    assert outcome.status == "registered"
    assert outcome.num_rows == 10 and outcome.num_quarantined == 2
    root = f"{s3_root}/out"
    storage = Storage(root)
    entry = get_version(storage, "s3-variants", "latest")
    uris = file_uris(storage, entry)
    assert all(u.startswith(root + "/") for u in uris)
    assert outcome.uri == storage.uri(layout.registry_entry("s3-variants", outcome.version))
    assert outcome.report_uri.startswith("s3://") and outcome.preview_uri.startswith("s3://")

    # Downstream reads, one line each.
    ds = load_dataset(
        "parquet",
        data_files=uris,
        storage_options=storage_options_for(root),
        split="train",
    )
    assert len(ds) == 10 and ds[0]["image"].size == (16, 16)
    import pyarrow.dataset as pads
    import ray

    table = pads.dataset(
        [u.removeprefix("s3://") for u in uris], filesystem=arrow_filesystem(root)
    ).to_table()
    assert table.num_rows == 10 and len(set(table.column("row_id").to_pylist())) == 10
    rd = ray.data.read_parquet(uris, filesystem=arrow_filesystem(root))
    assert rd.count() == 10

    gen = augment(_generate(tiny_model, root))
    assert gen.status == "registered" and gen.num_rows == 4
    gen_entry = get_version(storage, "s3-gen", gen.version)
    gen_ds = load_dataset(
        "parquet",
        data_files=file_uris(storage, gen_entry),
        storage_options=storage_options_for(root),
        split="train",
    )
    assert [im.size for im in gen_ds["image"]] == [(16, 16)] * 4

    # The canary secret is nowhere: logs, Prefect records, outputs.
    out, err = capfd.readouterr()
    records = _flow_run_records(state.state_details.flow_run_id)
    assert records.pop("num_artifacts") >= 1
    texts = {
        "stdout/stderr": out + err,
        "log records": caplog.text,
        **records,
        "registry entry": storage.read_bytes(
            layout.registry_entry("s3-variants", outcome.version)
        ).decode(),
        "GX report": storage.read_bytes(_key(root, outcome.report_uri)).decode(),
    }
    # everything beside the report, the GX Data Docs site included
    for k in storage.info_tree(_key(root, outcome.report_uri).rsplit("/", 1)[0]):
        texts[k] = storage.read_bytes(k).decode(errors="replace")
    for f in entry.files + entry.quarantine_files:
        data = storage.read_bytes(f.key)
        meta = pq.read_metadata(io.BytesIO(data))
        texts[f.key] = repr(meta.metadata) + repr(meta.schema)
        assert canary.encode() not in data
    for where, text in texts.items():
        assert canary not in text, f"the S3 secret leaked into {where}"


def test_wrong_credentials_fail_with_a_clear_error(
    tiny_model: Path, s3_root: str, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from augflow.flows.augment import augment

    wrong = "WRONG" + s3_env.secret[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(StorageError) as err:
        augment(_generate(tiny_model, s3_root))
    msg = str(err.value)
    assert s3_env.endpoint in msg and repr(s3_env.bucket) in msg
    assert "AWS_SECRET_ACCESS_KEY" in msg and "AUGFLOW_S3_CREDENTIALS_BLOCK" in msg
    assert wrong not in msg and s3_env.secret not in msg
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret)
    assert Storage(s3_root).list("registry") == []


def test_credentials_from_a_prefect_secret_block(
    tiny_model: Path, s3_root: str, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    from augflow.flows.augment import augment
    from augflow.tasks import credentials

    name = "augflow-s3-" + s3_root.rsplit("/", 1)[1]
    Secret(
        value={
            "aws_access_key_id": s3_env.key,
            "aws_secret_access_key": s3_env.secret,
            "endpoint_url": s3_env.endpoint,
        }
    ).save(name)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AUGFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var)
    monkeypatch.setenv(credentials.BLOCK_ENV, name)
    credentials.clear_cache()
    assert "Prefect block" in credentials.s3_settings().source
    outcome = augment(_generate(tiny_model, s3_root, dataset="s3-block"))
    assert outcome.status == "registered" and outcome.num_rows == 4


def _run_in_threads(*requests: Any) -> list[Any]:
    from augflow.flows.augment import augment

    results: list[Any] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def go(i: int) -> None:
        barrier.wait()
        try:
            results[i] = augment(requests[i])
        except Exception as exc:  # surfaced by the caller's asserts
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_concurrent_runs_of_one_dataset_never_overwrite_each_other(
    tiny_model: Path, s3_root: str, s3_env: Any
) -> None:
    a = _generate(tiny_model, s3_root, dataset="race")
    b = _generate(
        tiny_model, s3_root, dataset="race", operation={"kind": "generate", "num_images": 3}
    )
    ra, rb = _run_in_threads(a, b)
    assert ra.status == rb.status == "registered", (ra, rb)
    assert ra.version != rb.version
    storage = Storage(s3_root)
    versions = {e.version: e for e in list_versions(storage, "race")}
    assert set(versions) == {ra.version, rb.version}
    assert versions[ra.version].num_rows == 4 and versions[rb.version].num_rows == 3

    same = _generate(tiny_model, s3_root, dataset="race-same")
    r1, r2 = _run_in_threads(same, same)
    assert sorted([r1.status, r2.status]) == ["already_registered", "registered"], (r1, r2)
    assert r1.version == r2.version
    (entry,) = list_versions(storage, "race-same")
    rows = Storage(s3_root).read_parquet([f.key for f in entry.files]).column("row_id")
    assert len(set(rows.to_pylist())) == rows.length() == 4


def test_store_outage_mid_run_loses_and_duplicates_nothing(
    tiny_model: Path, s3_root: str, s3_env: Any
) -> None:
    from augflow.flows.augment import augment
    from augflow.tasks.layout import RunLayout

    request = _generate(
        tiny_model,
        s3_root,
        dataset="outage",
        operation={"kind": "generate", "num_images": 12},
        shard_size=1,
    )
    storage = Storage(s3_root)
    commits = RunLayout(request.request_hash).commits
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(r=_try(augment, request)))
    runner.start()
    deadline = time.monotonic() + 120
    while not storage.list(commits) and time.monotonic() < deadline:
        time.sleep(0.2)
    s3_env.stop()
    assert runner.is_alive(), "the run finished before the outage; make it longer"
    try:
        time.sleep(15)
    finally:
        s3_env.start()
    runner.join(timeout=300)
    outcome = box["r"]
    if isinstance(outcome, Exception):  # failed cleanly: nothing registered, a re-run finishes
        assert isinstance(outcome, StorageError | ExecutionError), outcome
        assert "did not answer" in str(outcome)
        assert list_versions(storage, "outage") == []
        outcome = augment(request)
    assert outcome.status == "registered", outcome
    (entry,) = list_versions(storage, "outage")
    row_ids = storage.read_parquet([f.key for f in entry.files]).column("row_id").to_pylist()
    assert len(row_ids) == len(set(row_ids)) == 12 == entry.num_rows


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        return exc
