"""Train augflow's bundled models on CPU (or GPU) from a seed, resumably.

    python -m augflow.models.training.train denoise  --steps 5000 --out models/bundled/sr3-denoise
    python -m augflow.models.training.train upscale  --steps 5000 --out models/bundled/sr3-upscale
    python -m augflow.models.training.train generate --steps 6000 --out models/bundled/ddim-faces32

Every ``--save-every`` steps a checkpoint (weights, EMA, optimiser, step, both RNG states) goes to
``--ckpt`` and the EMA weights are exported (fp16 safetensors) as a complete diffusers folder to
``--out``, so an interrupted run leaves usable weights and rerunning the same command resumes
where it stopped, with the same batches it would have drawn (the result does not depend on
interruptions). Training photos: ``models/training/data.py`` (never the held-out ones).

What the SR3 models learn (see ``models/sr3.py``): the residual on the condition, with MSE on the
clean image, mostly (``--p-last``) at the last timestep t = T-1 — the single step that the
default sampling does — and otherwise at the timesteps of 2–4-step trailing DDIM, so that asking
for more steps stays sane. Colour augmentation (hue rotation, channel permutation, saturation
jitter) keeps saturated colours the photos lack from being pulled towards grey. The denoiser gets
the true σ as a noise-map channel (σ uniform in ``SIGMA_RANGE``), and its loss is weighted by
25/σ so that the low-noise cases — small in MSE but equal in dB — are not drowned out.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
from PIL import Image

from augflow.models.sr3 import SIGMA_SCALE, SR3Pipeline
from augflow.models.training.data import degrade_lr, faces_32, training_photos

SIGMA_RANGE = (5.0, 60.0)
FACTORS = (2, 4)
#: Down-sampling filters for upscaler training and their probabilities: mostly bicubic (what the
#: evaluation and most users do), some Lanczos and box so other ways of shrinking still work.
DOWN_FILTERS = (
    (Image.Resampling.BICUBIC, 0.8),
    (Image.Resampling.LANCZOS, 0.1),
    (Image.Resampling.BOX, 0.1),
)
SPACE_TO_DEPTH = 2
#: UNet widths per level (after space-to-depth). Sized for the 15 MB budget of the three models
#: in fp16 and for a few thousand CPU steps; see docs/bundled-models.md for the measurements.
WIDTHS = {"denoise": (64, 96, 112), "upscale": (48, 80, 112), "generate": (32, 64, 64)}


def sr3_unet(kind: str) -> UNet2DModel:
    s2 = SPACE_TO_DEPTH**2
    widths = WIDTHS[kind]
    return UNet2DModel(
        sample_size=48,
        in_channels=6 * s2 + (1 if kind == "denoise" else 0),
        out_channels=3 * s2,
        block_out_channels=widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * len(widths),
        up_block_types=("UpBlock2D",) * len(widths),
        norm_num_groups=16,
    )


def faces_unet() -> UNet2DModel:
    # One grey channel: the training faces are grey, so the model cannot make colour casts.
    # Attention at 8×8 only: global face layout for little CPU.
    return UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=WIDTHS["generate"],
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        attention_head_dim=32,
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


def faces_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True
    )


def sr3_pipeline(kind: str, unet: UNet2DModel | None = None) -> SR3Pipeline:
    return SR3Pipeline(
        unet=unet if unet is not None else sr3_unet(kind),
        scheduler=sr3_scheduler(),
        task=kind,
        factors=list(FACTORS) if kind == "upscale" else [],
        sigma_range=list(SIGMA_RANGE) if kind == "denoise" else [],
        tile_size=128,
        tile_overlap=32,
        default_steps=1,
        space_to_depth=SPACE_TO_DEPTH,
        noise_map=kind == "denoise",
        # the denoiser's run had started without it and learnt well; see models/sr3.py
        scale_x_t=kind == "upscale",
    )


def sampled_timesteps(scheduler: DDIMScheduler, max_steps: int = 4) -> list[int]:
    """Every timestep that trailing DDIM visits with 1..max_steps steps (T-1 first)."""
    seen: list[int] = []
    for n in range(1, max_steps + 1):
        scheduler.set_timesteps(n)
        for t in scheduler.timesteps.tolist():
            if int(t) not in seen:
                seen.append(int(t))
    return seen


# --- data --------------------------------------------------------------------------------------


def texture(crop: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels (grey): how much detail a crop has."""
    g = crop.astype(np.float32).mean(axis=2)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def random_crops(
    photos: list[np.ndarray], rng: np.random.Generator, n: int, size: int, pick: int = 1
) -> list[np.ndarray]:
    """Random crops with random flips and 90° rotations, photos drawn in proportion to √area.

    ``pick`` > 1 draws that many candidate crops for each one returned and keeps the one with the
    most detail (``texture``): many training photos are largely flat (sky, page, moon, cells), and
    flat crops teach an upscaler nothing, so they only dilute its batches.
    """
    areas = np.array([p.shape[0] * p.shape[1] for p in photos], dtype=np.float64)
    probs = np.sqrt(areas) / np.sqrt(areas).sum()  # big photos more, not overwhelmingly
    out = []
    for _ in range(n):
        candidates = []
        for _ in range(max(1, pick)):
            img = photos[rng.choice(len(photos), p=probs)]
            y = rng.integers(0, img.shape[0] - size + 1)
            x = rng.integers(0, img.shape[1] - size + 1)
            candidates.append(img[y : y + size, x : x + size])
        c = max(candidates, key=texture) if pick > 1 else candidates[0]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        c = np.rot90(c, k=int(rng.integers(0, 4)))
        out.append(np.ascontiguousarray(c))
    return out


def colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random channel permutation, hue rotation and saturation scaling of a uint8 RGB crop.

    Hue and saturation act on the (Cb, Cr) plane of YCbCr, keeping luma; the result is clipped to
    the RGB cube, which is where real saturated colours live, so the model sees clipped saturated
    regions of every hue.
    """
    x = img.astype(np.float32)
    if rng.random() < 0.5:
        x = x[:, :, rng.permutation(3)]
    if rng.random() < 0.7:
        y = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        cb = (x[:, :, 2] - y) * 0.564
        cr = (x[:, :, 0] - y) * 0.713
        theta = rng.uniform(-np.pi, np.pi) if rng.random() < 0.6 else 0.0
        sat = float(np.exp(rng.uniform(-0.7, 0.9)))
        c, s = np.cos(theta) * sat, np.sin(theta) * sat
        cb, cr = c * cb - s * cr, s * cb + c * cr
        r = y + 1.403 * cr
        b = y + 1.773 * cb
        g = (y - 0.299 * r - 0.114 * b) / 0.587
        x = np.stack([r, g, b], axis=-1)
    return np.clip(x, 0, 255).round().astype(np.uint8)


def to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H,W,3) list → float (B,3,H,W) in [-1,1]."""
    arr = np.stack(imgs).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def sr3_batch(
    task: str,
    photos: list[np.ndarray],
    rng: np.random.Generator,
    n: int,
    size: int,
    pick: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(clean x0, condition, σ per crop — zeros for upscale) in [-1,1] for one training batch."""
    crops = [colour_jitter(c, rng) for c in random_crops(photos, rng, n, size, pick)]
    x0 = to_tensor(crops)
    if task == "denoise":
        sig = rng.uniform(*SIGMA_RANGE, size=n).astype(np.float32)
        noisy = []
        for c, s in zip(crops, sig, strict=True):
            # clipped and quantised like a real 8-bit noisy photo (and like the evaluation)
            v = c.astype(np.float32) + s * rng.standard_normal(c.shape).astype(np.float32)
            noisy.append(np.clip(v, 0, 255).round().astype(np.uint8))
        return x0, to_tensor(noisy), sig
    filters = [f for f, _ in DOWN_FILTERS]
    probs = [p for _, p in DOWN_FILTERS]
    ups = []
    for c in crops:
        f = int(rng.choice(FACTORS))
        down = filters[int(rng.choice(len(filters), p=np.array(probs)))]
        ups.append(degrade_lr(c, f, down)[1])
    return x0, to_tensor(ups), np.zeros(n, dtype=np.float32)


# --- training ----------------------------------------------------------------------------------


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


def export(kind: str, unet: UNet2DModel, out: Path, log: dict) -> None:
    """Write the EMA UNet as a complete diffusers folder with fp16 safetensors weights."""
    out.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(unet).to(torch.float16)
    if kind == "generate":
        pipe: Any = DDIMPipeline(unet=half, scheduler=faces_scheduler())
    else:
        pipe = sr3_pipeline(kind, half)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")


def face_batch(faces: np.ndarray, rng: np.random.Generator, n: int) -> torch.Tensor:
    idx = rng.integers(0, len(faces), size=n)
    f = faces[idx].astype(np.float32) / 127.5 - 1.0
    flip = rng.random(n) < 0.5
    f[flip] = f[flip, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(f[:, None]))


def learning_rate(step: int, total: int, peak: float, decay_share: float = 0.25) -> float:
    """Warm-up, constant, then linear decay to zero over the last ``decay_share`` of the steps.

    Unlike a cosine, the schedule before the decay does not depend on ``total``: a run resumed
    with a different ``--steps`` before its decay began is the same as a fresh run with that
    ``--steps`` (so a CPU run can be lengthened or shortened once its speed is known).
    """
    warm = min(1.0, step / 100)
    decay_start = total * (1 - decay_share)
    if step <= decay_start:
        return peak * warm
    return peak * warm * max(0.0, (total - step) / (total - decay_start))


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    kind = args.kind
    ckpt_path = Path(args.ckpt) if args.ckpt else Path(args.out) / ".." / f".{kind}-ckpt.pt"
    pipe: SR3Pipeline | None = None
    if kind == "generate":
        faces = faces_32()
        unet = faces_unet()
        train_sched = faces_scheduler()
    else:
        photos = training_photos(min_side=args.patch)
        pipe = sr3_pipeline(kind)
        unet = pipe.unet
        train_sched = sr3_scheduler()
        ts_all = sampled_timesteps(sr3_scheduler())
        ts_last, ts_other = ts_all[0], ts_all[1:]
    unet.train()
    # bf16 autocast: convolutions run about twice as fast on CPUs with bf16 units (AMX/AVX-512
    # BF16), measured here; weights, optimiser state, normalisation and the loss stay fp32.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    alphas = train_sched.alphas_cumprod
    ema = Ema(unet, args.ema)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    n_params = sum(p.numel() for p in unet.parameters())
    log: dict = {"kind": kind, "seed": args.seed, "params": n_params, "args": vars(args)}
    losses: list[float] = []
    start, elapsed_before = 0, 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.model.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        start, elapsed_before, losses = state["step"], state["elapsed"], state["losses"]
        print(f"resumed from {ckpt_path} at step {start}", flush=True)
    t0 = time.time() - elapsed_before
    print(f"{kind}: {n_params / 1e6:.2f} M params", flush=True)
    last_step = min(args.steps, args.until) if args.until else args.steps
    for step in range(start + 1, last_step + 1):
        lr = learning_rate(step, args.steps, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        if kind == "generate":
            x0 = face_batch(faces, rng, args.batch)
            t = torch.from_numpy(rng.integers(0, 1000, size=args.batch))
            noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            with autocast:
                eps = unet(xt, t).sample
            loss = F.mse_loss(eps.float(), noise)
        else:
            assert pipe is not None
            x0, cond, sig = sr3_batch(kind, photos, rng, args.batch, args.patch, args.pick)
            last = rng.random(args.batch) < args.p_last
            t_np = np.where(last, ts_last, rng.choice(ts_other, size=args.batch))
            t = torch.from_numpy(t_np.astype(np.int64))
            noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            s = SPACE_TO_DEPTH
            smap = None
            if kind == "denoise":
                smap = torch.from_numpy(sig / SIGMA_SCALE).view(-1, 1, 1, 1)
                smap = smap.expand(-1, 1, args.patch // s, args.patch // s)
            with autocast:
                pred = pipe.predict_x0(xt, cond, t, smap)
            per = (pred.float() - x0).pow(2).mean(dim=(1, 2, 3))
            if kind == "denoise":
                per = per * torch.from_numpy(25.0 / sig)
            loss = per.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, step)
        losses.append(float(loss.detach()))
        elapsed = time.time() - t0
        if step % 25 == 0:
            done = step - start
            rate = (time.time() - t0 - elapsed_before) / max(done, 1)
            print(
                f"step {step} loss {np.mean(losses[-25:]):.5f} lr {lr:.2e} "
                f"{rate:.2f}s/step {elapsed / 60:.1f}min",
                flush=True,
            )
        if step % args.save_every == 0 or step == last_step:
            log.update(steps=step, minutes=round(elapsed / 60, 2),
                       final_loss=float(np.mean(losses[-200:])))  # fmt: skip
            export(kind, ema.model, Path(args.out), log)
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {"unet": unet.state_dict(), "ema": ema.model.state_dict(),
                 "opt": opt.state_dict(), "np_rng": rng.bit_generator.state,
                 "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed,
                 "losses": losses},
                tmp,
            )  # fmt: skip
            tmp.replace(ckpt_path)  # atomic: a kill mid-save keeps the previous checkpoint
            print(f"saved {args.out} and {ckpt_path} at step {step}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["denoise", "upscale", "generate"])
    p.add_argument("--out", required=True, help="diffusers folder the EMA weights are exported to")
    p.add_argument(
        "--ckpt", default=None, help="resumable checkpoint file (default: next to --out)"
    )
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--until", type=int, default=None,
                   help="stop (and save) after this step; rerun with a larger --until or none to go on")  # fmt: skip
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--p-last", type=float, default=0.85, help="share of samples at t = T-1")
    p.add_argument("--pick", type=int, default=1,
                   help="SR3: candidate crops per crop, the most detailed kept (1: any crop)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast for the network (CPU)")  # fmt: skip
    train(p.parse_args())


if __name__ == "__main__":
    main()
