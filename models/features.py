"""Image features for the set-level metrics (KID, FID, diversity): a pluggable extractor.

Two kinds, one interface (:class:`FeatureExtractor`: uint8 ``(B, 3, S, S)`` in, float ``(B, D)``
out, with ``num_features`` so torchmetrics' KID/FID accept it as their ``feature`` module):

- **A standard network, when its weights are on this machine**: a CLIP vision tower in the
  Hugging Face ``transformers`` layout (``config.json`` + ``model.safetensors``), e.g. a copy of
  ``openai/clip-vit-base-patch32`` made with ``huggingface-cli download openai/clip-vit-base-patch32
  --local-dir /models/clip-b32`` on a machine with internet access. Point augflow at the folder
  with the request's ``quality.features: /models/clip-b32`` (or ``augflow evaluate --features``). Nothing is ever downloaded at run
  time, and only safetensors weights are read. Inception-v3 (the network of published FID) is not
  offered: its FID weights exist only as pickles, which augflow never loads.
- **The bundled network otherwise** (``models/bundled/features-tiny``): a 0.75 M-parameter CNN
  augflow trains on offline data (``python -m augflow.models.training.features``); 960 features
  (pooled statistics of every stage plus a 128-d embedding, see :class:`SmallFeatureNet`). Its KID/FID are
  *not comparable with published FID/KID numbers* (different network, input 64×64); they are
  comparable with each other — the same extractor on two sets — which is what the quality gate
  needs. Every report records the extractor's ``name`` and weight ``digest``.

Pure torch + safetensors; no Prefect, Ray or I/O besides reading the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from augflow.schemas.errors import ModelLoadError

#: Environment variable naming the extractor when none is passed: ``bundled``,
#: ``bundled:<name>`` or a local folder.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEFAULT_BUNDLED = "tiny"
#: Marks a folder as an augflow feature network (config.json key) rather than a CLIP model.
CONFIG_KEY = "augflow_features"
WEIGHTS_FILE = "model.safetensors"


# --- the bundled architecture --------------------------------------------------------------------


class _Block(nn.Module):
    """Residual 3×3 block, GroupNorm (no batch statistics: eval equals train behaviour)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        return F.silu(x + self.norm2(self.conv2(h)))


class SmallFeatureNet(nn.Module):
    """A small CNN: stride-2 stem, a residual block and a stride-2 conv per stage, then the mean
    and standard deviation of the last feature map, projected to ``dim`` (the embedding the
    training heads read).

    The *features* (:meth:`features`) are wider than the embedding: the mean and standard
    deviation over the image of every stage's activations (stem and the three down-sampled
    stages) and the embedding, each dimension standardised by its mean and spread over the
    training crops, each of the five groups weighted to count alike. Early layers are where noise,
    blur and texture show (measured: with the embedding alone KID could not tell the bundled
    generator's faces from real ones; with the pooled statistics it can — docs/quality-gate.md).
    """

    def __init__(
        self, widths: Sequence[int] = (32, 64, 128, 192), dim: int = 128, input_size: int = 64
    ) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.dim = int(dim)
        self.input_size = int(input_size)
        w0 = self.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, stride=2, padding=1), nn.GroupNorm(8, w0), nn.SiLU()
        )
        stages: list[nn.Module] = []
        for i, w in enumerate(self.widths[:-1]):
            nxt = self.widths[i + 1]
            stages += [
                _Block(w),
                nn.Conv2d(w, nxt, 3, stride=2, padding=1),
                nn.GroupNorm(8, nxt),
                nn.SiLU(),
            ]
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(2 * self.widths[-1], self.dim)
        self.group_dims = [2 * w for w in self.widths] + [self.dim]
        total = sum(self.group_dims)
        # Standardisation of the features over the training crops, set when the network is saved.
        self.register_buffer("feature_mean", torch.zeros(total))
        self.register_buffer("feature_std", torch.ones(total))
        weights = [torch.full((d,), (self.dim / d) ** 0.5) for d in self.group_dims]
        self.register_buffer("group_weight", torch.cat(weights), persistent=False)

    @property
    def num_features(self) -> int:
        return sum(self.group_dims)

    def config(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "dim": self.dim, "input_size": self.input_size}

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, S, S) in [-1, 1] → raw (mean, std)-pooled stage statistics and the
        embedding, concatenated: (B, num_features)."""
        h = self.stem(x)
        parts = [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
        for layer in self.stages:
            h = layer(h)
            if isinstance(layer, nn.SiLU):
                parts += [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
        parts.append(self.proj(torch.cat(parts[-2:], dim=1)))
        return torch.cat(parts, dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, S, S) in [-1, 1] → (B, dim): what the training heads read."""
        return self.pooled(x)[:, -self.dim :]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The standardised, group-weighted features: (B, num_features)."""
        # buffers: nn.Module's attribute type says Tensor | Module
        mean, std = cast(torch.Tensor, self.feature_mean), cast(torch.Tensor, self.feature_std)
        weight = cast(torch.Tensor, self.group_weight)
        return (self.pooled(x) - mean) / std * weight


# --- the interface torchmetrics and the set metrics use ----------------------------------------


class FeatureExtractor(nn.Module):
    """uint8 ``(B, 3, S, S)`` → float32 ``(B, num_features)``; ``S`` is ``input_size``.

    Any other size is resized (bilinear, antialiased) first, but resizing with
    :func:`prepare_images` (centre crop + PIL bicubic) before stacking is what the set metrics do.
    """

    name: str
    digest: str
    num_features: int
    input_size: int

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.ndim != 4 or imgs.shape[1] != 3:
            raise ValueError(
                f"feature extractor needs (B, 3, H, W) images, got {tuple(imgs.shape)}"
            )
        x = imgs.float()
        if imgs.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True
            )
        return self.features(self.preprocess(x)).float()


class BundledFeatures(FeatureExtractor):
    def __init__(self, net: SmallFeatureNet, name: str, digest: str) -> None:
        super().__init__()
        self.net = net.eval()
        self.name = name
        self.digest = digest
        self.num_features = net.num_features
        self.input_size = net.input_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


class ClipFeatures(FeatureExtractor):
    """The image embedding (``image_embeds``) of a local CLIP vision model."""

    def __init__(self, model: Any, name: str, digest: str, mean: list, std: list) -> None:
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.digest = digest
        self.num_features = int(model.config.projection_dim)
        self.input_size = int(model.config.image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = cast(torch.Tensor, self.mean), cast(torch.Tensor, self.std)  # buffers
        return (x - mean) / std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=x.to(dtype)).image_embeds


# CLIP's published normalisation, used when the folder has no preprocessor_config.json.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# --- loading -------------------------------------------------------------------------------------


def weights_digest(folder: Path) -> str:
    """``sha256:<12 hex>`` over the folder's config and weight files (recorded in reports)."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".json", ".safetensors"):
            h.update(p.name.encode() + b"\0")
            h.update(p.read_bytes())
    return f"sha256:{h.hexdigest()[:12]}"


