"""The dataset card: a Hugging Face ``README.md`` at the output root, derived from the registry.

Its YAML front matter lists one ``datasets`` config per dataset (``NAME``: the newest version)
and one per version (``NAME@VERSION``), each with ``data_files`` relative to the root, so a copy
of the root moved anywhere loads with plain ``datasets``::

    load_dataset(ROOT, "cats")                 # newest version of cats
    load_dataset(ROOT, "cats@3f9a2c1b7d4e")    # that version
    load_dataset(ROOT, "cats", streaming=True)

``load_dataset(ROOT)`` reads only what the configs name (never the registry JSON): with a single
dataset under the root its newest version is the default config, with several ``datasets`` asks
which one. ``dataset_info`` declares each config's features (read from its first data file's
Parquet footer, once: later refreshes reuse what the card already says about a version, since
versions are immutable) and the row count, which ``datasets`` checks on load.

The card is never edited in place: :func:`refresh_card` renders it from the registry and writes it
whole. Registrations race (several runs, machines), so a writer re-lists the registry after its
write and renders again until the listing it rendered from is still the current one. The last
write to land is then from a writer whose check listed every entry created before that check, and
an entry created after it belongs to a registration that writes the card later still, so no entry
is ever missing from the final card.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from augflow.schemas.registry import RegistryEntry
from augflow.tasks import layout
from augflow.tasks.register import entry_keys, list_versions
from augflow.tasks.storage import Storage, with_retries

log = logging.getLogger(__name__)

SPLIT = "train"
BASE_TAGS = ("augflow", "synthetic")
#: Refreshes before a writer leaves convergence to the registrations that keep changing the
#: registry (each of which refreshes the card itself afterwards).
MAX_ATTEMPTS = 20


def config_name(name: str, version: str | None = None) -> str:
    """The ``datasets`` config of a dataset's newest version (``NAME``) or of one version
    (``NAME@VERSION``). ``@`` is allowed in config names; names and versions never contain it."""
    return name if version is None else f"{name}@{version}"


@dataclass(frozen=True)
class CardRefresh:
    """What a refresh wrote: the card's URI, its configs and how many renders it took."""

    uri: str
    configs: tuple[str, ...]
    attempts: int
    converged: bool


def refresh_card(storage: Storage, max_attempts: int = MAX_ATTEMPTS) -> CardRefresh:
    """Render the card from the registry and write it until the registry stops changing under it.

    Safe to call from any number of concurrent registrations (see the module docstring).
    """
    known: dict[str, list[dict[str, Any]]] = _known_features(storage)
    configs: tuple[str, ...] = ()
    for attempt in range(1, max_attempts + 1):
        keys = entry_keys(storage)
        by_name = {name: list_versions(storage, name) for name in _names_of(keys)}
        text, configs, known = render_card(storage, by_name, known)
        if _read_text(storage) != text:
            storage.write_bytes(layout.DATASET_CARD, text.encode())
        if entry_keys(storage) == keys:
            return CardRefresh(storage.uri(layout.DATASET_CARD), configs, attempt, True)
    log.warning(
        "dataset card %s: the registry kept changing over %d refreshes; the registrations "
        "that changed it refresh the card again",
        storage.uri(layout.DATASET_CARD),
        max_attempts,
    )
    return CardRefresh(storage.uri(layout.DATASET_CARD), configs, max_attempts, False)


def _names_of(keys: Iterable[str]) -> list[str]:
    return sorted({layout.dataset_name_of(k) for k in keys})


# --- rendering ---------------------------------------------------------------------------------


