"""Every key under an output root comes from tasks/layout.py; names and versions cannot climb out."""

from __future__ import annotations

from pathlib import Path

import pytest

from augflow.schemas.errors import DatasetRefError
from augflow.tasks import layout
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage

HASH = "0123456789abcdef" * 4


def test_run_keys() -> None:
    run = RunLayout(HASH)
    assert run.run == "runs/0123456789abcdef"
    assert run.data_file("s1") == "runs/0123456789abcdef/shards/s1.parquet"
    assert run.quarantine_file("s1") == "runs/0123456789abcdef/quarantine/s1.parquet"
    assert run.commit_marker("s1") == "runs/0123456789abcdef/commits/s1.json"
    assert run.commit_marker("s1").startswith(run.commits + "/")
    assert run.image_file("s1", "r9") == "runs/0123456789abcdef/images/s1/r9.png"
    assert run.preview("v1") == "runs/0123456789abcdef/preview-v1.png"
    assert run.quality_report("v1") == "runs/0123456789abcdef/v-v1/quality/report.md"
    assert run.quality_json("v1") == "runs/0123456789abcdef/v-v1/quality/report.json"
    assert run.quality_report("v1").startswith(run.quality_dir("v1") + "/")
    assert run.data_docs_index("v1") == "runs/0123456789abcdef/v-v1/quality/data-docs/index.html"
    assert run.data_docs_index("v1").startswith(run.data_docs_dir("v1") + "/")
    # a report's key or URI finds the Data Docs beside it without knowing the version
    assert layout.data_docs_beside(run.quality_report("v1")) == run.data_docs_index("v1")
    assert layout.data_docs_beside("s3://b/p/" + run.quality_report("v1")) == (
        "s3://b/p/" + run.data_docs_index("v1")
    )


def test_requests_sharing_a_hash_prefix_share_a_run_folder_only_by_the_first_16_chars() -> None:
    assert RunLayout(HASH).run == RunLayout("0123456789abcdef" + "f" * 48).run
    assert RunLayout(HASH).run != RunLayout("1123456789abcdef" + "0" * 48).run


@pytest.mark.parametrize("bad", ["short", "../../../../etc/passwd", "0123456789abcdef/..", ""])
def test_run_layout_refuses_what_is_not_a_hash(bad: str) -> None:
    with pytest.raises(ValueError, match="not a request hash"):
        RunLayout(bad)


def test_registry_keys() -> None:
    assert layout.registry_dataset("cats") == "registry/cats"
    assert layout.registry_versions("cats") == "registry/cats/versions"
    assert layout.registry_entry("cats", "v1") == "registry/cats/versions/v1.json"
    assert layout.dataset_name_of("registry/cats") == "cats"
    assert layout.dataset_name_of(layout.registry_entry("cats", "v1")) == "cats"


@pytest.mark.parametrize(
    "make",
    [
        lambda: layout.registry_entry("../x", "v1"),
        lambda: layout.registry_entry("cats", "../v1"),
        lambda: layout.registry_entry("cats", "latest"),
        lambda: layout.registry_dataset("Cats"),
        lambda: RunLayout(HASH).preview("../../x"),
        lambda: RunLayout(HASH).quality_dir(".hidden"),
    ],
)
def test_names_and_versions_are_checked_before_they_become_keys(make) -> None:
    with pytest.raises(DatasetRefError):
        make()


def test_shard_id_of_inverts_data_file() -> None:
    run = RunLayout(HASH)
    assert layout.shard_id_of(run.data_file("abc123")) == "abc123"
    assert layout.shard_id_of("abc123.parquet") == "abc123"


def test_keys_resolve_below_the_storage_root(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    run = RunLayout(HASH)
    keys = [
        run.data_file("s"),
        run.quarantine_file("s"),
        run.commit_marker("s"),
        run.image_file("s", "r"),
        run.preview("v"),
        run.quality_report("v"),
        run.quality_json("v"),
        run.data_docs_index("v"),
        layout.registry_entry("cats", "v"),
        layout.DATASET_CARD,
    ]
    for key in keys:
        assert Path(storage.path(key)).resolve().is_relative_to(tmp_path.resolve())
        assert storage.uri(key) == f"{storage.root}/{key}"


def test_recomputed_generations_have_their_own_keys() -> None:
    run = RunLayout(HASH)
    tag = layout.generation_tag(2, "ab" * 32)
    assert tag == "g2-abababababab"
    assert run.commit_marker("s1", 2) == "runs/0123456789abcdef/commits/s1.g2.json"
    assert run.data_file("s1", tag) == "runs/0123456789abcdef/shards/g2-abababababab/s1.parquet"
    assert run.quarantine_file("s1", tag).endswith("/quarantine/g2-abababababab/s1.parquet")
    assert layout.shard_id_of(run.data_file("s1", tag)) == "s1"  # refreshes find the shard
    assert layout.parse_commit_marker(run.commit_marker("s1")) == ("s1", 0)
    assert layout.parse_commit_marker(run.commit_marker("s1", 2)) == ("s1", 2)
    assert layout.parse_commit_marker(run.commit_marker("s1") + ".tmp-" + "0" * 32) is None
    assert layout.preflight_probe("t") == ".preflight/t"
