"""Train the bundled feature network of the set-level metrics (models/bundled/features-tiny).

    nohup nice -n 10 python -m augflow.models.training.features --steps 1000 \\
        --out models/bundled/features-tiny --work /tmp/features-work > features-train.log 2>&1 &

Why this objective. KID/FID only see what the feature network sees, and the quality gate must see
two kinds of difference between an augmented set and its reference: *what* is in the images, and
*how degraded* they are (noise left in, blur, colour casts, compression). Contrastive methods
(SimCLR and friends) learn the first by making features invariant to colour jitter and blur —
exactly the defects the gate exists to catch. So the network learns two tasks at once, both
linear heads on the same 128-d embedding (so the embedding itself encodes them):

1. **Degradation regression**: each photo crop gets, at random, a colour offset per channel, a
   Gaussian blur, Gaussian noise and JPEG compression; the network regresses their strengths.
   Photo crops are only ever *down*-scaled to 64×64, so an undegraded crop is sharp and "blur 0"
   means what it says; the low-resolution sources (digits, 25-px LFW patches) are upscaled, i.e.
   blurry by nature, so they are never degraded and carry no degradation target.
2. **Surrogate classes**: which training photo a crop comes from (15 photos), which digit
   (scikit-learn's digits) or that it is an LFW background patch — content identity, the way
   Exemplar-CNN (Dosovitskiy et al., 2014) uses an image's own crops as a class.

A first version also predicted 0/90/180/270° rotations (Gidaris et al., 2018) and let every
source be degraded: on held-out photos it scored 16% rotation accuracy (chance: 25%) and R² 0.10
for blur, and KID could not tell photos from their σ 1.5 px blurred copies; both were dropped.

Data: offline only, and never the photos or faces the quality numbers are measured on: 15 of
scikit-image's photos (``FEATURE_TRAIN``) at two scales, scikit-learn's digits and the 100 non-face
LFW background patches. ``FEATURE_HELD_OUT`` (astronaut, coffee, camera), scikit-learn's and
PyWavelets' photos and the LFW faces stay unseen, so the KID sanity numbers in
docs/quality-gate.md are measured on images the features were not trained on. (These lists are
this network's own; the bundled diffusion models split photos differently, see
``training/data.py``.)

Reproducible: the weights are seeded, the data of step ``s`` comes from ``default_rng([seed, s])``
(so a resumed run draws what an uninterrupted one would) and torch uses one thread. Checkpoints
(weights + optimiser, ``torch.save`` of tensors only, loaded with ``weights_only=True``) go to
``--work`` every ``--save-every`` steps; the bundled folder gets safetensors (float16) only.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage as ndi
from torch import nn

from augflow.models.features import CONFIG_KEY, WEIGHTS_FILE, SmallFeatureNet
from augflow.models.training.data import load_photo

SIZE = 64
#: The photos the shipped feature network was trained on (surrogate classes 0..14, in this order).
FEATURE_TRAIN: tuple[str, ...] = (
    "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
    "stereo_motorcycle", "coins", "clock", "brick", "grass", "gravel", "moon", "page", "text",
    "cell",
)  # fmt: skip
#: Photos the held-out R² is measured on (never trained on).
FEATURE_HELD_OUT: tuple[str, ...] = ("astronaut", "coffee", "camera")
#: Degradation parameters the network regresses, each scaled to about [0, 1] ([-1, 1] colour).
DEGRADATIONS = ("blur", "noise", "jpeg", "shift_r", "shift_g", "shift_b")
BLUR_MAX, NOISE_MAX, SHIFT_MAX = 3.0, 50.0, 0.25
JPEG_QUALITY = (10, 70)
P_DEGRADE = 0.35
#: Weight of the degradation loss against the class loss (cross-entropy of order 1).
DEG_WEIGHT = 10.0


# --- data ----------------------------------------------------------------------------------------


class Sources:
    """The training images and their surrogate classes."""

    def __init__(self) -> None:
        from skimage import data as skdata
        from sklearn.datasets import load_digits

        self.photos: list[tuple[np.ndarray, int]] = []
        for cls, name in enumerate(FEATURE_TRAIN):
            img = load_photo(name)
            self.photos.append((img, cls))
            h, w = img.shape[:2]
            if min(h, w) // 2 >= SIZE:
                half = Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.LANCZOS)
                self.photos.append((np.asarray(half), cls))
        areas = np.array([p.shape[0] * p.shape[1] for p, _ in self.photos], dtype=np.float64)
        self.photo_p = np.sqrt(areas) / np.sqrt(areas).sum()
        digits = load_digits()
        self.digits = (digits.images * 16).clip(0, 255).astype(np.uint8)
        self.digit_labels = digits.target.astype(int)
        self.digit_class0 = len(FEATURE_TRAIN)
        backgrounds = skdata.lfw_subset()[100:]  # the first 100 are faces: never used here
        self.backgrounds = (backgrounds * 255).round().astype(np.uint8)
        self.background_class = self.digit_class0 + 10
        self.num_classes = self.background_class + 1

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, int, bool]:
        """One clean 64×64 RGB crop, its surrogate class and whether it is a (sharp) photo crop."""
        kind = rng.random()
        if kind < 0.7:
            img, cls = self.photos[rng.choice(len(self.photos), p=self.photo_p)]
            h, w = img.shape[:2]
            top = min(h, w, 256)
            side = round(math.exp(rng.uniform(math.log(SIZE), math.log(top))))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = img[y : y + side, x : x + side]
        elif kind < 0.85:
            i = int(rng.integers(len(self.digits)))
            crop, cls = self.digits[i], self.digit_class0 + int(self.digit_labels[i])
        else:
            bg = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            side = int(rng.integers(16, 26))
            y, x = rng.integers(0, 26 - side), rng.integers(0, 26 - side)
            crop, cls = bg[y : y + side, x : x + side], self.background_class
        if crop.ndim == 2:
            crop = np.repeat(crop[:, :, None], 3, axis=2)
        out = np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out), cls, kind < 0.7


def degrade(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Randomly degrade a uint8 crop; returns it and the scaled parameters (``DEGRADATIONS``)."""
    target = np.zeros(len(DEGRADATIONS), dtype=np.float32)
    x = img.astype(np.float32) / 255.0
    if rng.random() < P_DEGRADE:
        shift = rng.uniform(-SHIFT_MAX, SHIFT_MAX, 3).astype(np.float32)
        x = np.clip(x + shift, 0.0, 1.0)
        target[3:] = shift / SHIFT_MAX
    if rng.random() < P_DEGRADE:
        sigma = float(rng.uniform(0.5, BLUR_MAX))
        x = ndi.gaussian_filter(x, (sigma, sigma, 0))
        target[0] = sigma / BLUR_MAX
    if rng.random() < P_DEGRADE:
        sigma = float(rng.uniform(3.0, NOISE_MAX))
        x = np.clip(x + rng.normal(0.0, sigma / 255.0, x.shape), 0.0, 1.0)
        target[1] = sigma / NOISE_MAX
    out = (x * 255.0).round().astype(np.uint8)
    if rng.random() < P_DEGRADE:
        lo, hi = JPEG_QUALITY
        q = int(rng.integers(lo, hi + 1))
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=q)
        out = np.asarray(Image.open(buf).convert("RGB"))
        target[2] = (hi - q) / (hi - lo) * 0.9 + 0.1
    return out, target


