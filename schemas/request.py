"""The dataset request: one frozen object from CLI / Prefect form / API to flow to actor.

The operation is a discriminated union on ``kind``; everything that changes output bytes is part of
the request hash, everything that only changes *how* the work runs (``execution``, ``output``) is not.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from augflow.schemas.errors import RequestError

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
DATASET_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,127})@(?P<version>[A-Za-z0-9._-]+)$")
SCHEDULERS = ("ddpm", "ddim", "dpm++", "euler", "euler_a", "heun", "lms", "pndm", "unipc")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _no_credentials_in_uri(value: str, field: str) -> str:
    if "://" in value and "@" in urlsplit(value).netloc:
        raise ValueError(
            f"{field} must not carry credentials in the URI; set them in the environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or a Prefect Secret block instead"
        )
    return value


class ModelSpec(Frozen):
    """Which diffusers model to load: a local folder or a hub id, pinned to a revision."""

    id: str = Field(min_length=1, description="local folder of a diffusers pipeline, or a hub id")
    revision: str | None = Field(
        default=None, description="hub commit/tag to pin; recorded in every row"
    )
    scheduler: Literal[SCHEDULERS] | None = Field(  # type: ignore[valid-type]
        default=None, description="swap the pipeline's scheduler by name; None keeps the model's"
    )


class GenerateOp(Frozen):
    """Sample N new images: unconditional, class-conditional or prompt-conditioned."""

    kind: Literal["generate"] = "generate"
    num_images: int = Field(ge=1, le=100_000_000)
    class_labels: list[int] | None = Field(
        default=None, description="cycled over the images (class-conditional models)"
    )
    prompts: list[str] | None = Field(
        default=None, description="cycled over the images (text-to-image models)"
    )
    negative_prompt: str | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> GenerateOp:
        if self.class_labels is not None and self.prompts is not None:
            raise ValueError("give class_labels or prompts, not both")
        if self.class_labels is not None and not self.class_labels:
            raise ValueError("class_labels is empty; omit it for unconditional sampling")
        if self.prompts is not None and not self.prompts:
            raise ValueError("prompts is empty; omit it for unconditional sampling")
        return self


class Img2ImgOp(Frozen):
    """K variants of every input image (SDEdit: noise to ``strength``, denoise back)."""

    kind: Literal["img2img"] = "img2img"
    variants: int = Field(default=4, ge=1, le=256)
    strength: float = Field(default=0.5, gt=0.0, le=1.0)
    prompt: str | None = None
    negative_prompt: str | None = None


class DenoiseOp(Frozen):
    """Remove Gaussian noise of standard deviation ``noise_level`` (0–255 scale) from inputs."""

    kind: Literal["denoise"] = "denoise"
    noise_level: float = Field(default=25.0, gt=0.0, le=128.0)


class UpscaleOp(Frozen):
    """Upscale inputs by ``factor``; ``strength`` is how much the model may re-draw detail."""

    kind: Literal["upscale"] = "upscale"
    factor: Literal[2, 4] = 2
    strength: float = Field(default=0.3, gt=0.0, le=1.0)


Operation = Annotated[GenerateOp | Img2ImgOp | DenoiseOp | UpscaleOp, Field(discriminator="kind")]


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


class ExecutionSpec(Frozen):
    """How the work runs. Not part of the request hash: it never changes an output byte."""

    batch_size: int = Field(default=4, ge=1, le=1024)
    workers: int | None = Field(
        default=None, ge=1, le=4096, description="Ray actors; default one per GPU, else 1"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_retries: int = Field(default=2, ge=0, le=20, description="retries of a failed shard")


class AugmentRequest(Frozen):
    """One dataset request. Validate with :func:`parse_request` for field-named errors."""

    dataset: str = Field(description="registry name: lowercase letters, digits, '.', '_', '-'")
    operation: Operation
    inputs: str | None = Field(
        default=None,
        description="folder/prefix of images, a Parquet file or folder, or a registered name@version",
    )
    output: str = Field(default="augflow-data", description="root URI of data and registry")
    model: ModelSpec
    steps: int = Field(default=50, ge=1, le=1000)
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
    execution: ExecutionSpec = ExecutionSpec()

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, v: str) -> str:
        if not DATASET_NAME.match(v):
            raise ValueError(
                f"{v!r} is not a dataset name: use lowercase letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (e.g. 'cats-variants')"
            )
        return v

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
        if self.operation.kind == "generate" and self.inputs is not None:
            raise ValueError(
                "inputs: `generate` makes images from noise and takes no inputs; remove `inputs`"
            )
        if self.operation.kind != "generate" and self.inputs is None:
            raise ValueError(
                f"inputs: `{self.operation.kind}` needs `inputs` (a folder of images, a Parquet "
                "dataset, or a registered name@version)"
            )
        return self

    # --- identity -------------------------------------------------------------------------
    def hashed_fields(self) -> dict[str, Any]:
        """The fields that decide output bytes (``output`` and ``execution`` do not)."""
        return self.model_dump(mode="json", exclude={"output", "execution"})

    @property
    def request_hash(self) -> str:
        canonical = json.dumps(self.hashed_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def input_ref(self) -> tuple[str, str] | None:
        """``(name, version)`` when inputs name a registered dataset, else None."""
        if self.inputs is None:
            return None
        m = DATASET_REF.match(self.inputs)
        return (m["name"], m["version"]) if m else None


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag in the location (operation.img2img.strength); users wrote
    # operation.strength, so the tag is dropped.
    parts = [str(p) for p in loc if p not in ("generate", "img2img", "denoise", "upscale")]
    return ".".join(parts) or "request"


def parse_request(data: Any) -> AugmentRequest:
    """Validate a mapping into a request; errors name the field and what is allowed."""
    if isinstance(data, AugmentRequest):
        return data
    if not isinstance(data, dict):
        raise RequestError("request", f"expected a mapping of fields, got {type(data).__name__}")
    try:
        return AugmentRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(tuple(first["loc"]))
        msg = first["msg"].removeprefix("Value error, ")
        if msg.startswith("inputs: "):
            field, msg = "inputs", msg.removeprefix("inputs: ")
        if first["type"] == "extra_forbidden":
            msg = "is not a field here; check its spelling (the README lists every request field)"
        elif first["type"] == "union_tag_invalid":
            msg = "operation.kind must be one of: generate, img2img, denoise, upscale"
            field = "operation.kind"
        elif first["type"] == "union_tag_not_found":
            msg = "operation needs `kind`: one of generate, img2img, denoise, upscale"
            field = "operation.kind"
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise RequestError(field, msg) from None


def load_request(path: str | Path) -> AugmentRequest:
    """Read a YAML (or JSON) request file."""
    p = Path(path)
    if not p.is_file():
        raise RequestError("request", f"request file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise RequestError("request", f"{p} is not valid YAML: {exc}") from None
    return parse_request(data)
