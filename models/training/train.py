"""Train augflow's bundled models on CPU (or GPU) from a seed.

    python -m augflow.models.training.train denoise  --steps 1500 --out models/bundled/sr3-denoise
    python -m augflow.models.training.train upscale  --steps 1500 --out models/bundled/sr3-upscale
    python -m augflow.models.training.train generate --steps 2000 --out models/bundled/ddim-faces32

Every `--save-every` steps the current EMA weights are written as a complete diffusers folder, so
an interrupted run still leaves usable weights. `--max-minutes` stops early on slow machines
(then the result depends on the machine's speed; the step count reached is in train_log.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

from augflow.models.sr3 import SR3Pipeline
from augflow.models.training.data import degrade_lr, faces_32, training_photos

SIGMA_RANGE = (10.0, 50.0)
FACTORS = (2, 4)


def small_unet(in_channels: int, out_channels: int, sample_size: int) -> UNet2DModel:
    # ~1.7 M parameters, no attention: attention costs too much on CPU for what it adds here.
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=16,
    )


def sr3_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="sample",
        timestep_spacing="trailing",
        clip_sample=True,
        set_alpha_to_one=True,
    )


def random_crops(
    photos: list[np.ndarray], rng: np.random.Generator, n: int, size: int
) -> list[np.ndarray]:
    """Random crops with random flips and 90° rotations, photos drawn in proportion to area."""
    areas = np.array([p.shape[0] * p.shape[1] for p in photos], dtype=np.float64)
    probs = np.sqrt(areas) / np.sqrt(areas).sum()  # sqrt: big photos more, not overwhelmingly
    out = []
    for _ in range(n):
        img = photos[rng.choice(len(photos), p=probs)]
        y = rng.integers(0, img.shape[0] - size + 1)
        x = rng.integers(0, img.shape[1] - size + 1)
        c = img[y : y + size, x : x + size]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        c = np.rot90(c, k=int(rng.integers(0, 4)))
        out.append(np.ascontiguousarray(c))
    return out


def to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H,W,3) list → float (B,3,H,W) in [-1,1]."""
    arr = np.stack(imgs).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def sr3_batch(
    task: str, photos: list[np.ndarray], rng: np.random.Generator, n: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean x0, condition) in [-1,1] for one training batch."""
    crops = random_crops(photos, rng, n, size)
    x0 = to_tensor(crops)
    if task == "denoise":
        sig = rng.uniform(*SIGMA_RANGE, size=(n, 1, 1, 1)).astype(np.float32) / 127.5
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        # Clipped like a real 8-bit noisy photo: the model must learn the clipping bias too.
        cond = (x0 + torch.from_numpy(sig) * noise).clamp(-1.0, 1.0)
    else:
        ups = [degrade_lr(c, int(rng.choice(FACTORS)))[1] for c in crops]
        cond = to_tensor(ups)
    return x0, cond


class Ema:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Warm-up so the early average is not dominated by the random initialisation.
        d = min(self.decay, (1 + step) / (10 + step))
        for pe, p in zip(self.model.parameters(), model.parameters(), strict=True):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)


def save(kind: str, unet: UNet2DModel, out: Path, log: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if kind == "generate":
        sched = DDIMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True
        )
        pipe = DDIMPipeline(unet=unet, scheduler=sched)
    else:
        pipe = SR3Pipeline(
            unet=unet,
            scheduler=sr3_scheduler(),
            task=kind,
            factors=list(FACTORS) if kind == "upscale" else [],
            sigma_range=list(SIGMA_RANGE) if kind == "denoise" else [],
            # Measured on held-out photos: extra steps help the denoiser a little and cost the
            # upscaler PSNR (they add texture that is not in the original), see the docs.
            default_steps=4 if kind == "denoise" else 1,
        )
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    kind = args.kind
    if kind == "generate":
        faces = faces_32()
        unet = small_unet(3, 3, 32)
        train_sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    else:
        photos = training_photos(min_side=args.patch)
        unet = small_unet(6, 3, args.patch)
        train_sched = sr3_scheduler()
    if args.init:
        # Continue from a saved folder (e.g. a run stopped by --max-minutes) with a fresh schedule.
        unet = UNet2DModel.from_pretrained(Path(args.init) / "unet", use_safetensors=True)
        unet.train()
    alphas = train_sched.alphas_cumprod
    ema = Ema(unet, args.ema)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    n_params = sum(p.numel() for p in unet.parameters())
    log: dict = {"kind": kind, "seed": args.seed, "params": n_params, "args": vars(args)}
    losses: list[float] = []
    t0 = time.time()
    print(f"{kind}: {n_params / 1e6:.2f} M params", flush=True)
    step = 0
    for step in range(1, args.steps + 1):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        lr *= min(1.0, step / 50)  # short warm-up
        for g in opt.param_groups:
            g["lr"] = lr
        if kind == "generate":
            idx = rng.integers(0, len(faces), size=args.batch)
            f = faces[idx].astype(np.float32) / 127.5 - 1.0
            flip = rng.random(args.batch) < 0.5
            f[flip] = f[flip, :, ::-1]
            x0 = torch.from_numpy(np.repeat(f[:, None], 3, axis=1).copy())
        else:
            x0, cond = sr3_batch(kind, photos, rng, args.batch, args.patch)
        t = torch.randint(0, 1000, (args.batch,))
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if kind == "generate":
            loss = F.mse_loss(unet(xt, t).sample, noise)
        else:
            pred = cond + unet(torch.cat([xt, cond], dim=1), t).sample
            loss = F.mse_loss(pred, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, step)
        losses.append(float(loss.detach()))
        elapsed = time.time() - t0
        if step % 25 == 0:
            print(
                f"step {step} loss {np.mean(losses[-25:]):.5f} lr {lr:.2e} "
                f"{elapsed / step:.2f}s/step {elapsed / 60:.1f}min",
                flush=True,
            )
        stop = args.max_minutes and elapsed > args.max_minutes * 60
        if step % args.save_every == 0 or step == args.steps or stop:
            log.update(
                steps=step, minutes=round(elapsed / 60, 2), final_loss=np.mean(losses[-100:])
            )
            save(kind, ema.model, Path(args.out), log)
            print(f"saved {args.out} at step {step}", flush=True)
        if stop:
            break


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["denoise", "upscale", "generate"])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--max-minutes", type=float, default=0.0)
    p.add_argument("--init", default=None, help="diffusers folder whose UNet to continue from")
    train(p.parse_args())


if __name__ == "__main__":
    main()