def render_card(
    storage: Storage,
    by_name: dict[str, list[RegistryEntry]],
    known_features: dict[str, list[dict[str, Any]]] | None = None,
) -> tuple[str, tuple[str, ...], dict[str, list[dict[str, Any]]]]:
    """The card text for ``by_name`` (entries oldest first, as the registry orders them).

    Returns the text, the config names in it, and the features by version config (to reuse).
    ``known_features`` are features already read, by ``NAME@VERSION``; others are read from the
    version's first data file.
    """
    known = dict(known_features or {})
    configs: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []
    readable = {n: [e for e in es if e.files] for n, es in by_name.items()}
    single = len([n for n, es in readable.items() if es]) == 1
    for name in sorted(readable):
        versions = readable[name]
        if not versions:
            continue
        for entry, cfg in [(versions[-1], config_name(name)), *_per_version(versions)]:
            vcfg = config_name(entry.name, entry.version)
            if vcfg not in known:
                known[vcfg] = _features(storage, entry)
            item: dict[str, Any] = {"config_name": cfg}
            if single and cfg == name:
                item["default"] = True
            item["data_files"] = [{"split": SPLIT, "path": entry.file_keys}]
            configs.append(item)
            parquet_bytes = sum(f.bytes for f in entry.files)
            info: dict[str, Any] = {"config_name": cfg}
            if known[vcfg]:
                info["features"] = known[vcfg]
            # num_bytes: bytes of the Parquet files (``datasets`` wants the field; it checks only
            # num_examples, which catches a version whose files lost rows).
            info["splits"] = [
                {"name": SPLIT, "num_bytes": parquet_bytes, "num_examples": entry.num_rows}
            ]
            info["download_size"] = parquet_bytes
            infos.append(info)
    front: dict[str, Any] = {}
    newest = [es[-1] for es in by_name.values() if es]
    if single:
        front["pretty_name"] = next(n for n, es in readable.items() if es)
    licenses = sorted({lic for e in newest if (lic := _card(e).get("license"))})
    if licenses:
        front["license"] = licenses[0] if len(licenses) == 1 else licenses
    tags = list(BASE_TAGS)
    for e in newest:
        tags += [t for t in _card(e).get("tags") or [] if t not in tags]
    front["tags"] = tags
    if configs:
        front["configs"] = configs
        front["dataset_info"] = infos
    header = yaml.dump(front, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=1000)
    text = f"---\n{header}---\n\n{_body(by_name)}"
    kept = {k: v for k, v in known.items() if k.split("@")[0] in by_name}
    return text, tuple(c["config_name"] for c in configs), kept


class _NoAliases(yaml.SafeDumper):
    # Configs share their features lists; anchors and aliases (&id001) are valid YAML but not
    # what card readers other than PyYAML expect.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _per_version(versions: list[RegistryEntry]) -> list[tuple[RegistryEntry, str]]:
    return [(e, config_name(e.name, e.version)) for e in reversed(versions)]


def _card(entry: RegistryEntry) -> dict[str, Any]:
    card = entry.request.get("card")
    return card if isinstance(card, dict) else {}


def _body(by_name: dict[str, list[RegistryEntry]]) -> str:
    lines = [
        "# Datasets made by augflow",
        "",
        "This card is written by augflow from its registry (`registry/`) at every registration;",
        "edits to it are overwritten (describe a dataset in its request's `card` field).",
        "Each dataset has a config with its newest version (`NAME`) and one per version",
        "(`NAME@VERSION`); paths are relative to this folder, so a copy of it loads the same:",
        "",
        "```python",
        "from datasets import load_dataset",
    ]
    names = [n for n, es in sorted(by_name.items()) if any(e.files for e in es)]
    example = names[0] if names else "NAME"
    version = next((e.version for e in reversed(by_name.get(example, [])) if e.files), "VERSION")
    lines += [
        f'ds = load_dataset("path/to/this/folder", "{example}", split="{SPLIT}")  # newest version',
        f'ds = load_dataset("path/to/this/folder", "{config_name(example, version)}", split="{SPLIT}")',
        "```",
        "",
        "Images decode to PIL; every row carries its lineage (source, seed, model, revision,",
        "request hash) and per-row quality metrics. `num_bytes` in `dataset_info` counts the",
        "bytes of the Parquet files.",
    ]
    for name in sorted(by_name):
        versions = by_name[name]
        if not versions:
            continue
        newest = versions[-1]
        card = _card(newest)
        lines += ["", f"## {name}", ""]
        if card.get("description"):
            lines += [str(card["description"]).strip(), ""]
        lines += [
            "| config | created (UTC) | rows | quarantined | checks | model | code |",
            "| --- | --- | ---: | ---: | --- | --- | --- |",
        ]
        for e in reversed(versions):
            cfg = f"`{config_name(e.name, e.version)}`" if e.files else "(no rows)"
            checks = "passed" if e.quality.passed else "failed"
            lines.append(
                f"| {cfg} | {e.created_at.strftime('%Y-%m-%d %H:%M:%S')} | {e.num_rows} | "
                f"{e.num_quarantined} | {checks} | `{e.model.id}` @ `{e.model.revision}` | "
                f"{e.code_version} |"
            )
        lines += ["", *_lineage(newest), "", *_quality(newest)]
    return "\n".join(lines) + "\n"