def batch(
    sources: Sources, seed: int, step: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images in [-1,1], surrogate classes, degradation targets, target weights) of one step."""
    rng = np.random.default_rng([seed, step])
    imgs, classes, targets, weights = [], [], [], []
    for _ in range(n):
        crop, cls, sharp = sources.sample(rng)
        target = np.zeros(len(DEGRADATIONS), dtype=np.float32)
        if sharp:
            crop, target = degrade(crop, rng)
        imgs.append(crop)
        classes.append(cls)
        targets.append(target)
        weights.append(1.0 if sharp else 0.0)
    return (
        to_tensor(imgs),
        torch.tensor(classes),
        torch.from_numpy(np.stack(targets)),
        torch.tensor(weights),
    )


def to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(imgs).astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    return x.contiguous()


# --- model ---------------------------------------------------------------------------------------


class Trainer(nn.Module):
    def __init__(self, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.net = SmallFeatureNet(dim=dim, input_size=SIZE)
        self.cls = nn.Linear(dim, num_classes)
        self.deg = nn.Linear(dim, len(DEGRADATIONS))

    def losses(
        self, x: torch.Tensor, cls: torch.Tensor, deg: torch.Tensor, weight: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        e = self.net.embed(x)
        lc = self.cls(e)
        sq = ((self.deg(e) - deg) ** 2).mean(dim=1)
        return {
            "cls": F.cross_entropy(lc, cls),
            "deg": (sq * weight).sum() / weight.sum().clamp(min=1.0) * DEG_WEIGHT,
            "cls_acc": (lc.argmax(1) == cls).float().mean(),
        }


def lr_at(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# --- held-out evaluation -------------------------------------------------------------------------


def held_out_batch(seed: int, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of the held-out photos (never trained on), degraded like training."""
    rng = np.random.default_rng([seed, 10**9])
    photos = [load_photo(name) for name in FEATURE_HELD_OUT]
    imgs, targets = [], []
    for _ in range(n):
        img = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(SIZE, 257))
        y = rng.integers(0, img.shape[0] - side + 1)
        x = rng.integers(0, img.shape[1] - side + 1)
        crop = np.asarray(
            Image.fromarray(img[y : y + side, x : x + side]).resize(
                (SIZE, SIZE), Image.Resampling.BICUBIC
            )
        )
        crop, target = degrade(crop, rng)
        imgs.append(crop)
        targets.append(target)
    return to_tensor(imgs), torch.from_numpy(np.stack(targets))