def bundled_folder(name: str = DEFAULT_BUNDLED) -> Path:
    return BUNDLED_DIR / f"features-{name}"


def load_feature_extractor(
    spec: str | os.PathLike | None = None, device: str = "cpu"
) -> FeatureExtractor:
    """The extractor named by ``spec`` (a request's ``quality.features``), else the bundled one.

    ``spec``: ``"bundled"`` / ``"bundled:<name>"`` (``models/bundled/features-<name>``), or a
    local folder holding either an augflow feature network (config.json with
    ``augflow_features``) or a CLIP model in the transformers layout. Never downloads.
    """
    raw = spec if spec is not None else "bundled"
    text = str(raw)
    if text == "bundled" or text.startswith("bundled:"):
        name = text.partition(":")[2] or DEFAULT_BUNDLED
        folder = bundled_folder(name)
        if not folder.is_dir():
            have = sorted(p.name.removeprefix("features-") for p in BUNDLED_DIR.glob("features-*"))
            raise ModelLoadError(
                f"feature extractor {text!r}: there is no bundled feature network {name!r} "
                f"(bundled: {', '.join(have) or 'none'}); train one with "
                "`python -m augflow.models.training.features` or set quality.features to a "
                "local CLIP folder"
            )
        return _load_bundled(folder, f"bundled:{name}").to(device)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(
            f"feature extractor {text!r} is not a local folder; features are never downloaded "
            f"at run time. Download the model once where there is internet access (e.g. "
            f"`huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR`) and set "
            f"set quality.features to DIR, or use 'bundled'"
        )
    config = _read_json(folder / "config.json", text)
    if CONFIG_KEY in config:
        return _load_bundled(folder, f"local:{folder.name}").to(device)
    model_type = str(config.get("model_type", ""))
    if model_type in ("clip", "clip_vision_model"):
        return _load_clip(folder, config).to(device)
    raise ModelLoadError(
        f"feature extractor folder {text!r}: config.json describes a {model_type or 'unknown'!r} "
        "model; augflow reads CLIP vision models (model_type 'clip' or 'clip_vision_model') or "
        "its own feature networks"
    )


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"feature extractor folder {where!r} has no config.json") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def _load_bundled(folder: Path, name: str) -> BundledFeatures:
    from safetensors.torch import load_file

    config = _read_json(folder / "config.json", str(folder)).get(CONFIG_KEY, {})
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"feature network {str(folder)!r} has no {WEIGHTS_FILE}")
    try:
        net = SmallFeatureNet(
            widths=config["widths"], dim=config["dim"], input_size=config["input_size"]
        )
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        net.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"feature network {str(folder)!r} does not match its config.json: {exc}"
        ) from None
    return BundledFeatures(net, name, weights_digest(folder))


def _load_clip(folder: Path, config: dict[str, Any]) -> ClipFeatures:
    from transformers import CLIPVisionModelWithProjection

    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"CLIP folder {str(folder)!r} has no safetensors weights; augflow never loads "
            "pickled weights (convert with save_pretrained(..., safe_serialization=True))"
        )
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"CLIP folder {str(folder)!r} cannot be loaded: {exc}") from None
    mean, std = _CLIP_MEAN, _CLIP_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = _read_json(pre, str(folder))
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    return ClipFeatures(model, f"clip:{folder.name}", weights_digest(folder), mean, std)


# --- image preparation -----------------------------------------------------------------------------


def prepare_images(images: Iterable[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """Centre-crop each image to a square and resize it to ``size`` (PIL bicubic, antialiased):
    uint8 ``(B, 3, size, size)``, ready for any :class:`FeatureExtractor`."""
    out = []
    for img in images:
        if isinstance(img, Image.Image):
            pil = img.convert("RGB")
        else:
            arr = np.asarray(img)
            if arr.ndim == 3 and arr.shape[2] == 1:  # one-channel model outputs
                arr = arr[:, :, 0]
            pil = Image.fromarray(arr).convert("RGB")
        pil = ImageOps.fit(pil, (size, size), Image.Resampling.BICUBIC)
        out.append(np.asarray(pil))
    if not out:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
