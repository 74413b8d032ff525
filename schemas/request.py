"""The dataset request: one frozen object from CLI / Prefect form / API to flow to actor.

The operation is a discriminated union on ``kind``; everything that changes output bytes is part of
the request hash, everything that only changes *how* the work runs (``execution``, ``output``) is not.

A request is validated completely before anything runs: every number is finite and bounded, every
list and string has a maximum length, URIs carry no credentials and no control characters, and a
request file must be UTF-8 YAML or JSON of bounded size and shape (:func:`load_request`).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import stat
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from augflow.schemas.errors import DatasetRefError, RequestError
from augflow.schemas.names import check_dataset_name, looks_like_ref, parse_ref

#: Most output rows one request may plan (generate: ``num_images``; others: inputs x variants).
MAX_IMAGES = 100_000_000
#: Most shards one request may plan: a registry entry lists every shard file, and the driver keeps
#: one small record per shard, so this bounds both. Raise ``shard_size`` to plan more images.
MAX_SHARDS = 100_000
#: Most input items (image objects + Parquet rows) one folder/prefix/version may hold; the listing
#: keeps one small record per item, so this bounds the planner's memory (about 1 KB an item).
MAX_INPUT_ITEMS = 1_000_000
#: Longest list (prompts, class labels, class names) and longest text (prompt, template) fields.
MAX_LIST_ITEMS = 10_000
MAX_TEXT_CHARS = 10_000
#: Longest URI or model id.
MAX_URI_CHARS = 4_096
#: Largest request file, and most YAML/JSON nodes it may expand to (aliases included).
MAX_REQUEST_BYTES = 1024 * 1024
MAX_REQUEST_NODES = 200_000
#: Defaults of the degenerate-input checks (``quality.min_side``, ``quality.max_aspect_ratio``).
DEFAULT_MIN_SIDE = 16
DEFAULT_MAX_ASPECT_RATIO = 10.0

Scheduler = Literal["ddpm", "ddim", "dpm++", "euler", "euler_a", "heun", "lms", "pndm", "unipc"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)


def check_plan_size(num_items: int, shard_size: int, variants: int = 1) -> None:
    """Refuse a plan of more than :data:`MAX_IMAGES` rows or :data:`MAX_SHARDS` shards.

    Raises ValueError whose message starts with the field to change (``inputs:`` or
    ``shard_size:``), as :func:`parse_request` reports it.
    """
    rows = num_items * variants
    if rows > MAX_IMAGES:
        raise ValueError(
            f"inputs: {num_items} inputs x {variants} variants = {rows} rows, more than the "
            f"{MAX_IMAGES} rows one request may plan; split the inputs over several requests"
        )
    per_shard = max(1, shard_size // variants)
    shards = -(-num_items // per_shard)
    if shards > MAX_SHARDS:
        needed = -(-num_items // MAX_SHARDS) * variants
        raise ValueError(
            f"shard_size: {shard_size} makes {shards} shards for {rows} rows, more than the "
            f"{MAX_SHARDS} shards one request may plan; use shard_size >= {needed}"
        )


class Frozen(BaseModel):
    # allow_inf_nan=False: every float of every request model is finite (YAML `.nan`/`.inf`, JSON
    # `NaN`/`1e999` are refused where they are read, not where a comparison with them misbehaves).
    # strict: no coercion. YAML 1.1 reads `on`/`yes` as true, and a lax int field reads true as 1,
    # so `steps: on` would be one step; "4" for a number is refused rather than guessed at.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)


LabelId = Annotated[int, Field(ge=0, le=2**31 - 1)]  # rows store labels as int32
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


def _no_control_chars(value: str, field: str) -> str:
    # A NUL or newline in a path or URI is never meant: it would end up in a key or a folder name.
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise ValueError(
            f"{field} contains the control character {bad!r}; paths and URIs are plain text"
        )
    return value


def _no_credentials_in_uri(value: str, field: str) -> str:
    _no_control_chars(value, field)
    if "://" in value and "@" in urlsplit(value).netloc:
        raise ValueError(
            f"{field} must not carry credentials in the URI; set them in the environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or a Prefect Secret block instead"
        )
    return value


class ModelSpec(Frozen):
    """Which diffusers model to load: a local folder or a hub id, pinned to a revision."""

    id: str = Field(
        min_length=1,
        max_length=MAX_URI_CHARS,
        description="local folder of a diffusers pipeline, or a hub id",
    )
    revision: str | None = Field(
        default=None, max_length=256, description="hub commit/tag to pin; recorded in every row"
    )
    scheduler: Scheduler | None = Field(
        default=None, description="swap the pipeline's scheduler by name; None keeps the model's"
    )

    @field_validator("id", "revision")
    @classmethod
    def _plain(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _no_control_chars(v, f"model.{info.field_name}")


SizeRule = Literal["native", "source", "scaled"]
FaithfulnessRule = Literal["none", "same_size", "downscaled"]


class OperationSpec(Frozen):
    """What every operation tells the rest of augflow about itself, so planning, the runner and
    the gate never switch on ``kind`` (a new operation is one subclass plus a family that runs it;
    see :func:`register_operation` and docs/architecture.md).

    ``takes_inputs``: False only for operations that make images from nothing (generate).
    ``size_rule``: the output is the model's native size, the source's size, or the source's size
    scaled by :meth:`scale`. ``faithfulness``: how each output is compared with its source —
    not at all, pixel for pixel at the output size, or after shrinking the output to the source.
    """

    kind: str
    takes_inputs: ClassVar[bool] = True
    size_rule: ClassVar[SizeRule] = "source"
    faithfulness: ClassVar[FaithfulnessRule] = "same_size"

    def outputs_per_source(self) -> int:
        """Output rows made from each input item."""
        return 1

    def source_prompt(self) -> str | None:
        """The text prompt recorded in every row made from a source (None: no prompt)."""
        return None

    def scale(self) -> int:
        return 1

    def output_size(
        self, native: tuple[int, int], source_size: tuple[int, int] | None
    ) -> tuple[int, int]:
        """(w, h) of an output given the model's native size and the source's size."""
        if self.size_rule == "native":
            return native
        if source_size is None:
            raise ValueError(f"operation {self.kind!r} needs the source size")
        w, h = source_size
        return w * self.scale(), h * self.scale()


class GenerateOp(OperationSpec):
    """Sample N new images: unconditional, class-conditional or prompt-conditioned.

    Text-to-image models take ``prompts`` (cycled over the images) or, for a labelled dataset,
    ``class_names`` with a ``prompt_template``: image i gets label ``class_labels[i % n]`` (default:
    every class in turn) and the prompt ``prompt_template.format(label=class_names[label])``, so
    both the label and the prompt land in the row.
    """

    kind: Literal["generate"] = "generate"
    takes_inputs: ClassVar[bool] = False
    size_rule: ClassVar[SizeRule] = "native"
    faithfulness: ClassVar[FaithfulnessRule] = "none"
    num_images: int = Field(ge=1, le=MAX_IMAGES)
    class_labels: list[LabelId] | None = Field(
        default=None,
        max_length=MAX_LIST_ITEMS,
        description="cycled over the images (class-conditional models)",
    )
    prompts: list[Text] | None = Field(
        default=None,
        max_length=MAX_LIST_ITEMS,
        description="cycled over the images (text-to-image models)",
    )
    class_names: list[Text] | None = Field(
        default=None,
        max_length=MAX_LIST_ITEMS,
        description="text-to-image: label -> name, filled into prompt_template per image",
    )
    prompt_template: Text | None = Field(
        default=None, description="e.g. 'a photo of a {label}'; needs class_names"
    )
    negative_prompt: Text | None = None

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "{label}" not in v:
            raise ValueError(f"{v!r} has no {{label}} placeholder, e.g. 'a photo of a {{label}}'")
        try:
            v.format(label="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"{v!r} is not a template with only {{label}} in it ({exc}); write literal "
                "braces as {{ and }}"
            ) from None
        return v

    @field_validator("class_names")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not n.strip() for n in v)):
            raise ValueError("class_names must be a non-empty list of non-empty names")
        return v

    @model_validator(mode="after")
    def _one_condition(self) -> GenerateOp:
        if self.class_labels is not None and self.prompts is not None:
            raise ValueError("give class_labels or prompts, not both")
        if self.class_labels is not None and not self.class_labels:
            raise ValueError("class_labels is empty; omit it for unconditional sampling")
        if self.prompts is not None and not self.prompts:
            raise ValueError("prompts is empty; omit it for unconditional sampling")
        if self.prompts is not None and self.class_names is not None:
            raise ValueError("give prompts or class_names (+ prompt_template), not both")
        if self.prompt_template is not None and self.class_names is None:
            raise ValueError("prompt_template needs class_names to fill {label} with")
        if self.class_names is not None and self.class_labels is not None:
            bad = [c for c in self.class_labels if not 0 <= c < len(self.class_names)]
            if bad:
                raise ValueError(
                    f"class_labels {bad} have no entry in class_names "
                    f"(labels 0..{len(self.class_names) - 1})"
                )
        return self

    def condition_for(self, index: int) -> tuple[int | None, str | None]:
        """(class label, prompt) of image ``index``; pure, so plans and workers agree."""
        if self.class_names is not None:
            labels = self.class_labels or list(range(len(self.class_names)))
            named = labels[index % len(labels)]
            template = self.prompt_template or "{label}"
            return named, template.format(label=self.class_names[named])
        label = self.class_labels[index % len(self.class_labels)] if self.class_labels else None
        prompt = self.prompts[index % len(self.prompts)] if self.prompts else None
        return label, prompt


class Img2ImgOp(OperationSpec):
    """K variants of every input image (SDEdit: noise to ``strength``, denoise back)."""

    kind: Literal["img2img"] = "img2img"
    size_rule: ClassVar[SizeRule] = "native"
    variants: int = Field(default=4, ge=1, le=256)
    strength: float = Field(default=0.5, gt=0.0, le=1.0)
    prompt: Text | None = None
    negative_prompt: Text | None = None

    def outputs_per_source(self) -> int:
        return self.variants

    def source_prompt(self) -> str | None:
        return self.prompt


class DenoiseOp(OperationSpec):
    """Remove Gaussian noise of standard deviation ``noise_level`` (0–255 scale) from inputs.

    Unset, each image's σ is estimated from the image itself (a robust wavelet estimate), which
    is what to do when inputs are noisy to different degrees.
    """

    kind: Literal["denoise"] = "denoise"
    noise_level: float | None = Field(
        default=None, gt=0.0, le=128.0, description="σ of the input noise; unset: estimated"
    )


class UpscaleOp(OperationSpec):
    """Upscale inputs by ``factor``; ``strength`` is how much the model may re-draw detail.

    ``tile`` / ``tile_overlap`` (low-resolution pixels) decide how dedicated upscalers cut large
    inputs; they change output bytes, so they are request fields. None keeps the model's default.
    """

    kind: Literal["upscale"] = "upscale"
    size_rule: ClassVar[SizeRule] = "scaled"
    faithfulness: ClassVar[FaithfulnessRule] = "downscaled"
    factor: Literal[2, 4] = 2
    strength: float = Field(default=0.3, gt=0.0, le=1.0)
    tile: int | None = Field(
        default=None, ge=16, le=4096, description="tile side in input pixels (upscaler models)"
    )
    tile_overlap: int | None = Field(
        default=None, ge=0, le=1024, description="overlap of neighbouring tiles in input pixels"
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> UpscaleOp:
        if (
            self.tile is not None
            and self.tile_overlap is not None
            and self.tile_overlap * 2 >= self.tile
        ):
            raise ValueError(
                f"tile_overlap {self.tile_overlap} must be less than half of tile {self.tile}"
            )
        return self

    def scale(self) -> int:
        return self.factor


class InpaintOp(OperationSpec):
    """Repaint the masked part of every input (text-conditioned inpainting models).

    The mask is white (255) where the model may paint and black where the input is kept; grey
    levels are thresholded by the pipeline. Give exactly one of ``mask`` (one image for every
    input, resized to each input's size) or ``mask_column`` (Parquet inputs: a column of image
    cells, one mask per row, in the same struct/bytes form as the ``image`` column).
    """

    kind: Literal["inpaint"] = "inpaint"
    mask: str | None = Field(
        default=None,
        max_length=MAX_URI_CHARS,
        description="URI of a mask image (white = repaint)",
    )
    mask_column: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Parquet inputs: column with one mask per row",
    )
    prompt: Text | None = None
    negative_prompt: Text | None = None
    strength: float = Field(default=1.0, gt=0.0, le=1.0)

    def source_prompt(self) -> str | None:
        return self.prompt

    @field_validator("mask")
    @classmethod
    def _mask_uri(cls, v: str | None) -> str | None:
        return None if v is None else _no_credentials_in_uri(v, "operation.mask")

    @model_validator(mode="after")
    def _one_mask(self) -> InpaintOp:
        if (self.mask is None) == (self.mask_column is None):
            raise ValueError(
                "give exactly one of mask (a mask image URI) or mask_column (Parquet inputs)"
            )
        return self


_ADDED_OPTIONAL_OP_FIELDS = ("class_names", "prompt_template", "tile", "tile_overlap")

_OPERATIONS: list[type[OperationSpec]] = [GenerateOp, Img2ImgOp, DenoiseOp, UpscaleOp, InpaintOp]
#: every ``operation.kind`` a request may name (grows with :func:`register_operation`)
OPERATION_KINDS: list[str] = ["generate", "img2img", "denoise", "upscale", "inpaint"]

Operation = Annotated[
    GenerateOp | Img2ImgOp | DenoiseOp | UpscaleOp | InpaintOp, Field(discriminator="kind")
]


class QualityThresholds(Frozen):
    """What the quality gate requires before a version is registered."""

    min_pixel_std: float = Field(
        default=2.0, ge=0.0, description="an image whose pixel std (0–255) is below is blank"
    )
    min_faithfulness_psnr: float | None = Field(
        default=None, description="dB; each output vs its source (img2img/denoise/upscale)"
    )
    max_quarantine_fraction: float = Field(
        default=0.1, ge=0.0, le=1.0, description="share of input items allowed in quarantine"
    )
    min_side: int = Field(
        default=DEFAULT_MIN_SIDE,
        ge=1,
        le=65_535,
        description="px; a source whose shorter side is below is quarantined (too small to use)",
    )
    max_aspect_ratio: float = Field(
        default=DEFAULT_MAX_ASPECT_RATIO,
        ge=1.0,
        le=1_000_000.0,
        description="longer side / shorter side; a source beyond is quarantined (a strip)",
    )
    # --- effect and set checks (issue 11; docs/quality-gate.md). Unset (None) means the
    # documented default, and unset fields stay out of the request hash (see hashed_fields).
    denoise_min_removed_ratio: float | None = Field(
        default=None, ge=0.0, description="noise removed ≥ this × the input's σ; default 0.3"
    )
    denoise_min_measurable_noise: float | None = Field(
        default=None, ge=0.0, description="σ below which there is no noise to check; default 3"
    )
    denoise_min_detail: float | None = Field(
        default=None, description="DoG-band detail kept (output ÷ input); default 0.2"
    )
    denoise_min_lowpass_psnr: float | None = Field(
        default=None, description="dB, 4×4 block means of output vs input; default 24"
    )
    upscale_min_consistency_psnr: float | None = Field(
        default=None, description="dB, output resized back vs the input; default 28"
    )
    upscale_min_detail: float | None = Field(
        default=None, description="gradient energy ÷ a bicubic enlargement's; default 1.05"
    )
    img2img_max_source_psnr: float | None = Field(
        default=None, description="dB; a variant this close to its source is a copy; default 40"
    )
    img2img_min_ssim_at_zero: float | None = Field(
        default=None, description="SSIM-to-source bound at strength 0; default 0.4"
    )
    img2img_min_ssim_at_one: float | None = Field(
        default=None, description="SSIM-to-source bound at strength 1; default -0.05"
    )
    inpaint_min_unmasked_psnr: float | None = Field(
        default=None, description="dB outside the mask; default 20"
    )
    inpaint_min_change_db: float | None = Field(
        default=None, description="unmasked_psnr − masked_psnr; default 3"
    )
    max_color_shift: float | None = Field(
        default=None, ge=0.0, description="mean-colour ΔE (denoise/upscale/inpaint); default 6"
    )
    img2img_color_shift_base: float | None = Field(
        default=None, ge=0.0, description="img2img ΔE ≤ base + slope × strength; default unchecked"
    )
    img2img_color_shift_slope: float | None = Field(
        default=None, ge=0.0, description="see img2img_color_shift_base; default 40"
    )
    max_hamming: int | None = Field(
        default=None, ge=0, le=31, description="pHash bits: near-duplicate at or below; default 6"
    )
    max_duplicate_fraction: float | None = Field(
        default=None, ge=0.0, le=1.0, description="share of near-duplicate rows; default 0.01"
    )
    max_memorised_fraction: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="generate: rows copying `reference`; default 0.001",
    )
    variant_max_pair_psnr: float | None = Field(
        default=None, description="img2img: dB at which two variants are copies; default 40"
    )
    max_variant_copy_fraction: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="img2img: sources with copied variants; default 0.05",
    )
    min_diversity_ratio: float | None = Field(
        default=None, ge=0.0, description="feature diversity ÷ the reference's; default 0.5"
    )
    max_kid: float | None = Field(
        default=None, ge=0.0, description="KID vs the reference; default: reported, not checked"
    )
    max_fid: float | None = Field(
        default=None, ge=0.0, description="FID vs the reference; default: reported, not checked"
    )
    reference: str | None = Field(
        default=None,
        description="generate: reference/training images (folder, Parquet or name@version) for "
        "memorisation, diversity and KID/FID; other operations compare with their inputs",
    )
    features: str | None = Field(
        default=None,
        description="feature extractor of diversity/KID/FID: 'bundled' (default) or a local CLIP "
        "folder (transformers layout, safetensors); never downloaded",
    )
    effect_checks: bool | None = Field(
        default=None, description="run the row-level effect checks; default true"
    )
    set_checks: bool | None = Field(
        default=None, description="run the set-level checks (hashes, features); default true"
    )
    min_proxy_lift: float | None = None  # proxy-classifier accuracy lift; docs/usefulness.md

    @field_validator("reference")
    @classmethod
    def _reference_uri(cls, v: str | None) -> str | None:
        return None if v is None else _no_credentials_in_uri(v, "quality.reference")


#: The quality fields issue 11 added (effect and set checks), all None unless set.
_ISSUE11_QUALITY_FIELDS = [
    name for name in QualityThresholds.model_fields if name not in ("min_pixel_std",
    "min_faithfulness_psnr", "max_quarantine_fraction", "min_side", "max_aspect_ratio")
]  # fmt: skip

#: Fields added after requests were first hashed, with their default: left out of the hash while
#: they hold it, so every earlier request keeps its hash (and its registered version).
_ADDED_QUALITY_DEFAULTS: dict[str, Any] = {
    "min_side": DEFAULT_MIN_SIDE,
    "max_aspect_ratio": DEFAULT_MAX_ASPECT_RATIO,
    # issue 11: every effect/set check field, unset (None) by default
    **{name: None for name in _ISSUE11_QUALITY_FIELDS},
}


class ComputeSpec(Frozen):
    """How images are computed. Part of the request hash: each of these can change output bytes
    (convolutions pick other kernels and reduction orders for other batch shapes, memory formats
    and compiled graphs), so two runs that differ here are two different versions."""

    micro_batch: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "images per model call; default on CUDA 8 (an out-of-memory error halves it), on CPU "
            "from the model and request alone (1 to 16: ~16K UNet pixels per call)"
        ),
    )
    channels_last: bool | None = Field(
        default=None, description="NHWC memory format; default on for CUDA, off for CPU"
    )
    compile: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="torch.compile the UNet with this backend ('inductor', 'eager', ...); off if unset",
    )


class ExecutionSpec(Frozen):
    """How the work runs. Not part of the request hash: it never changes an output byte."""

    workers: int | None = Field(
        default=None, ge=1, le=4096, description="Ray actors; default one per GPU, else 1"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_retries: int = Field(default=2, ge=0, le=20, description="retries of a failed shard")
    shard_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        allow_inf_nan=False,
        description="seconds a shard may compute on its worker; past that the worker is presumed "
        "hung, killed, and the shard retried (raise it for slow models on CPU)",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch_size" in data:
            raise ValueError(
                "batch_size: moved to compute.micro_batch (batching can change output bytes, so it "
                "is part of the request hash now); set compute: {micro_batch: N} instead"
            )
        return data


class CardSpec(Frozen):
    """What the dataset card at the output root says about this dataset (issue 15). Describes the
    data, never changes it: not part of the request hash. The newest version's card is shown."""

    license: str | None = Field(
        default=None, description="license id, e.g. 'cc-by-4.0' (Hugging Face card `license`)"
    )
    tags: list[str] = Field(default_factory=list, description="card `tags`, e.g. ['faces']")
    description: str | None = Field(default=None, description="a paragraph about the dataset")


