"""Faults in the object store, injected by a proxy in front of a real SeaweedFS on 127.0.0.1:
throttling and stalls, lost commit responses, a failing multipart part, and a least-privilege
identity. Each run must end with every row exactly once in exactly one registered version."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from faults.checks import assert_one_version, generate_request, photo_pngs
from faults.conftest import BUCKET, INPUTS, OUTPUTS
from faults.fault_models import make_fault_model
from faults.proxy import FaultProxy, Rule

from augflow.schemas import parse_request
from augflow.schemas.errors import StorageError, StoragePermissionError
from augflow.tasks import credentials, layout
from augflow.tasks.preflight import check_output_writable
from augflow.tasks.storage import Storage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "fault_ray")]

COMMIT = r"/commits/[^/?]+\.json$"  # a commit marker's PUT (no query: not a multipart part)


def _augment(request: Any) -> Any:
    from augflow.flows.augment import augment

    return augment(request)


def _uploads(storage: Storage, under: str) -> list[dict]:
    bucket, prefix = under.removeprefix("s3://").split("/", 1)
    out = storage.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/")
    return out.get("Uploads") or []


@pytest.fixture
def fault_model(tmp_path: Path) -> Path:
    return make_fault_model(tmp_path / "model")


def test_throttling_and_stalls_are_ridden_out(s3: FaultProxy, s3_root: str, fault_model: Path):
    # About 3 requests in 10 are refused with 503 SlowDown, 1 in 10 more waits 1.5 s first.
    slow_down = s3.add(Rule("error", probability=0.3, status=503, code="SlowDown"))
    stall = s3.add(Rule("stall", probability=0.15, seconds=1.5))
    outcome = _augment(generate_request(fault_model, s3_root, "throttled"))
    assert outcome.status == "registered"
    assert s3.requests >= 30 and slow_down.hits >= 3 and stall.hits >= 1, (
        slow_down.hits,
        stall.hits,
        s3.requests,
    )
    assert_one_version(Storage(s3_root), "throttled", 6)


def test_lost_commit_responses_are_recognised_not_duplicated(
    s3: FaultProxy, s3_root: str, fault_model: Path
) -> None:
    # The marker's and the registry entry's PUTs land, then the connection is cut before the
    # response: the client retries into its own object.
    marker = s3.add(Rule("drop_response", method="PUT", path=COMMIT, times=1))
    entry = s3.add(Rule("drop_response", method="PUT", path=r"/versions/[^/?]+\.json$", times=1))
    outcome = _augment(generate_request(fault_model, s3_root, "lost-response"))
    assert (marker.hits, entry.hits) == (1, 1)
    assert outcome.status == "registered"
    storage = Storage(s3_root)
    got = assert_one_version(storage, "lost-response", 6)
    commits = storage.list(layout.RunLayout(got.request_hash).commits)
    assert len(commits) == 3 and not [k for k in commits if ".g" in k]  # one marker per shard


def test_a_failing_multipart_part_is_retried_and_no_upload_is_left(
    s3: FaultProxy, s3_root: str, tmp_path: Path
) -> None:
    # 64 noise images of 256x256 are a ~12 MiB shard file: three 5 MiB parts (fault_ray sets
    # AUGFLOW_S3_PART_SIZE_MB=5 for the workers). Part 2 fails 4 times: more than botocore's own
    # retries, so augflow's per-part retry has to carry it.
    model = make_fault_model(tmp_path / "model", sample_size=256)
    part = s3.add(
        Rule(
            "error",
            method="PUT",
            path=r"[?&]partNumber=2(&|$)",
            status=500,
            code="InternalError",
            times=4,
        )
    )
    request = generate_request(
        model, s3_root, "multipart", operation={"kind": "generate", "num_images": 64}, shard_size=64
    )
    outcome = _augment(request)
    assert outcome.status == "registered"
    assert part.hits == 4
    storage = Storage(s3_root)
    entry = assert_one_version(storage, "multipart", 64)
    assert entry.files[0].bytes > 10 * 2**20  # it really went up in parts
    assert _uploads(storage, s3_root) == []


def test_an_upload_whose_part_keeps_failing_is_aborted(
    s3: FaultProxy, s3_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUGFLOW_S3_PART_SIZE_MB", "5")
    monkeypatch.setenv("AUGFLOW_S3_RETRY_SECONDS", "2")
    credentials.clear_cache()
    storage = Storage(s3_root)
    s3.add(
        Rule("error", method="PUT", path=r"[?&]partNumber=2(&|$)", status=500, code="InternalError")
    )
    with pytest.raises(StorageError, match="upload part 2"):
        storage.write_bytes("big.bin", os.urandom(11 * 2**20))
    assert _uploads(storage, s3_root) == []  # aborted, not left in flight
    assert not storage.exists("big.bin")


def test_least_privilege_runs_the_whole_flow_and_nothing_else(
    s3: FaultProxy,
    fault_store: Any,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    # The admin puts photos under inputs/; the run then uses an identity that may only read
    # inputs/ and read and write outputs/ (infra/seaweedfs/identities.least-privilege...).
    tag = request.node.name[:20] + str(int(time.time()))
    inputs = f"s3://{BUCKET}/{INPUTS}/{tag}"
    output = f"s3://{BUCKET}/{OUTPUTS}/{tag}"
    admin = Storage(inputs)
    for i, png in enumerate(photo_pngs(4, size=16)):
        admin.write_bytes(f"p{i}.png", png)
    key, secret = fault_store.limited
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    credentials.clear_cache()

    req = parse_request(
        {
            "dataset": "least-privilege",
            "operation": {"kind": "img2img", "variants": 2, "strength": 0.5},
            "inputs": inputs,
            "model": {"id": str(tiny_model)},
            "output": output,
            "steps": 2,
            "image_size": 16,
            "shard_size": 4,
            "execution": {"workers": 1, "device": "cpu"},
            # a random tiny model's variants fail issue 11's effect and set checks; not tested here
            "quality": {"effect_checks": False, "set_checks": False},
        }
    )
    outcome = _augment(req)
    assert outcome.status == "registered"
    assert_one_version(Storage(output), "least-privilege", 8)

    # ...and that identity cannot write anywhere else, nor read outside its prefixes.
    for where in (f"s3://{BUCKET}/elsewhere", inputs):
        start = time.monotonic()
        with pytest.raises(StoragePermissionError, match="access denied") as err:
            check_output_writable(where)
        assert "not writable" in str(err.value) and time.monotonic() - start < 5
        assert secret not in str(err.value)
    with pytest.raises(StoragePermissionError):
        Storage(f"s3://{BUCKET}/elsewhere").write_bytes("x.bin", b"1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fault_store.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fault_store.secret)
    credentials.clear_cache()
    assert not Storage(f"s3://{BUCKET}/elsewhere").exists("x.bin")
    left = Storage(f"s3://{BUCKET}/{INPUTS}").info_tree(tag)
    assert sorted(left) == [f"{tag}/p{i}.png" for i in range(4)]  # the run wrote nothing there