@torch.no_grad()
def evaluate(model: Trainer, seed: int, n: int = 256) -> dict[str, Any]:
    """R² of the degradation head on held-out photos: how well the embedding encodes them."""
    model.eval()
    x, target = held_out_batch(seed, n)
    pred = model.deg(model.net.embed(x))
    r2 = {}
    for i, name in enumerate(DEGRADATIONS):
        t, p = target[:, i], pred[:, i]
        var = float(((t - t.mean()) ** 2).mean())
        r2[name] = round(1.0 - float(((t - p) ** 2).mean()) / var, 3) if var > 0 else None
    model.train()
    return {"held_out_degradation_r2": r2}


# --- save / resume -------------------------------------------------------------------------------


@torch.no_grad()
def feature_stats(
    net: SmallFeatureNet, sources: Sources, seed: int, n: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each raw feature over ``n`` clean training crops: the
    standardisation the shipped features apply (KID's polynomial kernel assumes centred
    features of order one, and it puts every feature on the same footing)."""
    rng = np.random.default_rng([seed, 10**9 + 1])
    raw = net.pooled(to_tensor([sources.sample(rng)[0] for _ in range(n)]))
    return raw.mean(dim=0), raw.std(dim=0) + 1e-6


def save_bundled(
    net: SmallFeatureNet, out: Path, log: dict[str, Any], sources: Sources, seed: int, n: int
) -> None:
    """Write the network as shipped: float16 weights, and the feature standardisation computed
    *from those float16 weights* (float32), so loading the folder reproduces it exactly."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    stats = ("feature_mean", "feature_std")
    shipped = SmallFeatureNet(**net.config())
    weights = {k: v.detach().half() for k, v in net.state_dict().items() if k not in stats}
    shipped.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    mean, std = feature_stats(shipped.eval(), sources, seed, n)
    tensors = {k: v.contiguous() for k, v in weights.items()}
    tensors.update(feature_mean=mean.float().contiguous(), feature_std=std.float().contiguous())
    save_file(tensors, str(out / WEIGHTS_FILE))
    config = {
        CONFIG_KEY: net.config(),
        "num_features": shipped.num_features,
        "note": "augflow's own feature network; KID/FID with it are not comparable with "
        "published (Inception) numbers",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sources = Sources()
    model = Trainer(sources.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    start = 0
    history: list[dict[str, Any]] = []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        history = json.loads((work / "history.json").read_text())
        print(f"resumed at step {start}", flush=True)
    n_params = sum(p.numel() for p in model.net.parameters())
    print(
        f"feature net: {n_params} parameters; {sources.num_classes} surrogate classes", flush=True
    )
    t0 = time.time()
    running: dict[str, float] = {}
    for step in range(start, args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr)
        x, cls, deg, weight = batch(sources, args.seed, step, args.batch)
        parts = model.losses(x, cls, deg, weight)
        loss = parts["cls"] + parts["deg"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        done = step + 1
        if done % args.log_every == 0:
            avg = {k: round(v / args.log_every, 4) for k, v in running.items()}
            avg.update(step=done, sec_per_step=round((time.time() - t0) / (done - start), 2))
            history.append(avg)
            print(json.dumps(avg), flush=True)
            running = {}
        if done % args.save_every == 0 or done == args.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done}, ckpt)
            (work / "history.json").write_text(json.dumps(history))
    evaluation = evaluate(model, args.seed, args.eval_n)
    print(json.dumps(evaluation), flush=True)
    log = {
        "args": vars(args),
        "params": n_params,
        "steps": args.steps,
        "surrogate_classes": sources.num_classes,
        "degradations": list(DEGRADATIONS),
        "degradation_loss_weight": DEG_WEIGHT,
        "final": history[-1] if history else None,
        **evaluation,
        "torch": torch.__version__,
    }
    save_bundled(model.net, Path(args.out), log, sources, args.seed, args.eval_n)
    print(f"wrote {args.out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval-n", type=int, default=512, help="held-out crops for R² and scaling")
    p.add_argument("--out", default="models/bundled/features-tiny")
    p.add_argument("--work", default="/tmp/augflow-features-work")
    train(p.parse_args())


if __name__ == "__main__":
    main()
