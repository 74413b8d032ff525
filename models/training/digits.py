"""The digits proxy task and its class-conditional generator (the usefulness benchmark's model).

The data is scikit-learn's bundled handwritten digits (1797 images, 8×8, 17 grey levels, 10
classes): offline, labelled, and small enough that a generator trains on one CPU core within an
hour. Images are upsampled to 16×16 (bilinear), the smallest side the generator's UNet takes with
three resolution levels (16 → 8 → 4; at 8×8 the bottleneck would be 1×1), and a side augflow's
requests accept (multiples of 8). 32×32 would cost four times the compute for no information: the
source is 8×8.

**The split** is fixed by a seeded permutation (``SPLIT_SEED``) and checked by a digest
(``SPLIT_DIGEST``; ``tests/models/training/test_digits.py`` recomputes it):

- ``test`` (500 images): only ever used to score a trained classifier, once per benchmark arm.
- ``val`` (300): scores the benchmark's sweep (which settings help); never trains anything.
- ``labelled[10]``: the first 10 images of each class in permutation order (100);
  ``labelled[5]`` is the first 5 of those (50). The few-shot training sets.
- ``pool`` (the remaining 897): unlabelled images.

**The generator** (``models/bundled/ddim-digits16``) is a diffusers ``UNet2DModel`` with
``num_class_embeds=11``: classes 0–9 plus ``NULL_LABEL`` (10), "label unknown". It trains on the
images of ``pool`` and ``labelled[10]`` (997) and on the labels of ``labelled[5]`` only (50);
every other image trains with ``NULL_LABEL`` (classifier-free style), and a labelled image's
label is also dropped 10% of the time. That mirrors augflow's use: a generator pretrained on
plenty of unlabelled data, conditioned with the few labels the user has. It is fair to the
benchmark's real-only baseline because the generator sees no label the 5-shot classifier does not
see, and no test or val image at all (the 10-shot classifier sees *more* labels than the
generator). Half of every batch is drawn from the 50 labelled images so the class embedding
learns from them at all (they are 5% of the images).

    python -m augflow.models.training.digits --out models/bundled/ddim-digits16 --steps 4000

The generator takes ``class_labels`` through the UNet (``unet(x, t, class_labels=...)``), so
augflow's ``generate`` with ``class_labels`` works, and img2img conditioned on the source's label
(SDEdit with the same ``class_labels``) needs nothing else from the model.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
from PIL import Image

SIDE = 16
NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # "label unknown": the classifier-free token
SPLIT_SEED = 20240613
N_TEST = 500
N_VAL = 300
SHOTS = (5, 10)
#: The few-shot set whose labels the generator may see (a subset of every labelled set).
GENERATOR_SHOTS = 5
#: sha256 of the split's index lists (see :func:`split_digest`): a change of scikit-learn's data
#: or of this code that moves an image across the split fails the tests instead of passing quietly.
SPLIT_DIGEST = "70bc491f23d1e0c3df6f56eee85f0bb9c116686f428aa404931fb79f25965de6"


def load_digits_16() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 (N, 16, 16) grey images (0–255) and their int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 → 0..255, then bilinear 8 → 16: the same resampling for every consumer of the split
    small = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    big = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
            for im in small
        ]
    )
    return big, d.target.astype(np.int64)


@dataclass(frozen=True)
class DigitsSplit:
    """Index lists into :func:`load_digits_16`; disjoint except ``labelled[5] ⊂ labelled[10]``."""

    test: np.ndarray
    val: np.ndarray
    labelled: dict[int, np.ndarray]
    pool: np.ndarray

    @property
    def generator_images(self) -> np.ndarray:
        """Indices whose pixels the generator trains on: the pool and the largest labelled set."""
        return np.sort(np.concatenate([self.pool, self.labelled[max(SHOTS)]]))

    @property
    def generator_labelled(self) -> np.ndarray:
        """Indices whose labels the generator sees."""
        return self.labelled[GENERATOR_SHOTS]


def digits_split(labels: np.ndarray | None = None) -> DigitsSplit:
    """The fixed split (pure: same data, same seed, same indices)."""
    if labels is None:
        labels = load_digits_16()[1]
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    test, val, rest = perm[:N_TEST], perm[N_TEST : N_TEST + N_VAL], perm[N_TEST + N_VAL :]
    labelled: dict[int, np.ndarray] = {}
    for shots in SHOTS:
        # the first `shots` of each class in permutation order, so 5-shot ⊂ 10-shot
        picked = [rest[labels[rest] == c][:shots] for c in range(NUM_CLASSES)]
        labelled[shots] = np.sort(np.concatenate(picked))
    pool = np.setdiff1d(rest, labelled[max(SHOTS)])
    return DigitsSplit(np.sort(test), np.sort(val), labelled, pool)


def split_digest(split: DigitsSplit) -> str:
    parts = {
        "test": split.test,
        "val": split.val,
        "pool": split.pool,
        **{f"labelled{k}": v for k, v in split.labelled.items()},
    }
    text = json.dumps({k: [int(i) for i in v] for k, v in sorted(parts.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def generator_training_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N,16,16), labels with NULL_LABEL where unknown, dataset indices)."""
    images, labels = load_digits_16()
    split = digits_split(labels)
    idx = split.generator_images
    known = np.isin(idx, split.generator_labelled)
    return images[idx], np.where(known, labels[idx], NULL_LABEL), idx


