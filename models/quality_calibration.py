"""Calibrate the quality gate: every metric on good and on broken outputs, and its cost.

    python -m augflow.models.quality_calibration --out docs/quality-calibration.json > table.md

Good: the bundled models, run through ``AugmentModel`` as ``augflow run`` runs them, on the
held-out evaluation crops (``training.data.held_out_crops``: photos of sources no bundled model
was trained on), plus classical baselines. Broken:
what the gate must refuse — a denoiser that returns its input, blurs to mush or casts a colour;
an upscaler that only enlarges (bicubic) or blurs; img2img variants that copy their source or
belong to another one; an inpainter that changes nothing or everything; a generator that repeats
one image or copies its training faces. The broken outputs are made with plain image operations
here (tests/broken_models.py builds the same failures as loadable models and checks the gate
catches them). Deterministic: fixed crops, seeded noise and diffusion noise.

Prints Markdown tables (min–max over the images of each case) and writes every number as JSON.
Timing: the per-row cost of each operation's effect metrics at 256×256 as CPU time of this
process (``time.process_time``; one thread, so it is the compute cost even on a busy machine),
interleaved repeats, median and min–max; excludes PNG decoding (the actor has the arrays).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi

from augflow.models import effects as E
from augflow.models import setmetrics as S
from augflow.models.evaluate import BUNDLED, ProductModel, add_noise, nlm, wavelet
from augflow.models.feature_stats import FeatureStats
from augflow.models.features import load_feature_extractor
from augflow.models.training.data import faces_32, held_out_crops, load_photo

CROP = 256
SIGMAS = (15, 25, 50)
#: Photos the bundled feature network never saw (its training photos are FEATURE_TRAIN in
#: models/training/features.py); the KID numbers are measured on tiles of these.
FEATURE_UNSEEN = ("astronaut", "coffee", "camera", "china", "flower", "aero")


def crops() -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v) for k, v in held_out_crops(CROP).items()}


def to_rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img, 3, axis=2) if img.ndim == 3 and img.shape[2] == 1 else img


def gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    out = ndi.gaussian_filter(img.astype(np.float64), (sigma, sigma, 0))
    return out.round().clip(0, 255).astype(np.uint8)


def mush(img: np.ndarray, k: int = 8) -> np.ndarray:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((w // k, h // k), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))


def cast(img: np.ndarray, shift: tuple[int, int, int] = (32, 0, -32)) -> np.ndarray:
    return np.clip(img.astype(np.int32) + np.array(shift), 0, 255).astype(np.uint8)


def resize(img: np.ndarray, size: tuple[int, int], method: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size, method))


def summarise(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[float]]:
    out = {}
    for n in names:
        vals = [r[n] for r in rows if r.get(n) is not None]
        if vals:
            out[n] = [round(float(min(vals)), 3), round(float(max(vals)), 3)]
    return out


# --- row-level calibration -----------------------------------------------------------------------


def calibrate_noise_estimator(images: dict[str, np.ndarray]) -> dict[str, Any]:
    """Estimate ÷ true σ of added noise, white and blurred (correlated), per estimator."""
    from skimage.restoration import estimate_sigma

    rng = np.random.default_rng(0)
    res: dict[str, dict[str, list[float]]] = {}
    for blur in (0.0, 0.5, 0.7, 1.0):
        ratios: dict[str, list[float]] = {"scikit-image": [], "finest": [], "two-octave": []}
        for img in images.values():
            grey = img.astype(np.float64).mean(axis=2)
            noise = rng.normal(0.0, 25.0, grey.shape)
            if blur:
                noise = ndi.gaussian_filter(noise, blur)
            plane = np.clip(grey + noise, 0, 255).round()
            true = float(noise.std())
            finest, two = E.noise_sigma_plane(plane.astype(np.uint8))
            ratios["scikit-image"].append(float(estimate_sigma(plane)) / true)
            ratios["finest"].append(finest / true)
            ratios["two-octave"].append(two / true)
        res[f"blur {blur}"] = {k: [round(min(v), 2), round(max(v), 2)] for k, v in ratios.items()}
    clean = {
        k: [_round(E.white_noise_sigma(v), 2), _round(E.noise_sigma(v), 2)]
        for k, v in images.items()
    }
    return {"estimate_over_true": res, "clean_crops_read": clean}


def calibrate_denoise(images: dict[str, np.ndarray]) -> dict[str, Any]:
    names = (
        "noise_in",
        "noise_removed",
        "noise_out",
        "denoise_detail",
        "lowpass_psnr",
        "color_shift",
    )
    out: dict[str, Any] = {}
    for sigma in SIGMAS:
        noisy = [
            add_noise(img, sigma, seed=1000 * sigma + i) for i, img in enumerate(images.values())
        ]
        given = ProductModel(
            BUNDLED / "sr3-denoise", {"kind": "denoise", "noise_level": float(sigma)}
        )
        estimated = ProductModel(BUNDLED / "sr3-denoise", {"kind": "denoise"})
        runs = {"bundled SR3, σ given": given(noisy), "bundled SR3, σ estimated": estimated(noisy)}
        cases: dict[str, list[dict]] = {}
        for i, n in enumerate(noisy):
            sr3 = runs["bundled SR3, σ given"][i]
            outputs = {
                "bundled SR3, σ given": sr3,
                "bundled SR3, σ estimated": runs["bundled SR3, σ estimated"][i],
                "NL-means": nlm(n),
                "wavelet BayesShrink": wavelet(n),
                "Gaussian σ 0.7 (weak)": gaussian(n, 0.7),
                "Gaussian σ 1.5": gaussian(n, 1.5),
                "broken: no-op": n,
                "broken: Gaussian σ 3": gaussian(n, 3.0),
                "broken: mush (8× down/up)": mush(n),
                "broken: SR3 + cast (+32, 0, −32)": cast(sr3),
            }
            for k, o in outputs.items():
                cases.setdefault(k, []).append(E.effect_metrics("denoise", o, n))
        out[str(sigma)] = {k: summarise(v, names) for k, v in cases.items()}
        out[str(sigma)]["_failing"] = {
            k: failing("denoise", v, noise_level=None if "estimated" in k else sigma)
            for k, v in cases.items()
        }
    return out


def calibrate_upscale(images: dict[str, np.ndarray]) -> dict[str, Any]:
    names = ("consistency_psnr", "upscale_detail", "color_shift")
    out: dict[str, Any] = {}
    for factor in (2, 4):
        lows = [
            resize(hr, (CROP // factor,) * 2, Image.Resampling.BICUBIC) for hr in images.values()
        ]
        ours = ProductModel(BUNDLED / "sr3-upscale", {"kind": "upscale", "factor": factor})(lows)
        cases: dict[str, list[dict]] = {}
        for lr, sr3 in zip(lows, ours, strict=True):
            big = resize(lr, (CROP, CROP), Image.Resampling.BICUBIC)
            outputs = {
                "bundled SR3": sr3,
                "Lanczos": resize(lr, (CROP, CROP), Image.Resampling.LANCZOS),
                "broken: bicubic only": big,
                "broken: bilinear": resize(lr, (CROP, CROP), Image.Resampling.BILINEAR),
                "broken: bicubic + blur σ 1": gaussian(big, 1.0),
                "broken: SR3 + cast (+32, 0, −32)": cast(sr3),
            }
            for k, o in outputs.items():
                cases.setdefault(k, []).append(E.effect_metrics("upscale", o, lr))
        out[str(factor)] = {k: summarise(v, names) for k, v in cases.items()}
        out[str(factor)]["_failing"] = {k: failing("upscale", v) for k, v in cases.items()}
    return out


def _img2img_sources() -> list[np.ndarray]:
    """Six 96² photo crops (held-out photos, where the subject is) and eight LFW faces."""
    srcs = [v[80:176, 80:176] for v in held_out_crops(CROP).values()][:6]
    srcs += [np.repeat(f[:, :, None], 3, axis=2) for f in faces_32()[::12][:8]]
    return srcs


def calibrate_img2img(steps: int = 50) -> dict[str, Any]:
    from augflow.models.runner import AugmentModel
    from augflow.schemas import ShardSpec, SourceItem, iter_work_items, parse_request

    sources = [Image.fromarray(s) for s in _img2img_sources()]
    fitted = [np.asarray(s.resize((32, 32), Image.Resampling.BICUBIC)) for s in sources]
    names = ("source_psnr", "source_ssim", "color_shift")
    out: dict[str, Any] = {}
    for strength in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        request = parse_request(
            {
                "dataset": "calibration",
                "operation": {"kind": "img2img", "variants": 4, "strength": strength},
                "inputs": "/tmp/none",
                "model": {"id": str(BUNDLED / "ddim-faces32")},
                "steps": steps,
                "image_size": 32,
            }
        )
        srcs = tuple(SourceItem(source_id=str(i), uri=f"mem://{i}") for i in range(len(sources)))
        items = list(iter_work_items(request, ShardSpec(shard_id="s", index=0, sources=srcs)))
        results = AugmentModel(request, "cpu")(items, [sources[int(it.source_id)] for it in items])
        rows, unrelated = [], []
        variants: dict[int, list[np.ndarray]] = {}
        for it, res in zip(items, results, strict=True):
            img = np.asarray(Image.open(io.BytesIO(res.png or b"")).convert("RGB"))
            k = int(it.source_id)
            rows.append(E.effect_metrics("img2img", img, fitted[k]))
            unrelated.append(E.effect_metrics("img2img", img, fitted[(k + 1) % len(fitted)]))
            variants.setdefault(k, []).append(img)
        spread = S.VariantSpread()
        for k, imgs in variants.items():
            spread.update(imgs, [str(k)] * len(imgs), [f"{k}-{v}" for v in range(len(imgs))])
        copies = [E.effect_metrics("img2img", f, f) for f in fitted]
        out[str(strength)] = {
            "bundled ddim-faces32": summarise(rows, names),
            "broken: paired with another source": summarise(unrelated, names),
            "broken: copy of the source": summarise(copies, names),
            "variants: highest PSNR between two variants of a source": round(
                spread.compute().max_pair_psnr, 2
            ),
            "_failing": {
                "bundled ddim-faces32": failing("img2img", rows, strength=strength),
                "broken: paired with another source": failing(
                    "img2img", unrelated, strength=strength
                ),
                "broken: copy of the source": failing("img2img", copies, strength=strength),
            },
        }
    return out


def calibrate_inpaint(images: dict[str, np.ndarray]) -> dict[str, Any]:
    from skimage.restoration import inpaint_biharmonic

    names = ("unmasked_psnr", "masked_psnr", "color_shift")
    rng = np.random.default_rng(0)
    cases: dict[str, list[dict]] = {}
    for img in images.values():
        mask = np.zeros(img.shape[:2], dtype=bool)
        mask[64:160, 80:176] = True
        m8 = mask.astype(np.uint8) * 255
        filled = inpaint_biharmonic(img / 255.0, mask, channel_axis=-1)
        good = (filled * 255).round().clip(0, 255).astype(np.uint8)
        # what a latent inpainter's VAE round trip does to the kept region: small, broadband
        vae_like = np.clip(good + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        outputs = {
            "biharmonic fill": good,
            "biharmonic fill + noise σ 6 everywhere (VAE-like)": vae_like,
            "broken: unchanged": img,
            "broken: noise σ 40 everywhere": np.clip(
                img + rng.normal(0, 40, img.shape), 0, 255
            ).astype(np.uint8),
            "broken: fill + cast (+32, 0, −32)": cast(good),
        }
        for k, o in outputs.items():
            cases.setdefault(k, []).append(E.effect_metrics("inpaint", o, img, mask=m8))
    out: dict[str, Any] = {k: summarise(v, names) for k, v in cases.items()}
    out["_failing"] = {k: failing("inpaint", v) for k, v in cases.items()}
    return out


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def failing(operation: E.EffectOperation, rows: list[dict], **params: Any) -> list[str]:
    columns = {n: [r[n] for r in rows] for n in E.EFFECT_NAMES}
    return sorted(
        f"{c.name} ({int((~c.passed).sum())}/{len(rows)})"
        for c in E.effect_checks(operation, columns, **params)
        if not c.passed.all()
    )


# --- set-level calibration -----------------------------------------------------------------------


def photo_tiles(size: int = 64) -> list[np.ndarray]:
    """Non-overlapping tiles of the photos the feature network never saw."""
    tiles = []
    for name in FEATURE_UNSEEN:
        img = load_photo(name)
        for y in range(0, img.shape[0] - size + 1, size):
            for x in range(0, img.shape[1] - size + 1, size):
                tiles.append(np.ascontiguousarray(img[y : y + size, x : x + size]))
    return tiles


def generated_faces(n: int, steps: int) -> list[np.ndarray]:
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline.from_pretrained(BUNDLED / "ddim-faces32", use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    with torch.inference_mode():
        imgs = pipe(batch_size=n, generator=gens, num_inference_steps=steps, output_type="np")
    return [to_rgb(x) for x in (imgs.images * 255).round().astype(np.uint8)]


def calibrate_sets(n_generated: int, steps: int) -> dict[str, Any]:
    faces = [np.repeat(f[:, :, None], 3, axis=2) for f in faces_32()]
    tiles = photo_tiles()
    gen = generated_faces(n_generated, steps)
    out: dict[str, Any] = {}

    def nn_distance(images: list[np.ndarray]) -> list[int]:
        h = S.phashes(images)
        d = S.hamming(h[:, None], h[None, :])
        np.fill_diagonal(d, 64)
        m = d.min(axis=1)
        return [int(m.min()), int(np.percentile(m, 5)), int(np.median(m))]

    ref = S.phashes(faces)
    g = S.phashes(gen)
    out["phash_nearest_neighbour_min_p5_median"] = {
        "LFW faces (distinct people)": nn_distance(faces),
        "photo tiles (64², non-overlapping)": nn_distance(tiles),
        "bundled generator samples": nn_distance(gen),
        "generator sample → nearest LFW face": [
            int(S.hamming(g[:, None], ref[None, :]).min()),
            int(np.percentile(S.hamming(g[:, None], ref[None, :]).min(axis=1), 5)),
            int(np.median(S.hamming(g[:, None], ref[None, :]).min(axis=1))),
        ],
    }
    ext = load_feature_extractor()
    order = np.random.default_rng(0).permutation(len(tiles))
    half = len(tiles) // 2
    a = [tiles[k] for k in order[:half]]
    b = [tiles[k] for k in order[half : 2 * half]]

    def kid(real: list, fake: list) -> dict[str, Any]:
        st = FeatureStats(ext)
        st.update(real, real=True)
        st.update(fake, real=False)
        r = st.compute()
        return {
            "kid": _round(r.kid, 5),
            "kid_std": _round(r.kid_std, 5),
            "diversity_ratio": _round(r.diversity_ratio, 3),
            "n": [r.reference, r.outputs],
        }

    rng = np.random.default_rng(1)
    out["kid_bundled_features"] = {
        "photo tiles: half A vs half B": kid(a, b),
        "photo tiles: A vs B blurred σ 1.5": kid(a, [gaussian(t, 1.5) for t in b]),
        "photo tiles: A vs B blurred σ 0.7": kid(a, [gaussian(t, 0.7) for t in b]),
        "photo tiles: A vs B + noise σ 10": kid(
            a, [np.clip(t + rng.normal(0, 10, t.shape), 0, 255).astype(np.uint8) for t in b]
        ),
        "photo tiles: A vs B cast (+16, 0, −16)": kid(a, [cast(t, (16, 0, -16)) for t in b]),
        "LFW faces: first 50 vs last 50": kid(faces[:50], faces[50:]),
        "LFW faces vs bundled generator": kid(faces, gen),
        "LFW faces vs generator, colour removed (grey)": kid(
            faces, [np.repeat(x.mean(axis=2, keepdims=True).astype(np.uint8), 3, 2) for x in gen]
        ),
        "LFW faces vs one face repeated": kid(faces, [faces[7]] * len(gen)),
    }
    out["extractor"] = {"name": ext.name, "digest": ext.digest}
    return out


# --- timing --------------------------------------------------------------------------------------


def time_metrics(repeats: int = 30) -> dict[str, Any]:
    torch.set_num_threads(1)
    img = crops()["china"]
    noisy = add_noise(img, 25, seed=1)
    low = resize(img, (128, 128), Image.Resampling.BICUBIC)
    mask = np.zeros((CROP, CROP), np.uint8)
    mask[64:192, 64:192] = 255
    calls: dict[str, Callable[[], Any]] = {
        "denoise": lambda: E.effect_metrics("denoise", img, noisy),
        "upscale (×2, output 256²)": lambda: E.effect_metrics("upscale", img, low),
        "img2img": lambda: E.effect_metrics("img2img", img, noisy),
        "inpaint": lambda: E.effect_metrics("inpaint", img, noisy, mask=mask),
        "phash64 (set level, per image)": lambda: S.phash64(img),
    }
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for f in calls.values():
        f()  # warm-up
    for _ in range(repeats):  # interleaved, so load changes hit every case alike
        for k, f in calls.items():
            t = time.process_time()
            f()
            samples[k].append((time.process_time() - t) * 1000)
    ext = load_feature_extractor()
    from augflow.models.features import prepare_images

    batch = prepare_images([img] * 64, ext.input_size)
    ext(batch)
    feat = []
    for _ in range(5):
        t = time.process_time()
        ext(batch)
        feat.append((time.process_time() - t) * 1000 / 64)
    samples["bundled features (set level, per image, batch 64)"] = feat
    model, step = (
        ProductModel(BUNDLED / "sr3-denoise", {"kind": "denoise", "noise_level": 25.0}),
        [],
    )
    for _ in range(3):
        t = time.process_time()
        model([noisy])
        step.append((time.process_time() - t) * 1000)
    samples["for scale: the bundled SR3 denoiser on the same image (its default 1 step)"] = step
    return {
        k: {
            "median_ms": round(float(np.median(v)), 2),
            "min_ms": round(float(np.min(v)), 2),
            "max_ms": round(float(np.max(v)), 2),
        }
        for k, v in samples.items()
    }


# --- output --------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    lines: list[str] = []

    def table(title: str, block: dict[str, Any], names: tuple[str, ...]) -> None:
        lines.extend(
            [f"#### {title}", "", "| output | " + " | ".join(names) + " | failing checks |"]
        )
        lines.append("|---|" + "---|" * (len(names) + 1))
        fails = block.get("_failing", {})
        for case, vals in block.items():
            if case.startswith("_") or not isinstance(vals, dict):
                continue
            cells = [f"{vals[n][0]:g} – {vals[n][1]:g}" if n in vals else "" for n in names]
            lines.append(
                f"| {case} | " + " | ".join(cells) + f" | {', '.join(fails.get(case, [])) or '—'} |"
            )
        lines.append("")

    if "noise" in res:
        lines += [
            "#### Noise estimators (estimate ÷ true σ of added noise; min – max over 5 crops)",
            "",
        ]
        lines += [
            "| added noise | scikit-image | finest octave | two-octave |",
            "|---|---|---|---|",
        ]
        for k, v in res["noise"]["estimate_over_true"].items():
            cells = [f"{v[n][0]} – {v[n][1]}" for n in ("scikit-image", "finest", "two-octave")]
            lines.append(f"| white, {k} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Clean crops read (finest / two-octave): {res['noise']['clean_crops_read']}",
            "",
        ]
    for sigma, block in res.get("denoise", {}).items():
        table(
            f"Denoise, σ {sigma}",
            block,
            ("noise_in", "noise_out", "denoise_detail", "lowpass_psnr", "color_shift"),
        )
    for factor, block in res.get("upscale", {}).items():
        table(f"Upscale ×{factor}", block, ("consistency_psnr", "upscale_detail", "color_shift"))
    for strength, block in res.get("img2img", {}).items():
        table(f"img2img, strength {strength}", block, ("source_psnr", "source_ssim", "color_shift"))
        lines += [
            f"Variants: highest PSNR between two variants of a source: {block['variants: highest PSNR between two variants of a source']} dB",
            "",
        ]
    if "inpaint" in res:
        table(
            "Inpaint (mask 96×96 in a 256² crop)",
            res["inpaint"],
            ("unmasked_psnr", "masked_psnr", "color_shift"),
        )
    if "sets" in res:
        lines += [
            "#### Perceptual hash (64 bit): nearest-neighbour Hamming distance (min / 5th pct / median)",
            "",
        ]
        for k, v in res["sets"]["phash_nearest_neighbour_min_p5_median"].items():
            lines.append(f"- {k}: {v[0]} / {v[1]} / {v[2]}")
        lines += [
            "",
            f"#### KID ({res['sets']['extractor']['name']}, {res['sets']['extractor']['digest']})",
            "",
        ]
        lines += [
            "| sets | KID | KID std (subsets) | diversity ratio | n (ref, out) |",
            "|---|---|---|---|---|",
        ]
        for k, v in res["sets"]["kid_bundled_features"].items():
            lines.append(
                f"| {k} | {v['kid']} | {v['kid_std']} | {v['diversity_ratio']} | {v['n']} |"
            )
        lines.append("")
    if "timing" in res:
        lines += ["#### Cost per row at 256×256 (ms; median, min – max of interleaved repeats)", ""]
        for k, v in res["timing"].items():
            lines.append(f"- {k}: {v['median_ms']} ({v['min_ms']} – {v['max_ms']})")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="docs/quality-calibration.json")
    p.add_argument(
        "--only",
        nargs="*",
        default=["noise", "denoise", "upscale", "img2img", "inpaint", "sets", "timing"],
    )
    p.add_argument(
        "--generated", type=int, default=100, help="generator samples for the set metrics"
    )
    p.add_argument("--generator-steps", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    images = crops()
    res: dict[str, Any] = {}
    steps = {
        "noise": lambda: calibrate_noise_estimator(images),
        "denoise": lambda: calibrate_denoise(images),
        "upscale": lambda: calibrate_upscale(images),
        "img2img": calibrate_img2img,
        "inpaint": lambda: calibrate_inpaint(images),
        "sets": lambda: calibrate_sets(args.generated, args.generator_steps),
        "timing": time_metrics,
    }
    for name in args.only:
        t = time.time()
        res[name] = steps[name]()
        print(f"<!-- {name}: {time.time() - t:.0f} s -->", flush=True)
    res["thresholds"] = E.EffectThresholds().__dict__
    Path(args.out).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