def _lineage(e: RegistryEntry) -> list[str]:
    req = e.request
    op = req.get("operation") or {}
    op_text = ", ".join(f"{k}={v}" for k, v in op.items() if k != "kind" and v is not None)
    lines = [
        f"**Lineage of `{config_name(e.name, e.version)}`** (the newest version)",
        "",
        f"- operation: `{op.get('kind')}`" + (f" ({op_text})" if op_text else ""),
    ]
    if req.get("inputs"):
        lines.append(f"- inputs: `{req['inputs']}`")
    lines += [
        f"- model: `{e.model.id}`, revision `{e.model.revision}`, scheduler `{e.model.scheduler}`",
        f"- steps: {req.get('steps') or 'model default'}, seed: {req.get('seed')}, "
        f"shard size: {req.get('shard_size')}",
        f"- request hash: `{e.request_hash}`",
        f"- registry entry: [{layout.registry_entry(e.name, e.version)}]"
        f"({layout.registry_entry(e.name, e.version)})",
    ]
    return lines


def _quality(e: RegistryEntry) -> list[str]:
    q = e.quality
    lines = [
        f"**Quality gate**: {'passed' if q.passed else 'failed'}; report: "
        f"[{q.report_key}]({q.report_key})"
    ]
    lines += [f"- failed: {f}" for f in q.failed]
    return lines


# --- features ----------------------------------------------------------------------------------

_VALUE_TYPES: dict[pa.DataType, str] = {
    pa.string(): "string",
    pa.large_string(): "large_string",
    pa.bool_(): "bool",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.uint8(): "uint8",
    pa.uint16(): "uint16",
    pa.uint32(): "uint32",
    pa.uint64(): "uint64",
    pa.float16(): "float16",
    pa.float32(): "float32",
    pa.float64(): "float64",
    pa.binary(): "binary",
    pa.large_binary(): "large_binary",
}


def features_of(schema: pa.Schema) -> list[dict[str, Any]]:
    """The card's ``features`` list for a Parquet schema, or [] when a column has a type the card
    cannot name (``datasets`` then infers the features from the files)."""
    hf: dict[str, Any] = {}
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        try:
            hf = json.loads(meta).get("info", {}).get("features", {}) or {}
        except (ValueError, AttributeError):
            hf = {}
    out = []
    for field in schema:
        declared = hf.get(field.name) or {}
        if declared.get("_type") == "Image":
            out.append({"name": field.name, "dtype": "image"})
        elif field.type in _VALUE_TYPES:
            out.append({"name": field.name, "dtype": _VALUE_TYPES[field.type]})
        else:
            return []
    return out


def _features(storage: Storage, entry: RegistryEntry) -> list[dict[str, Any]]:
    key = entry.files[0].key

    def read() -> pa.Schema:
        with storage.fs.open(storage.path(key), "rb") as fh:
            return pq.read_schema(fh)

    try:
        return features_of(with_retries("read the schema of", storage.uri(key), read))
    except Exception as exc:  # a card without features still loads (datasets infers them)
        log.warning("dataset card: cannot read the schema of %s: %s", storage.uri(key), exc)
        return []


def _known_features(storage: Storage) -> dict[str, list[dict[str, Any]]]:
    """Features the current card already declares for version configs (``NAME@VERSION``)."""
    front = read_front_matter(storage)
    out: dict[str, list[dict[str, Any]]] = {}
    for info in front.get("dataset_info") or []:
        if isinstance(info, dict) and "@" in str(info.get("config_name", "")):
            feats = info.get("features")
            if isinstance(feats, list) and feats:
                out[str(info["config_name"])] = feats
    return out


# --- reading -----------------------------------------------------------------------------------


def _read_text(storage: Storage) -> str | None:
    try:
        return storage.read_bytes(layout.DATASET_CARD).decode()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return None


def read_front_matter(storage: Storage) -> dict[str, Any]:
    """The card's YAML front matter ({} when there is no card or it has none)."""
    text = _read_text(storage)
    if not text or not text.startswith("---\n"):
        return {}
    head, sep, _ = text[4:].partition("\n---\n")
    if not sep:
        return {}
    try:
        data = yaml.safe_load(head)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}