# --- the model -----------------------------------------------------------------------------------


def digits_unet() -> UNet2DModel:
    # 0.98 M parameters (3.7 MiB in fp32): fits what is left of the repository's 25 MB model budget
    # and trains on one CPU core in well under an hour. 56 channels: groups of 8 for GroupNorm.
    unet = UNet2DModel(
        sample_size=SIDE,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 56, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8,
        num_class_embeds=NUM_CLASSES + 1,
    )
    # augflow conditions a source without a label on this class (models/families/unet.py)
    unet.register_to_config(_null_class_label=NULL_LABEL)
    return unet


def digits_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True
    )


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 (B,16,16) grey → float (B,3,16,16) in [-1,1]; augflow's pixel pipelines are RGB."""
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]
    return x.repeat(1, 3, 1, 1)


class Ema:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: forget the random init fast
        for pe, p in zip(self.model.parameters(), model.parameters(), strict=True):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)


def sample_batch(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    batch: int,
    label_dropout: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half labelled images (label dropped with ``label_dropout``), half any image unlabelled."""
    known = np.flatnonzero(labels != NULL_LABEL)
    half = batch // 2
    idx = np.concatenate([rng.choice(known, half), rng.integers(0, len(images), batch - half)])
    lab = labels[idx].copy()
    lab[half:] = NULL_LABEL
    lab[:half][rng.random(half) < label_dropout] = NULL_LABEL
    return to_model_space(images[idx]), torch.from_numpy(lab)


def save(unet: UNet2DModel, out: Path, log: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    DDIMPipeline(unet=unet, scheduler=digits_scheduler()).save_pretrained(
        out, safe_serialization=True
    )
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")


def _save_state(
    path: Path, step: int, seconds: float, unet, ema: Ema, opt, rng, losses: list[float]
) -> None:
    # Resume state only (never shipped): local, loaded with weights_only=True.
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "seconds": seconds,
            "unet": unet.state_dict(),
            "ema": ema.model.state_dict(),
            "opt": opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "np_rng": json.dumps(rng.bit_generator.state),
            "losses": losses,
        },
        tmp,
    )
    tmp.replace(path)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images, labels, idx = generator_training_set()
    split = digits_split()
    unet = digits_unet()
    ema = Ema(unet, args.ema)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    alphas = digits_scheduler().alphas_cumprod
    losses: list[float] = []
    start, prev_seconds = 0, 0.0
    state_file = Path(args.state)
    if state_file.exists():
        st = torch.load(state_file, weights_only=True)
        unet.load_state_dict(st["unet"])
        ema.model.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        torch.set_rng_state(st["torch_rng"])
        rng.bit_generator.state = json.loads(st["np_rng"])
        losses, start = list(st["losses"]), int(st["step"])
        prev_seconds = float(st["seconds"])
        print(f"resumed from {state_file} at step {start}", flush=True)
    n_params = sum(p.numel() for p in unet.parameters())
    log: dict = {
        "kind": "generate, class-conditional (classifier-free style labels)",
        "seed": args.seed,
        "params": n_params,
        "args": {k: v for k, v in vars(args).items() if k != "state"},
        "num_classes": NUM_CLASSES,
        "null_label": NULL_LABEL,
        "split_digest": split_digest(split),
        "train_images": len(idx),
        "train_labels": int((labels != NULL_LABEL).sum()),
    }
    print(
        f"{n_params / 1e6:.2f} M params, {len(idx)} images, {log['train_labels']} labels",
        flush=True,
    )
    t0 = time.time() - prev_seconds
    unet.train()
    for step in range(start + 1, args.steps + 1):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps)) * min(1.0, step / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        x0, lab = sample_batch(rng, images, labels, args.batch, args.label_dropout)
        t = torch.randint(0, 1000, (args.batch,))
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t, class_labels=lab).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, step)
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            el = time.time() - t0
            print(
                f"step {step} loss {np.mean(losses[-50:]):.5f} lr {lr:.2e} {el / 60:.1f}min",
                flush=True,
            )
        if step % args.save_every == 0 or step == args.steps:
            el = time.time() - t0
            log.update(
                steps=step, minutes=round(el / 60, 2), final_loss=float(np.mean(losses[-200:]))
            )
            save(ema.model, Path(args.out), log)
            _save_state(state_file, step, el, unet, ema, opt, rng, losses)
            print(f"saved {args.out} at step {step}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--state", default="/tmp/augflow-digits-train-state.pt", help="resume file")
    train(p.parse_args())


if __name__ == "__main__":
    main()
