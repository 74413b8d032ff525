"""The explicit Arrow schemas of output rows and quarantine rows.

``image`` follows the Hugging Face ``datasets`` Image convention (a struct of ``bytes`` and
``path``) and the schema carries the ``huggingface`` metadata key, so ``load_dataset("parquet")``
decodes images to PIL with no glue code. Every field is nullable: ``datasets`` only honours the
metadata for fields that match its own (always nullable) schema; the quality gate checks nulls.
"""

from __future__ import annotations

import json

import pyarrow as pa

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

METRIC_FIELDS: list[pa.Field] = [
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("expected_width", pa.int32()),
    pa.field("expected_height", pa.int32()),
    pa.field("decodable", pa.bool_()),
    pa.field("pixel_mean", pa.float32()),
    pa.field("pixel_std", pa.float32()),
    pa.field("has_nan", pa.bool_()),
    pa.field("is_blank", pa.bool_()),
    # dB of output vs source (img2img: same size; denoise: vs the noisy input; upscale: the output
    # downscaled back to the input size); null for generate.
    pa.field("faithfulness_psnr", pa.float32()),
]

#: Row-level effect metrics (issue 11): did the operation do what was asked. Null where the column
#: does not apply to the row's operation or cannot be measured; models/effects.py computes them and
#: documents each (``EFFECT_COLUMNS``), the gate applies thresholds from the request's ``quality``.
EFFECT_FIELDS: list[pa.Field] = [
    pa.field(name, pa.float32())
    for name in (
        "noise_in",
        "noise_removed",
        "noise_out",
        "denoise_detail",
        "lowpass_psnr",
        "consistency_psnr",
        "upscale_detail",
        "source_psnr",
        "source_ssim",
        "unmasked_psnr",
        "masked_psnr",
        "color_shift",
    )
]

LINEAGE_FIELDS: list[pa.Field] = [
    pa.field("row_id", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("request_hash", pa.string()),
    pa.field("shard_id", pa.string()),
    pa.field("source_id", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("source_row", pa.int64()),
    pa.field("variant", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("operation", pa.string()),
    pa.field("model_id", pa.string()),
    pa.field("model_revision", pa.string()),
    pa.field("scheduler", pa.string()),
    pa.field("steps", pa.int32()),
    pa.field("params", pa.string()),  # JSON: operation fields, guidance, size
    pa.field("class_label", pa.int32()),
    pa.field("prompt", pa.string()),
    # what was made of a source that is not one plain picture (e.g. the first image of an MPO)
    pa.field("source_note", pa.string()),
]

_DTYPES = {
    pa.string(): "string",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float32(): "float32",
    pa.bool_(): "bool",
}


def _hf_features(fields: list[pa.Field]) -> dict[str, dict[str, str]]:
    feats: dict[str, dict[str, str]] = {}
    for f in fields:
        if f.type == IMAGE_TYPE:
            feats[f.name] = {"_type": "Image"}
        else:
            feats[f.name] = {"dtype": _DTYPES[f.type], "_type": "Value"}
    return feats


def _with_hf_metadata(fields: list[pa.Field]) -> pa.Schema:
    meta = {"info": {"features": _hf_features(fields)}}
    return pa.schema(fields, metadata={b"huggingface": json.dumps(meta).encode()})


ROW_FIELDS = [
    pa.field("image", IMAGE_TYPE),
    *LINEAGE_FIELDS,
    *METRIC_FIELDS,
    *EFFECT_FIELDS,
    pa.field("status", pa.string()),
]
ROW_SCHEMA = _with_hf_metadata(ROW_FIELDS)

#: Columns the quality checks read; the image bytes are never loaded for validation.
METRIC_COLUMNS = ["row_id", "source_id", "variant", *[f.name for f in METRIC_FIELDS]]
#: The effect metric columns, read by the gate shard by shard.
EFFECT_COLUMN_NAMES = [f.name for f in EFFECT_FIELDS]

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string()),
        pa.field("request_hash", pa.string()),
        pa.field("shard_id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("variant", pa.int32()),
        pa.field("stage", pa.string()),  # decode (unreadable input) | model (the model failed)
        pa.field("reason", pa.string()),
    ]
)
