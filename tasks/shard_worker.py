"""Process one shard end to end: read its sources, run the model, write the shard's Parquet files
and commit them with a marker written last. Plain Python: the Ray actor in
:mod:`augflow.tasks.execute` holds one of these, and tests can drive it directly.

Every work item ends as one output row or one quarantine row. A source that cannot be used (not
an image, corrupt, too large, too small, too elongated, an animation, unreadable, rejected by the
listing) is quarantined at the ``decode`` stage with the reason; decoding has a deadline per file.
A shard whose every item was quarantined writes no data file (a 0-row Parquet file breaks
readers): its marker has ``data_file: null`` and only the quarantine file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from augflow.models.images import MAX_FILE_BYTES, Decoded, DecodeLimits, decode_within
from augflow.models.loading import LoadedPipeline
from augflow.models.runner import AugmentModel, PendingOutputs
from augflow.schemas.errors import ImageRejected, StorageError
from augflow.schemas.records import ShardResult, ShardSpec, WorkItem, iter_work_items
from augflow.schemas.request import AugmentRequest
from augflow.schemas.rows import QUARANTINE_SCHEMA, ROW_SCHEMA
from augflow.tasks import progress
from augflow.tasks.commits import ShardFiles, commit_shard, shard_state
from augflow.tasks.layout import RunLayout
from augflow.tasks.storage import Storage, open_uri, parquet_bytes

log = logging.getLogger(__name__)


class ShardWorker:
    """Holds one loaded model; turns shards into committed Parquet files."""

    def __init__(
        self,
        request: AugmentRequest,
        device: str | None = None,
        *,
        loaded: LoadedPipeline | None = None,
        encode_threads: int = 0,
        compute_lock: threading.Lock | None = None,
    ) -> None:
        # loaded / encode_threads: see AugmentModel (a warm actor's pipeline; overlap encoding).
        # compute_lock: workers sharing one loaded pipeline (a warm actor) share its lock too.
        self.request = request
        self.storage = Storage(request.output)
        self.layout = RunLayout(request.request_hash)
        self.model = AugmentModel(
            request,
            device=device or request.execution.device,
            read_uri=_read_uri,
            loaded=loaded,
            encode_threads=encode_threads,
        )
        # One shard computes at a time: the model holds the device (and on CPU all its threads).
        self._compute_lock = compute_lock or threading.Lock()
        q = request.quality
        self.limits = DecodeLimits(min_side=q.min_side, max_aspect_ratio=q.max_aspect_ratio)
        self._params = json.dumps(
            {
                "operation": request.operation.model_dump(mode="json"),
                "guidance_scale": request.guidance_scale,
                "image_size": request.image_size,
                # what actually ran: the model's default when the request left steps unset
                "steps": self.model.steps,
                "compute": request.compute.model_dump(mode="json")
                | {"micro_batch": self.model.micro_batch},
            },
            sort_keys=True,
        )

    @property
    def compute_lock(self) -> threading.Lock:
        return self._compute_lock

    def process(self, shard: ShardSpec) -> ShardResult:
        # Committed and sound: skip. Committed but damaged: recompute and commit again.
        state = shard_state(self.storage, self.layout, shard.shard_id)
        if state.committed:
            assert state.marker is not None
            return ShardResult.from_marker(state.marker, "skipped")
        if state.damage:
            log.warning("shard %s is damaged, recomputing it: %s", shard.shard_id, state.damage)
        start = time.perf_counter()
        items = list(iter_work_items(self.request, shard))
        rows: list[dict[str, Any]] = []
        quarantine: list[dict[str, Any]] = []
        # Reading sources and writing results happen outside the lock, so when the actor runs two
        # shards at once (max_concurrency) one computes while the other reads or uploads.
        sources = self._load_sources(shard)
        notes = {k: v.note for k, v in sources.items() if isinstance(v, Decoded) and v.note}
        computed: list[tuple[list[WorkItem], PendingOutputs]] = []
        with self._compute_lock:
            for batch, images in self._batches(shard, items, sources, quarantine):
                pending = self.model.submit(batch, images, on_batch=self._progress(shard))
                computed.append((batch, pending))
        # The lock covers the device work only: the next shard computes while this one's last
        # PNGs encode (on the model's encode threads) and its files upload.
        for batch, pending in computed:
            outputs = pending.result()
            for item, out in zip(batch, outputs, strict=True):
                if out.error is not None or out.png is None:
                    quarantine.append(
                        self._quarantine_row(shard, item, "model", out.error or "no output")
                    )
                else:
                    note = notes.get(item.source_id)
                    rows.append(self._row(shard, item, out.png, out.metrics or {}, note))
        if self.request.write_image_files:
            for row in rows:
                self.storage.write_bytes(
                    self.layout.image_file(shard.shard_id, row["row_id"]), row["image"]["bytes"]
                )
        files = ShardFiles(
            shard_id=shard.shard_id,
            # never a 0-row data file: `datasets` and Ray Data fail on one
            data=(
                parquet_bytes(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), row_group_size=256)
                if rows
                else None
            ),
            quarantine=(
                parquet_bytes(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA))
                if quarantine
                else None
            ),
            num_rows=len(rows),
            num_quarantined=len(quarantine),
            model_revision=self.model.model_revision,
            scheduler=self.model.scheduler_name,
            row_ids_sha256=hashlib.sha256("".join(r["row_id"] for r in rows).encode()).hexdigest(),
        )
        # Files first, the marker last (commits.commit_shard), never overwriting a marker.
        marker = commit_shard(self.storage, self.layout, files, previous=state)
        return ShardResult.from_marker(marker, "computed", time.perf_counter() - start)

    def _progress(self, shard: ShardSpec) -> Callable[[int], None]:
        # per-micro-batch progress for the live display (a no-op when nobody listens)
        return progress.rows_reporter(self.request.request_hash, shard.shard_id)

    # --- inputs -------------------------------------------------------------------------
    def _batches(
        self,
        shard: ShardSpec,
        items: list[WorkItem],
        sources: dict[str, Decoded | str],
        quarantine: list[dict[str, Any]],
    ) -> Iterator[tuple[list[WorkItem], list[Image.Image | None]]]:
        ready: list[tuple[WorkItem, Image.Image | None]] = []
        for item in items:
            if item.source_uri is None:
                ready.append((item, None))
                continue
            src = sources[item.source_id]
            if isinstance(src, str):
                quarantine.append(self._quarantine_row(shard, item, "decode", src))
            else:
                ready.append((item, src.image))
        # One call per shard: the model splits it into micro-batches of a fixed composition
        # (compute.micro_batch), so how many workers run the shards never changes a byte.
        if ready:
            yield [c[0] for c in ready], [c[1] for c in ready]

    def _load_sources(self, shard: ShardSpec) -> dict[str, Decoded | str]:
        """Decoded source images by id; a string in place of an image is the rejection reason."""
        out: dict[str, Decoded | str] = {}
        by_file: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for src in shard.sources:
            if src.rejected is not None:
                out[src.source_id] = f"{src.uri}: {src.rejected}"
            elif src.row is None:
                out[src.source_id] = self._decode_file(src.uri)
            else:
                by_file[src.uri].append((src.source_id, src.row))
        for uri, wanted in by_file.items():
            try:
                with _open_source(uri) as fh:
                    column = pq.read_table(fh, columns=["image"]).column("image")
            except StorageError:
                raise  # the store is down or refuses us: fail the shard (it is retried), not the rows
            except Exception as exc:
                for sid, _ in wanted:
                    out[sid] = f"cannot read {uri}: {type(exc).__name__}: {exc}"
                continue
            for sid, row in wanted:
                name = f"{uri}#{row}"
                if row >= len(column):
                    out[sid] = f"{name}: the file has only {len(column)} rows now"
                    continue
                data = _cell_bytes(column[row].as_py())
                out[sid] = (
                    self._decode(data, name) if isinstance(data, bytes) else f"{name}: {data}"
                )
        return out

    def _decode_file(self, uri: str) -> Decoded | str:
        try:
            with _open_source(uri) as fh:
                # never more than the limit: the listing checked the size, but files change
                data = fh.read(MAX_FILE_BYTES + 1)
        except StorageError:
            raise  # the store is down or refuses us: fail the shard (it is retried), not the row
        except Exception as exc:
            return f"cannot read {uri}: {type(exc).__name__}: {exc}"
        return self._decode(data, uri)

    def _decode(self, data: bytes, name: str) -> Decoded | str:
        try:
            return decode_within(data, name, self.limits)
        except ImageRejected as exc:
            return str(exc)

    # --- rows ---------------------------------------------------------------------------
    def _row(
        self,
        shard: ShardSpec,
        item: WorkItem,
        png: bytes,
        metrics: dict[str, Any],
        note: str | None = None,
    ) -> dict[str, Any]:
        return {
            "image": {"bytes": png, "path": f"{item.row_id}.png"},
            "row_id": item.row_id,
            "dataset": self.request.dataset,
            "request_hash": self.request.request_hash,
            "shard_id": shard.shard_id,
            "source_id": item.source_id,
            "source_uri": item.source_uri,
            "source_row": item.source_row,
            "variant": item.variant,
            "seed": item.seed,
            "operation": self.request.operation.kind,
            "model_id": self.model.model_id,
            "model_revision": self.model.model_revision,
            "scheduler": self.model.scheduler_name,
            "steps": self.model.steps,
            "params": self._params,
            "class_label": item.class_label,
            "prompt": item.prompt,
            "source_note": note,
            **metrics,
            "status": "ok",
        }

    def _quarantine_row(
        self, shard: ShardSpec, item: WorkItem, stage: str, reason: str
    ) -> dict[str, Any]:
        return {
            "row_id": item.row_id,
            "request_hash": self.request.request_hash,
            "shard_id": shard.shard_id,
            "source_id": item.source_id,
            "source_uri": item.source_uri,
            "source_row": item.source_row,
            "variant": item.variant,
            "stage": stage,
            "reason": reason,
        }


def _open_source(uri: str) -> Any:
    """Open an input for reading. Local files are opened by path: fsspec reads "::" in a URI as
    a chain of protocols, so a file named "a::b.png" would otherwise be looked for as "a"."""
    if uri.startswith("file://"):
        return open(uri.removeprefix("file://"), "rb")
    return open_uri(uri)


def _cell_bytes(value: Any) -> bytes | str:
    """The bytes of a Parquet image cell, or why the cell holds none."""
    if isinstance(value, dict):  # the Hugging Face Image struct {bytes, path}
        data = value.get("bytes")
        if not data:
            path = value.get("path")
            return f"image cell has no bytes (path {path!r} only)" if path else "empty image cell"
        value = data
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) if value else "empty image cell"
    if value is None:
        return "empty image cell"
    return f"image cell holds {type(value).__name__}, not image bytes"


def _read_uri(uri: str) -> bytes:
    with open_uri(uri) as fh:
        data: bytes = fh.read()
    return data
