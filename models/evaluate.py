"""Evaluate the bundled models on held-out scikit-image photos; writes a markdown table and JSON.

    python -m augflow.models.evaluate --out docs/bundled-eval.md

Deterministic: fixed crops of photos never used in training (`training.data.HELD_OUT`), seeded
noise, seeded diffusion noise (one generator per image). Baselines: the noisy input, scikit-image
non-local means (σ estimated from the image, as a user without ground truth would) and
BayesShrink wavelet denoising; PIL bicubic and Lanczos upscaling.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means, denoise_wavelet, estimate_sigma

from augflow.models.sr3 import SR3Pipeline
from augflow.models.training.data import HELD_OUT, degrade_lr, faces_32, load_photo, pil_resize

BUNDLED = Path(__file__).resolve().parent / "bundled"
CROP = 256
# Top-left corners of the evaluation crops, chosen to hold each photo's main subject.
CROPS: dict[str, tuple[int, int]] = {
    "astronaut": (30, 140),
    "coffee": (72, 172),
    "camera": (100, 128),
}
SIGMAS = (15, 25, 50)
FACTORS = (2, 4)


def held_out_crops() -> dict[str, np.ndarray]:
    out = {}
    for name in HELD_OUT:
        y, x = CROPS[name]
        out[name] = load_photo(name)[y : y + CROP, x : x + CROP]
    return out


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(ref, img, data_range=255))


def ssim(ref: np.ndarray, img: np.ndarray) -> float:
    return float(structural_similarity(ref, img, channel_axis=-1, data_range=255))


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0,1] → uint8, as a user would save it."""
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def add_noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Gaussian noise of σ (0–255 scale), clipped and quantised like a real 8-bit noisy photo."""
    rng = np.random.default_rng(seed)
    noisy = img.astype(np.float64) + rng.normal(0.0, sigma, img.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def run_sr3(pipe: SR3Pipeline, cond: np.ndarray, seed: int, steps: int | None = None) -> np.ndarray:
    """uint8 (H,W,3) condition → uint8 output through the pipeline's public call."""
    x = torch.from_numpy(cond.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    out = pipe(x, [torch.Generator().manual_seed(seed)], num_inference_steps=steps)
    arr = ((out[0].permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255)
    return arr.astype(np.uint8)


def nlm(noisy: np.ndarray) -> np.ndarray:
    f = noisy.astype(np.float64) / 255
    sigma = float(np.mean(estimate_sigma(f, channel_axis=-1)))
    out = denoise_nl_means(
        f, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6,
        channel_axis=-1,
    )  # fmt: skip
    return to_uint8(out)


def wavelet(noisy: np.ndarray) -> np.ndarray:
    f = noisy.astype(np.float64) / 255
    out = denoise_wavelet(
        f, channel_axis=-1, convert2ycbcr=True, method="BayesShrink", mode="soft",
        rescale_sigma=True,
    )  # fmt: skip
    return to_uint8(out)


def mean_metrics(rows: list[dict], key: str) -> dict[str, float]:
    return {
        "psnr": round(float(np.mean([r[key]["psnr"] for r in rows])), 2),
        "ssim": round(float(np.mean([r[key]["ssim"] for r in rows])), 4),
    }


def evaluate_denoise(folder: Path, crops: dict[str, np.ndarray], steps: list[int]) -> dict:
    pipe = SR3Pipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    results: dict = {}
    for sigma in SIGMAS:
        rows = []
        for i, (name, img) in enumerate(crops.items()):
            noisy = add_noise(img, sigma, seed=1000 * sigma + i)
            outs = {"noisy input": noisy, "NL-means": nlm(noisy), "wavelet": wavelet(noisy)}
            for s in steps:
                outs[f"SR3 ({s} steps)"] = run_sr3(pipe, noisy, seed=i, steps=s)
            rows.append({k: {"psnr": psnr(img, v), "ssim": ssim(img, v)} for k, v in outs.items()})
            rows[-1]["image"] = name
        results[str(sigma)] = {k: mean_metrics(rows, k) for k in rows[0] if k != "image"}
        results[str(sigma)]["per_image"] = rows
    return results


def evaluate_upscale(folder: Path, crops: dict[str, np.ndarray], steps: list[int]) -> dict:
    pipe = SR3Pipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    results: dict = {}
    for factor in FACTORS:
        rows = []
        for i, (name, hr) in enumerate(crops.items()):
            lr, bicubic = degrade_lr(hr, factor)
            size = (hr.shape[1], hr.shape[0])
            lanczos = np.asarray(Image.fromarray(lr).resize(size, Image.Resampling.LANCZOS))
            outs = {"bicubic": bicubic, "Lanczos": lanczos}
            for s in steps:
                outs[f"SR3 ({s} steps)"] = run_sr3(pipe, bicubic, seed=i, steps=s)
            row: dict = {"image": name}
            for k, v in outs.items():
                down = pil_resize(v, (lr.shape[1], lr.shape[0]))
                row[k] = {"psnr": psnr(hr, v), "ssim": ssim(hr, v), "consistency": psnr(lr, down)}
            rows.append(row)
        keys = [k for k in rows[0] if k != "image"]
        res = {k: mean_metrics(rows, k) for k in keys}
        for k in keys:
            res[k]["consistency"] = round(float(np.mean([r[k]["consistency"] for r in rows])), 2)
        res["per_image"] = rows
        results[str(factor)] = res
    return results


def evaluate_generator(folder: Path, n: int = 16, steps: int = 50) -> dict:
    """Sample statistics: not blank, face-like (correlation with the mean training face) and
    not memorised (PSNR to the nearest training face, which would be ~40+ dB for a copy)."""
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    imgs = pipe(batch_size=n, generator=gens, num_inference_steps=steps, output_type="np").images
    grey = (imgs.mean(axis=-1) * 255).astype(np.float64)
    faces = faces_32().astype(np.float64)
    mean_face = faces.mean(axis=0)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        if a.std() == 0 or b.std() == 0:  # a flat image has no correlation with anything
            return 0.0
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    nn_psnr = [max(psnr(f.astype(np.uint8), g.astype(np.uint8)) for f in faces) for g in grey]
    return {
        "samples": n,
        "steps": steps,
        "pixel_std": round(float(grey.std(axis=(1, 2)).mean()), 2),
        "corr_with_mean_face": round(float(np.mean([corr(g, mean_face) for g in grey])), 3),
        "train_faces_corr_with_mean_face": round(
            float(np.mean([corr(f, mean_face) for f in faces])), 3
        ),
        "nearest_train_face_psnr": round(float(np.mean(nn_psnr)), 2),
        "grid": imgs,
    }


def markdown(res: dict) -> str:
    lines = [
        f"Held-out photos: {', '.join(HELD_OUT)} ({CROP}×{CROP} crops). PSNR in dB / SSIM, mean "
        "over the photos. Produced by `python -m augflow.models.evaluate`.",
        "",
    ]
    if "denoise" in res:
        d = res["denoise"]
        methods = [k for k in d[str(SIGMAS[0])] if k != "per_image"]
        lines += ["### Denoising (Gaussian σ on the 0–255 scale)", ""]
        lines += ["| method | " + " | ".join(f"σ={s}" for s in SIGMAS) + " |"]
        lines += ["|---|" + "---|" * len(SIGMAS)]
        for m in methods:
            cells = [f"{d[str(s)][m]['psnr']:.2f} / {d[str(s)][m]['ssim']:.3f}" for s in SIGMAS]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    if "upscale" in res:
        u = res["upscale"]
        methods = [k for k in u[str(FACTORS[0])] if k != "per_image"]
        lines += ["### Upscaling (PSNR / SSIM vs the original; consistency = PSNR of the "
                  "output bicubic-downscaled vs the low-res input)", ""]  # fmt: skip
        header = " | ".join(f"×{f} PSNR / SSIM | ×{f} consistency" for f in FACTORS)
        lines += [f"| method | {header} |", "|---|" + "---|---|" * len(FACTORS)]
        for m in methods:
            cells = []
            for f in FACTORS:
                r = u[str(f)][m]
                cells += [f"{r['psnr']:.2f} / {r['ssim']:.3f}", f"{r['consistency']:.2f}"]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    if "generate" in res:
        g = res["generate"]
        lines += [
            "### Generator (32×32 faces)",
            "",
            "| samples | DDIM steps | pixel std | corr. with mean face (train faces) "
            "| PSNR to nearest train face |",
            "|---|---|---|---|---|",
            f"| {g['samples']} | {g['steps']} | {g['pixel_std']} | {g['corr_with_mean_face']} "
            f"({g['train_faces_corr_with_mean_face']}) | {g['nearest_train_face_psnr']} |",
            "",
        ]
    lines.append(f"Runtime: {res['seconds']:.0f} s on CPU ({res['threads']} threads).")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description="Evaluate augflow's bundled models.")
    p.add_argument("--out", default="docs/bundled-eval.md")
    p.add_argument("--bundled", default=str(BUNDLED))
    p.add_argument("--steps", default="1,4", help="comma-separated SR3 step counts to report")
    p.add_argument("--only", choices=["denoise", "upscale", "generate"], default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid", default=None, help="optional PNG path for a generator sample grid")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    bundled = Path(args.bundled)
    crops = held_out_crops()
    t0 = time.time()
    res: dict = {}
    if args.only in (None, "denoise"):
        res["denoise"] = evaluate_denoise(bundled / "sr3-denoise", crops, steps)
    if args.only in (None, "upscale"):
        res["upscale"] = evaluate_upscale(bundled / "sr3-upscale", crops, steps)
    if args.only in (None, "generate"):
        res["generate"] = evaluate_generator(bundled / "ddim-faces32")
        grid = res["generate"].pop("grid")
        if args.grid:
            Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
            rows = [np.concatenate(list(grid[i : i + 8]), axis=1) for i in range(0, len(grid), 8)]
            Image.fromarray(to_uint8(np.concatenate(rows, axis=0))).resize(
                (8 * 96, len(rows) * 96), Image.Resampling.NEAREST
            ).save(args.grid)
    res["seconds"] = time.time() - t0
    res["threads"] = args.threads
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(res))
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