class AugmentRequest(Frozen):
    """One dataset request. Validate with :func:`parse_request` for field-named errors."""

    dataset: str = Field(description="registry name: lowercase letters, digits, '.', '_', '-'")
    operation: Operation
    inputs: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_URI_CHARS,
        description="folder/prefix of images, a Parquet file or folder, or a registered name@version",
    )
    output: str = Field(
        default="augflow-data",
        min_length=1,
        max_length=MAX_URI_CHARS,
        description="root URI of data and registry",
    )
    model: ModelSpec
    steps: int | None = Field(
        default=None, ge=1, le=1000, description="sampling steps; default: the model's own default"
    )
    guidance_scale: float | None = Field(default=None, ge=0.0, le=100.0)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    image_size: int | None = Field(
        default=None,
        ge=8,
        le=4096,
        description="output side for generate/img2img; default: the model's native size",
    )
    shard_size: int = Field(default=64, ge=1, le=100_000)
    write_image_files: bool = False
    quality: QualityThresholds = QualityThresholds()
    compute: ComputeSpec = ComputeSpec()
    execution: ExecutionSpec = ExecutionSpec()
    card: CardSpec = CardSpec()

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, v: str) -> str:
        try:
            return check_dataset_name(v)
        except DatasetRefError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("image_size")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError(
                f"{v} is not a multiple of 8 (the UNet halves it 3 times); try {v - v % 8 or 8}"
            )
        return v

    @field_validator("output")
    @classmethod
    def _output_uri(cls, v: str) -> str:
        return _no_credentials_in_uri(v, "output")

    @field_validator("inputs")
    @classmethod
    def _inputs_uri(cls, v: str | None) -> str | None:
        return None if v is None else _no_credentials_in_uri(v, "inputs")

    @model_validator(mode="after")
    def _inputs_match_operation(self) -> AugmentRequest:
        if not self.operation.takes_inputs and self.inputs is not None:
            raise ValueError(
                f"inputs: `{self.operation.kind}` makes images from noise and takes no inputs; "
                "remove `inputs`"
            )
        if self.operation.takes_inputs and self.inputs is None:
            raise ValueError(
                f"inputs: `{self.operation.kind}` needs `inputs` (a folder of images, a Parquet "
                "dataset, or a registered name@version)"
            )
        return self

    @model_validator(mode="after")
    def _bounded_plan(self) -> AugmentRequest:
        # Generate plans are known from the request alone, so their size is refused here, before
        # anything runs; plans over inputs are checked once the inputs are listed.
        if isinstance(self.operation, GenerateOp):
            check_plan_size(self.operation.num_images, self.shard_size)
        return self

    # --- identity -------------------------------------------------------------------------
    def hashed_fields(self) -> dict[str, Any]:
        """The fields that decide output bytes (``output``, ``execution`` and ``card`` do not)."""
        data = self.model_dump(mode="json", exclude={"output", "execution", "card"})
        op = data["operation"]
        for key in _ADDED_OPTIONAL_OP_FIELDS:
            # fields added after requests were first hashed: left out while unset so every
            # earlier request keeps its hash (and its registered version)
            if key in op and op[key] is None:
                del op[key]
        quality = data["quality"]
        for key, default in _ADDED_QUALITY_DEFAULTS.items():
            if key in quality and quality[key] == default:
                del quality[key]
        return data

    @functools.cached_property
    def request_hash(self) -> str:
        # cached: every row and every key asks for it, and the request is frozen
        canonical = json.dumps(self.hashed_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def model_copy(self, *, update: Any = None, deep: bool = False) -> AugmentRequest:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("request_hash", None)  # a copy with other fields has another hash
        return copy

    def input_ref(self) -> tuple[str, str] | None:
        """``(name, version)`` when inputs name a registered dataset, else None."""
        if self.inputs is None or not looks_like_ref(self.inputs):
            return None
        return parse_ref(self.inputs)


def register_operation(op_cls: type[OperationSpec]) -> None:
    """Add an operation to the request's ``operation`` union (a plugin's entry point).

    ``op_cls`` subclasses :class:`OperationSpec` with ``kind: Literal["<new kind>"]``. It must be
    registered in every process that parses requests: the driver, and Ray workers (e.g. through
    Ray's ``worker_process_setup_hook``). A family that runs it is registered beside it
    (:func:`augflow.models.runner.register_family`). Registering the same class twice is a no-op.
    """
    if not (isinstance(op_cls, type) and issubclass(op_cls, OperationSpec)):
        raise TypeError(f"{op_cls!r} is not an OperationSpec subclass")
    if op_cls in _OPERATIONS:
        return
    kinds = get_args(op_cls.model_fields["kind"].annotation)
    if len(kinds) != 1 or not isinstance(kinds[0], str):
        raise TypeError(f"{op_cls.__name__}.kind must be a single Literal string")
    if kinds[0] in OPERATION_KINDS:
        raise ValueError(f"operation kind {kinds[0]!r} is already registered")
    _OPERATIONS.append(op_cls)
    OPERATION_KINDS.append(kinds[0])
    field = AugmentRequest.model_fields["operation"]
    field.annotation = Union[tuple(_OPERATIONS)]  # type: ignore[assignment]  # noqa: UP007 - a runtime union of classes
    field.discriminator = "kind"
    AugmentRequest.model_rebuild(force=True)


#: Model-level checks name the field they are about by starting their message with it.
_MESSAGE_FIELDS = ("inputs", "shard_size")


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag in the location (operation.img2img.strength); users wrote
    # operation.strength, so the tag is dropped.
    parts = [str(p) for p in loc if p not in OPERATION_KINDS]
    return ".".join(parts) or "request"


def parse_request(data: Any) -> AugmentRequest:
    """Validate a mapping into a request; errors name the field and what is allowed."""
    if isinstance(data, AugmentRequest):
        return data
    if not isinstance(data, dict):
        raise RequestError("request", f"expected a mapping of fields, got {type(data).__name__}")
    _check_unicode(data)
    try:
        return AugmentRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(tuple(first["loc"]))
        msg = first["msg"].removeprefix("Value error, ")
        for named in _MESSAGE_FIELDS:
            if msg.startswith(f"{named}: "):
                field, msg = named, msg.removeprefix(f"{named}: ")
        if first["type"] == "extra_forbidden":
            msg = "is not a field here; check its spelling (docs/request-reference.md lists every request field)"
        elif first["type"] == "union_tag_invalid":
            msg = f"operation.kind must be one of: {', '.join(OPERATION_KINDS)}"
            field = "operation.kind"
        elif first["type"] == "union_tag_not_found":
            msg = f"operation needs `kind`: one of {', '.join(OPERATION_KINDS)}"
            field = "operation.kind"
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise RequestError(field, msg) from None


def _check_unicode(data: dict[str, Any]) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, which JSON's \\ud800 escape can
    produce): it could not be written to Parquet, so it would fail every shard instead of here."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(
                    path or "request", "contains text that is not valid Unicode (a lone surrogate)"
                ) from None
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"{path}.{k}" if path else str(k), v))
                stack.append((path or "request", k))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}", v) for i, v in enumerate(value))


