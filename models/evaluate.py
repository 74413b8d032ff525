"""Evaluate the bundled models on held-out photos, through the same code as ``augflow run``.

    python -m augflow.models.evaluate            # writes docs/bundled-eval.md and .json

Held-out photos come from sources disjoint from training (``training.data.HELD_OUT``: scikit-learn's
and PyWavelets' sample photos; training uses scikit-image's and other packages' photos), 256×256
crops. The bundled SR3 models run through :class:`augflow.models.runner.AugmentModel` — what each
Ray actor of ``augflow run`` calls — with a request that leaves ``steps`` unset (the model's own
default) and sets only the operation, exactly as a user's request file would. Everything is
seeded: the added noise, and the diffusion noise through the request seed.

Baselines: the noisy input; scikit-image non-local means with σ estimated from the image
(``estimate_sigma``, as a user without ground truth would) and BayesShrink wavelet denoising; PIL
bicubic and Lanczos upscaling. Metrics per photo and mean: PSNR, SSIM, and for denoising the
chroma error (mean CIELAB a*b* distance to the clean photo; a colour shift or desaturation raises
it) and the mean chroma change (negative = desaturated). The generator is scored by KID and FID in
a fixed random-convolution feature space against its training faces, next to a Gaussian fitted to
those faces.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage.color import rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means, denoise_wavelet, estimate_sigma

from augflow.models.training.data import HELD_OUT, degrade_lr, faces_32, held_out_crops

BUNDLED = Path(__file__).resolve().parent / "bundled"
SIGMAS = (15, 25, 50)
FACTORS = (2, 4)
MODEL = "bundled model (augflow run)"
MODEL_SIGMA = "bundled model, σ given"


# --- metrics -------------------------------------------------------------------------------------


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(ref, img, data_range=255))


def ssim(ref: np.ndarray, img: np.ndarray) -> float:
    return float(structural_similarity(ref, img, channel_axis=-1, data_range=255))


def chroma(ref: np.ndarray, img: np.ndarray) -> tuple[float, float]:
    """(mean a*b* distance, mean change of chroma C*) between two uint8 RGB images, CIELAB."""
    a = rgb2lab(ref.astype(np.float64) / 255)[..., 1:]
    b = rgb2lab(img.astype(np.float64) / 255)[..., 1:]
    dist = float(np.sqrt(((a - b) ** 2).sum(-1)).mean())
    change = float((np.hypot(b[..., 0], b[..., 1]) - np.hypot(a[..., 0], a[..., 1])).mean())
    return dist, change


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0,1] → uint8, as a user would save it."""
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def add_noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Gaussian noise of σ (0–255 scale), clipped and quantised like a real 8-bit noisy photo."""
    rng = np.random.default_rng(seed)
    noisy = img.astype(np.float64) + rng.normal(0.0, sigma, img.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


# --- baselines -----------------------------------------------------------------------------------


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


# --- the product path ----------------------------------------------------------------------------


def request_for(folder: Path, operation: dict[str, Any], seed: int = 0) -> Any:
    """The request a user would write: model and operation only, ``steps`` left to the model.

    Until ``steps`` is optional in the request schema, the model's ``default_steps`` is passed,
    which is what an unset ``steps`` means.
    """
    from augflow.schemas.request import AugmentRequest, parse_request

    data: dict[str, Any] = {
        "dataset": "bundled-eval",
        "operation": operation,
        "model": {"id": str(folder)},
        "seed": seed,
    }
    if operation["kind"] != "generate":
        data["inputs"] = "/dev/null"  # never read: AugmentModel is handed the images
    if AugmentRequest.model_fields["steps"].default is not None:
        index = json.loads((folder / "model_index.json").read_text())
        data["steps"] = int(index.get("default_steps", 50))
    return parse_request(data)


class ProductModel:
    """One bundled model loaded as ``augflow run`` loads it; images in, images out."""

    def __init__(self, folder: Path, operation: dict[str, Any]) -> None:
        from augflow.models.runner import AugmentModel

        self.request = request_for(folder, operation)
        self.model = AugmentModel(self.request, "cpu")

    def __call__(self, sources: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
        from augflow.schemas.records import WorkItem, derive_seed

        items = [
            WorkItem(row_id=f"r{i}", source_id=f"s{i}", source_uri=None, source_row=None,
                     variant=0, seed=derive_seed("bundled-eval", seed, f"s{i}", 0))
            for i in range(len(sources))
        ]  # fmt: skip
        outs = self.model(items, [Image.fromarray(s) for s in sources])
        imgs = []
        for o in outs:
            if o.png is None:
                raise RuntimeError(f"the model failed on an evaluation photo: {o.error}")
            imgs.append(np.asarray(Image.open(io.BytesIO(o.png)).convert("RGB")))
        return imgs


def run_pipeline(pipe: Any, cond: np.ndarray, seed: int, **kw: Any) -> np.ndarray:
    """uint8 (H,W,3) condition → uint8 output through the pipeline's public call."""
    x = torch.from_numpy(cond.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    out = pipe(x.to(pipe.unet.dtype), [torch.Generator().manual_seed(seed)], **kw)
    arr = ((out[0].float().permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255)
    return arr.astype(np.uint8)


# --- evaluations ---------------------------------------------------------------------------------


def summarise(rows: list[dict], keys: list[str]) -> dict:
    res: dict = {}
    for k in keys:
        res[k] = {
            m: round(float(np.mean([r[k][m] for r in rows])), 4 if m == "ssim" else 2)
            for m in rows[0][k]
        }
    return res


def evaluate_denoise(folder: Path, crops: dict[str, np.ndarray], sigma: int) -> dict:
    """Every method on every crop at one noise level."""
    model = ProductModel(folder, {"kind": "denoise", "noise_level": sigma})
    pipe = model.model.pipeline
    names = list(crops)
    noisy = [add_noise(crops[n], sigma, seed=1000 * sigma + i) for i, n in enumerate(names)]
    ours = model(noisy)
    rows = []
    for i, name in enumerate(names):
        clean = crops[name]
        outs = {
            "noisy input": noisy[i],
            "NL-means": nlm(noisy[i]),
            "wavelet": wavelet(noisy[i]),
            MODEL: ours[i],
            MODEL_SIGMA: run_pipeline(pipe, noisy[i], seed=i, noise_level=float(sigma)),
        }
        row: dict = {"image": name}
        for k, v in outs.items():
            dist, change = chroma(clean, v)
            row[k] = {"psnr": psnr(clean, v), "ssim": ssim(clean, v),
                      "chroma_error": dist, "chroma_change": change}  # fmt: skip
        rows.append(row)
    keys = [k for k in rows[0] if k != "image"]
    res = summarise(rows, keys)
    res["per_image"] = rows
    res["margins"] = {
        "vs NL-means min": round(min(r[MODEL]["psnr"] - r["NL-means"]["psnr"] for r in rows), 2),
        "vs noisy input min": round(
            min(r[MODEL]["psnr"] - r["noisy input"]["psnr"] for r in rows), 2
        ),
    }
    return res


def evaluate_upscale(folder: Path, crops: dict[str, np.ndarray], factor: int) -> dict:
    """Every method on every crop at one factor."""
    model = ProductModel(folder, {"kind": "upscale", "factor": factor})
    names = list(crops)
    lrs = [degrade_lr(crops[n], factor)[0] for n in names]
    ours = model(lrs)
    rows = []
    for i, name in enumerate(names):
        hr, lr = crops[name], lrs[i]
        size = (hr.shape[1], hr.shape[0])
        outs = {
            "bicubic": np.asarray(Image.fromarray(lr).resize(size, Image.Resampling.BICUBIC)),
            "Lanczos": np.asarray(Image.fromarray(lr).resize(size, Image.Resampling.LANCZOS)),
            MODEL: ours[i],
        }
        row: dict = {"image": name}
        for k, v in outs.items():
            down = np.asarray(Image.fromarray(v).resize(lr.shape[1::-1], Image.Resampling.BICUBIC))
            row[k] = {"psnr": psnr(hr, v), "ssim": ssim(hr, v), "consistency": psnr(lr, down)}
        rows.append(row)
    keys = [k for k in rows[0] if k != "image"]
    res = summarise(rows, keys)
    res["per_image"] = rows
    res["margins"] = {
        "vs Lanczos min": round(min(r[MODEL]["psnr"] - r["Lanczos"]["psnr"] for r in rows), 2)
    }
    return res


# --- generator -----------------------------------------------------------------------------------


def random_conv_features(imgs: np.ndarray, seed: int = 0) -> np.ndarray:
    """Features of grey images (N,H,W) uint8 from a fixed, randomly initialised conv net.

    A stand-in for a learned feature space (none can be downloaded here). Three layers of random
    zero-mean (band-pass, so blind to plain brightness) filters; per filter the spatial mean of
    |response| and its RMS — their ratio measures how sparse, edge-like, the responses are, which
    is where real faces differ from a Gaussian with the same pixel covariance — and, after ReLU
    and pooling, a 2×2 layout of four channels per layer. 192 numbers per image. Seeded, so every
    run and every model is measured in the same space. Measured (training faces as reference):
    KID of their mirror images −0.04, of a Gaussian fit 0.41, of the faces blurred by 1 px 14.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(imgs.astype(np.float32) / 127.5 - 1.0)[:, None]
    feats = []
    for cin, cout, k in ((1, 24, 5), (24, 24, 3), (24, 24, 3)):
        w = torch.randn(cout, cin, k, k, generator=g)
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        r = torch.nn.functional.conv2d(x, w, padding=k // 2)
        feats += [r.abs().mean(dim=(2, 3)), r.pow(2).mean(dim=(2, 3)).sqrt()]
        x = torch.nn.functional.avg_pool2d(torch.relu(r), 2)
        feats.append(torch.nn.functional.adaptive_avg_pool2d(x[:, :4], 2).flatten(1))
    return torch.cat(feats, dim=1).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (KID's definition), in the given features."""
    d = a.shape[1]

    def k(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x @ y.T / d + 1.0) ** 3

    m, n = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float(
        (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
        + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
        - 2 * kab.mean()
    )


def sample_generator(folder: Path, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """n samples (uint8 RGB (n,32,32,3)) and how they were made.

    Through ``augflow run``'s code (AugmentModel, a ``generate`` request with defaults); if this
    checkout's UNet family cannot run a one-channel model yet, the diffusers ``DDIMPipeline``
    call with its default 50 steps, the grey channel repeated to RGB.
    """
    try:
        model = ProductModel(folder, {"kind": "generate", "num_images": n})
        from augflow.schemas.records import WorkItem, derive_seed

        items = [
            WorkItem(row_id=f"g{i}", source_id=f"g{i}", source_uri=None, source_row=None,
                     variant=0, seed=derive_seed("bundled-eval", seed, f"g{i}", 0))
            for i in range(n)
        ]  # fmt: skip
        outs = model.model(items, [None] * n)
        failed = [o.error for o in outs if o.png is None]
        if failed:
            raise RuntimeError(f"{len(failed)} of {n} items failed: {failed[0]}")
        imgs = [np.asarray(Image.open(io.BytesIO(o.png)).convert("RGB")) for o in outs]  # type: ignore[arg-type]
        return np.stack(imgs), "augflow run (AugmentModel)"
    except Exception as exc:
        from diffusers import DDIMPipeline

        pipe = DDIMPipeline.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        out = pipe(batch_size=n, generator=gens, output_type="np").images
        grey = to_uint8(out[..., 0])
        how = f"DDIMPipeline, default steps (AugmentModel failed: {type(exc).__name__}: {exc})"
        return np.repeat(grey[..., None], 3, axis=-1), how


def evaluate_generator(folder: Path, n: int = 128) -> dict:
    faces = faces_32()
    imgs, how = sample_generator(folder, n)
    grey = imgs.astype(np.float64).mean(-1)
    cast = float(np.abs(imgs.astype(np.float64) - grey[..., None]).mean())
    rng = np.random.default_rng(0)
    flat = faces.reshape(len(faces), -1).astype(np.float64)
    gauss = rng.multivariate_normal(flat.mean(0), np.cov(flat, rowvar=False), size=n)
    gauss = np.clip(gauss, 0, 255).round().reshape(n, 32, 32).astype(np.uint8)
    raw = random_conv_features(faces)
    mu, sd = raw.mean(0), raw.std(0) + 1e-8  # standardised by the reference: scale-free scores
    ref = (raw - mu) / sd
    scores = {}
    for name, sample in (("model", grey.round().astype(np.uint8)), ("Gaussian fit", gauss),
                         ("training faces, mirrored", faces[:, :, ::-1].copy())):  # fmt: skip
        f = (random_conv_features(sample) - mu) / sd
        scores[name] = {"kid": kernel_inception_distance(f, ref), "fid": frechet_distance(f, ref)}
    nn_psnr = [max(psnr(f, s) for f in faces) for s in grey.round().astype(np.uint8)[: min(n, 64)]]
    return {
        "samples": n,
        "how": how,
        "colour_cast": round(cast, 3),
        "scores": {k: {m: round(v, 4) for m, v in d.items()} for k, d in scores.items()},
        "nearest_train_face_psnr": round(float(np.mean(nn_psnr)), 2),
        "grid": imgs[:64],
    }


def save_grid(imgs: np.ndarray, path: Path, cell: int = 64) -> None:
    rows = [np.concatenate(list(imgs[i : i + 8]), axis=1) for i in range(0, len(imgs), 8)]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((8 * cell, len(rows) * cell), Image.Resampling.NEAREST).save(path)


# --- report --------------------------------------------------------------------------------------


def _cell(r: dict) -> str:
    return f"{r['psnr']:.2f} / {r['ssim']:.3f}"


def markdown(res: dict) -> str:
    crops = res["crops"]
    lines = [
        f"Held-out photos (sources disjoint from training): {', '.join(crops)} — 256×256 crops of "
        f"{', '.join(HELD_OUT)}. PSNR dB / SSIM, mean over the crops. Bundled models run through "
        "`augflow run`'s code (`AugmentModel`) with default settings (`steps` unset). "
        "Produced by `python -m augflow.models.evaluate`.",
        "",
    ]
    if "denoise" in res:
        d = res["denoise"]
        methods = [k for k in d[str(SIGMAS[0])] if k not in ("per_image", "margins")]
        lines += ["### Denoising (Gaussian σ, 0–255 scale; PSNR / SSIM, chroma error)", ""]
        lines += ["| method | " + " | ".join(f"σ={s}" for s in SIGMAS) + " |"]
        lines += ["|---|" + "---|" * len(SIGMAS)]
        for m in methods:
            cells = [f"{_cell(d[str(s)][m])}, {d[str(s)][m]['chroma_error']:.2f}" for s in SIGMAS]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "Per crop, PSNR (model − NL-means, model − noisy input):", ""]
        lines += ["| crop | " + " | ".join(f"σ={s}" for s in SIGMAS) + " |"]
        lines += ["|---|" + "---|" * len(SIGMAS)]
        for i, name in enumerate(crops):
            cells = []
            for s in SIGMAS:
                r = d[str(s)]["per_image"][i]
                m = r[MODEL]["psnr"]
                cells.append(
                    f"{m:.2f} ({m - r['NL-means']['psnr']:+.2f}, {m - r['noisy input']['psnr']:+.2f})"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "upscale" in res:
        u = res["upscale"]
        methods = [k for k in u[str(FACTORS[0])] if k not in ("per_image", "margins")]
        lines += ["### Upscaling (PSNR / SSIM vs the original; consistency = PSNR of the "
                  "output bicubic-downscaled vs the low-res input)", ""]  # fmt: skip
        header = " | ".join(f"×{f} PSNR / SSIM | ×{f} consistency" for f in FACTORS)
        lines += [f"| method | {header} |", "|---|" + "---|---|" * len(FACTORS)]
        for m in methods:
            cells = []
            for f in FACTORS:
                r = u[str(f)][m]
                cells += [_cell(r), f"{r['consistency']:.2f}"]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "Per crop, PSNR (model − Lanczos):", ""]
        lines += ["| crop | " + " | ".join(f"×{f}" for f in FACTORS) + " |"]
        lines += ["|---|" + "---|" * len(FACTORS)]
        for i, name in enumerate(crops):
            cells = []
            for f in FACTORS:
                r = u[str(f)]["per_image"][i]
                cells.append(
                    f"{r[MODEL]['psnr']:.2f} ({r[MODEL]['psnr'] - r['Lanczos']['psnr']:+.2f})"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "generate" in res:
        g = res["generate"]
        s = g["scores"]
        lines += [
            "### Generator (32×32 faces; KID / FID against the 100 training faces in a fixed "
            "random-convolution feature space, lower is better)",
            "",
            f"{g['samples']} samples via {g['how']}.",
            "",
            "| samples from | KID | FID |",
            "|---|---|---|",
            *(f"| {k} | {v['kid']:.4f} | {v['fid']:.3f} |" for k, v in s.items()),
            "",
            f"Colour cast (mean |channel − grey|, 0–255): {g['colour_cast']}. Mean PSNR of a "
            f"sample to its nearest training face: {g['nearest_train_face_psnr']} dB "
            "(a copy would be 40+).",
            "",
        ]
    lines.append(
        f"Runtime: {res['seconds']:.0f} s wall on CPU ({res['workers']} processes of "
        f"{res['threads']} thread), baselines included."
    )
    return "\n".join(lines) + "\n"


def _job(kind: str, arg: int, bundled: str, threads: int) -> tuple[str, int, dict]:
    torch.set_num_threads(threads)
    folder = Path(bundled)
    if kind == "denoise":
        return kind, arg, evaluate_denoise(folder / "sr3-denoise", held_out_crops(), arg)
    if kind == "upscale":
        return kind, arg, evaluate_upscale(folder / "sr3-upscale", held_out_crops(), arg)
    return kind, arg, evaluate_generator(folder / "ddim-faces32")


def main() -> None:
    from concurrent.futures import ProcessPoolExecutor

    p = argparse.ArgumentParser(description="Evaluate augflow's bundled models.")
    p.add_argument("--out", default="docs/bundled-eval.md")
    p.add_argument("--bundled", default=str(BUNDLED))
    p.add_argument("--only", choices=["denoise", "upscale", "generate"], default=None)
    p.add_argument("--workers", type=int, default=3, help="processes (one σ/factor/model each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--grid", default="docs/images/bundled-faces-grid.png",
                   help="PNG path for the generator's 8×8 sample grid")  # fmt: skip
    args = p.parse_args()
    jobs = [("denoise", s) for s in SIGMAS] + [("upscale", f) for f in FACTORS]
    jobs += [("generate", 0)]
    jobs = [j for j in jobs if args.only in (None, j[0])]
    t0 = time.time()
    res: dict = {"crops": list(held_out_crops())}
    # Independent jobs in separate processes: the evaluation is CPU-bound and single-threaded.
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(_job, k, a, args.bundled, args.threads) for k, a in jobs]
        for fut in futures:
            kind, arg, out = fut.result()
            if kind == "generate":
                grid = out.pop("grid")
                if args.grid:
                    save_grid(grid, Path(args.grid))
                res["generate"] = out
            else:
                res.setdefault(kind, {})[str(arg)] = out
    res["seconds"] = round(time.time() - t0, 1)
    res["workers"], res["threads"] = args.workers, args.threads
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(markdown(res))
    out_path.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    print(out_path.read_text())


if __name__ == "__main__":
    main()