def load_request(path: str | Path) -> AugmentRequest:
    """Read a request file: UTF-8 YAML, or JSON when it is named ``*.json``.

    Everything a hostile or broken file can be is a :class:`RequestError` naming the file: not a
    regular file, too large, binary, not UTF-8 (a UTF-8 byte-order mark is fine, UTF-16 is not),
    empty, not a single mapping, duplicate keys, an alias that refers to itself or expands past
    :data:`MAX_REQUEST_NODES` nodes (a "billion laughs"), nesting too deep for the parser.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise RequestError("request", f"request file {str(p)!r} does not exist") from None
    except OSError as exc:
        raise RequestError("request", f"request file {str(p)!r} cannot be read: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RequestError(
            "request", f"request file {str(p)!r} is not a regular file; give a YAML or JSON file"
        )
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_REQUEST_BYTES + 1)  # never more, whatever the file grew to
    except OSError as exc:
        raise RequestError("request", f"request file {str(p)!r} cannot be read: {exc}") from None
    text = _request_text(raw, p)
    data = _parse_json(text, p) if p.suffix.lower() == ".json" else _parse_yaml(text, p)
    if data is None:
        raise RequestError("request", f"{p} is empty; a request is a mapping of fields")
    return parse_request(data)


def _request_text(raw: bytes, p: Path) -> str:
    if len(raw) > MAX_REQUEST_BYTES:
        raise RequestError(
            "request",
            f"{p} is larger than {MAX_REQUEST_BYTES // 1024} KiB; a request file is a few lines "
            "(put long prompt lists in a smaller set of templates)",
        )
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if raw.startswith(bom):
            raise RequestError("request", f"{p} is {name} text; save it as UTF-8")
    raw = raw.removeprefix(codecs.BOM_UTF8)  # what some Windows editors write; harmless
    if b"\x00" in raw:
        raise RequestError(
            "request", f"{p} is a binary file (it contains NUL bytes), not a YAML or JSON request"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RequestError(
            "request",
            f"{p} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} cannot be "
            "decoded (latin-1 or another encoding?); save the file as UTF-8",
        ) from None


def _parse_json(text: str, p: Path) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise RequestError("request", f"{p}: key {k!r} appears twice in one object")
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except ValueError as exc:  # also numbers of more digits than Python converts
        raise RequestError("request", f"{p} is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("request", f"{p} is nested too deeply to be a request") from None


def _parse_yaml(text: str, p: Path) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node, p)
        return loader.construct_document(node)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an int of 5000 digits
        raise RequestError("request", f"{p} is not valid YAML: {exc}") from None
    except RecursionError:
        raise RequestError("request", f"{p} is nested too deeply to be a request") from None
    finally:
        loader.dispose()


def _check_yaml_graph(root: yaml.Node, p: Path) -> None:
    """Refuse alias cycles, alias bombs and duplicate keys before anything is constructed.

    Aliases make the node graph a DAG whose expansion can be exponential in the file size; the
    expanded size is counted once per distinct node (memoised), so this is linear in the file.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _yaml_children(node)
        if children_done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > MAX_REQUEST_NODES:
                raise RequestError(
                    "request",
                    f"{p} expands to more than {MAX_REQUEST_NODES} values (YAML aliases repeat "
                    "what they refer to); write the request out without aliases",
                )
            continue
        if key in size:
            continue
        if key in on_path:
            raise RequestError(
                "request", f"{p}: a YAML alias refers to a value that contains it (a cycle)"
            )
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode):
                    ident = (k.tag, k.value)
                    if ident in seen:
                        raise RequestError(
                            "request",
                            f"{p}: key {k.value!r} appears twice in one mapping (line "
                            f"{k.start_mark.line + 1}); keep one",
                        )
                    seen.add(ident)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
