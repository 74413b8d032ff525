"""Does augflow's output help a training job? The usefulness benchmark (issue 13).

    make usefulness                                    # the numbers (37 min on 2 shared, loaded cores)
    .venv/bin/python -m bench.usefulness --out bench/results
    .venv/bin/python -m bench.usefulness --smoke --out /tmp/u     # plumbing check, seconds
    .venv/bin/python -m bench.usefulness --via cli ...            # every augflow run via the CLI

The proxy task is scikit-learn's digits at 16×16 with the fixed split of
:mod:`augflow.models.training.digits` (few-shot labelled sets of 5 and 10 per class, a val set for
the sweep, a test set used only for the final scores). For each seed the same tiny CNN
(:mod:`bench.usefulness_classifier`) trains on these arms:

- ``real``: the few-shot images only;
- ``classical``: the same with random rotations, shifts, scale and pixel noise;
- ``img2img``: real + augflow img2img variants of the few-shot images (bundled ``ddim-digits16``,
  conditioned on each source's label), read back from the registered version;
- ``generate``: real + augflow class-conditional samples of the same generator;
- ``classical+img2img``: real + img2img variants, all classically augmented.

Every augflow arm goes through a real ``augflow run`` (Prefect flow, Ray actors, quality gate,
registry) and is read back from the registered version by its file URIs, with its labels from the
rows' ``class_label``. One request per setting serves all seeds: seed k trains on its own slice of
variants (img2img) or samples (generate), so every seed sees an independent draw of synthetic data.

The sweep (img2img strength × variants per image, share of synthetic data in each batch; for
generate, samples per class × share) is scored on ``val``; the best setting of each augflow arm
is then scored once on ``test``. Results: ``usefulness.json`` (the headline, 5-shot),
``usefulness-details.json`` (per-seed numbers, the sweep, the 10-shot table, timings) and
``usefulness.md`` (tables) in ``--out``. A missing augflow capability fails its arm with augflow's
own message, and the exit code is 1; nothing is faked.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import quiet_env
from bench.usefulness_augflow import Augflow, AugflowRunFailed
from bench.usefulness_classifier import (
    Classical,
    Job,
    TrainConfig,
    fit_and_score,
    init_worker,
)
from bench.usefulness_data import (
    ContractMissing,
    Digits,
    VersionRows,
    index_of,
    load,
    read_version,
    write_inputs,
)
from bench.usefulness_stats import excludes_zero, mean_ci, paired_lift

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "bundled" / "ddim-digits16"
ARMS = ("real", "classical", "img2img", "generate", "classical+img2img")
CLASSES = 10
#: What the img2img arms need from augflow, said whenever they cannot run.
IMG2IMG_NEEDS = (
    "the img2img arms need augflow to (a) copy a Parquet input's `label` column into each output "
    "row's class_label and (b) run img2img with class-conditional models, conditioned on that "
    "label"
)


@dataclass(frozen=True)
class Config:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    #: the first is the headline (usefulness.json); the others go to the details
    shots: tuple[int, ...] = (5, 10)
    strengths: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    variants: tuple[int, ...] = (1, 2, 4)
    shares: tuple[float, ...] = (0.25, 0.5, 0.75)
    #: the share the strength × variants (and samples per class) grid is run at
    base_share: float = 0.5
    gen_per_class: tuple[int, ...] = (10, 20)
    steps: int = 10  # DDIM steps of a full generation; img2img runs round(steps × strength)
    shard_size: int = 100  # output rows per shard
    workers: int = 2  # Ray actors
    jobs: int = 2  # classifier trainings in parallel
    train: TrainConfig = field(default_factory=TrainConfig)


FULL = Config()
SMOKE = Config(
    seeds=(0, 1),
    shots=(5,),
    strengths=(0.5,),
    variants=(1,),
    shares=(0.5,),
    gen_per_class=(1,),
    steps=2,
    shard_size=50,
    workers=1,
    jobs=1,
    train=TrainConfig(steps=20, batch=16),
)


# --- the synthetic data each seed trains on ---------------------------------------------------


@dataclass
class Synthetic:
    """What augflow made, read back from registered versions, and why an arm could not run."""

    generate: VersionRows | None = None
    img2img: dict[float, VersionRows] = field(default_factory=dict)  # strength → rows (inputs A)
    img2img_extra: dict[float, VersionRows] = field(default_factory=dict)  # inputs B (10-shot)
    errors: dict[str, str] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)


def seed_variants(rows: VersionRows, k: int, per_seed: int, v: int) -> tuple[np.ndarray, ...]:
    """Seed position ``k``'s first ``v`` variants of every source (its own slice of variants)."""
    lo = k * per_seed
    keep = (rows.variants >= lo) & (rows.variants < lo + v)
    return rows.images[keep], rows.labels[keep]


def seed_samples(
    rows: VersionRows, k: int, per_seed: int, per_class: int
) -> tuple[np.ndarray, ...]:
    """Seed position ``k``'s block of generated images, the first ``per_class`` of each class."""
    pos = np.array([int(s.rsplit("/", 1)[1]) for s in rows.source_ids])
    block = np.flatnonzero((pos >= k * per_seed) & (pos < (k + 1) * per_seed))
    block = block[np.argsort(pos[block])]
    keep = np.concatenate([block[rows.labels[block] == c][:per_class] for c in range(CLASSES)])
    return rows.images[keep], rows.labels[keep]


def check_labels(rows: VersionRows, digits: Digits, ref: str) -> None:
    """Each variant's class_label must be its source's label (what a training job relies on)."""
    want = digits.labels[[index_of(s) for s in rows.source_ids]]
    wrong = int((want != rows.labels).sum())
    if wrong:
        raise ContractMissing(
            f"{wrong} of {len(want)} rows of {ref} carry a class_label that is not their source "
            "row's `label`; augflow must copy the input's label into each output row"
        )


def timed_runner(aug: Augflow, syn: Synthetic, log) -> Callable[[dict[str, Any]], str]:
    """``aug.run`` that records each run's wall time (Ray actor start and model load included)."""

    def timed(body: dict[str, Any]) -> str:
        t0 = time.time()
        ref = aug.run(body)
        syn.runs.append({"ref": ref, "seconds": round(time.time() - t0, 1)})
        log(f"  {ref}: {syn.runs[-1]['seconds']} s")
        return ref

    return timed


def make_synthetic(
    cfg: Config, digits: Digits, aug: Augflow, inputs: dict[str, Path], log
) -> Synthetic:
    syn = Synthetic()
    timed = timed_runner(aug, syn, log)
    per_seed = CLASSES * max(cfg.gen_per_class)
    body = aug.request(
        "usefulness-generate",
        {
            "kind": "generate",
            "num_images": per_seed * len(cfg.seeds),
            "class_labels": list(range(CLASSES)),
        },
        steps=cfg.steps,
        shard_size=cfg.shard_size,
    )
    syn.generate = read_version(aug.output, timed(body))
    for strength in cfg.strengths:
        try:
            syn.img2img[strength] = img2img_run(cfg, digits, aug, inputs["a"], strength, timed)
        except (AugflowRunFailed, ContractMissing) as exc:
            syn.errors["img2img"] = f"{exc} [{IMG2IMG_NEEDS}]"
            log(f"  img2img unavailable: {exc}")
            break  # the same request with another strength fails the same way
    return syn


def img2img_run(
    cfg: Config,
    digits: Digits,
    aug: Augflow,
    inputs: Path,
    strength: float,
    timed: Callable[[dict[str, Any]], str],
) -> VersionRows:
    name = f"usefulness-img2img-{inputs.stem}-s{round(strength * 100):02d}"
    body = aug.request(
        name,
        {"kind": "img2img", "variants": max(cfg.variants) * len(cfg.seeds), "strength": strength},
        steps=cfg.steps,
        shard_size=cfg.shard_size,
        inputs=inputs,
    )
    ref = timed(body)
    rows = read_version(aug.output, ref)
    check_labels(rows, digits, ref)
    return rows


# --- classifier jobs ----------------------------------------------------------------------------


class Pool:
    def __init__(self, jobs: int) -> None:
        self.executor = (
            ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=init_worker)
            if jobs > 1
            else None
        )

    def map(self, jobs: Iterable[Job]) -> dict[tuple, float]:
        jobs = list(jobs)
        if self.executor is None:
            init_worker()
            return dict(fit_and_score(j) for j in jobs)
        return dict(self.executor.map(fit_and_score, jobs, chunksize=2))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()


def per_seed(scores: dict[tuple, float], key: tuple, seeds: tuple[int, ...]) -> list[float]:
    return [scores[(*key, s)] for s in seeds]


@dataclass(frozen=True)
class Img2imgSetting:
    strength: float
    variants: int
    share: float


@dataclass(frozen=True)
class GenerateSetting:
    per_class: int
    share: float


def _synth_img2img(syn: Synthetic, cfg: Config, st: Img2imgSetting, k: int, extra: bool):
    per = max(cfg.variants)
    x, y = seed_variants(syn.img2img[st.strength], k, per, st.variants)
    if extra:
        bx, by = seed_variants(syn.img2img_extra[st.strength], k, per, st.variants)
        x, y = np.concatenate([x, bx]), np.concatenate([y, by])
    return x, y


def arm_jobs(
    arm: str,
    key: tuple,
    cfg: Config,
    syn: Synthetic,
    real: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
    setting: Img2imgSetting | GenerateSetting | None = None,
    extra: bool = False,
) -> list[Job]:
    out = []
    for k, seed in enumerate(cfg.seeds):
        sx = sy = None
        share = 0.0
        if isinstance(setting, Img2imgSetting):
            sx, sy = _synth_img2img(syn, cfg, setting, k, extra)
            share = setting.share
        elif isinstance(setting, GenerateSetting):
            if syn.generate is None:
                raise RuntimeError("generate arm scheduled before augflow's generate run")
            per = CLASSES * max(cfg.gen_per_class)
            sx, sy = seed_samples(syn.generate, k, per, setting.per_class)
            share = setting.share
        classical = Classical() if arm.startswith("classical") else None
        out.append(
            Job(
                (*key, seed),
                seed,
                *real,
                *evaluation,
                synth_x=sx,
                synth_y=sy,
                share=share,
                classical=classical,
                cfg=cfg.train,
            )
        )
    return out


def nearest_neighbours(syn_images: np.ndarray, digits: Digits) -> dict[str, Any]:
    """How close synthetic images are to the 5-shot images the generator saw labelled.

    RMS distance (0–255) of each image to its nearest 5-shot image and to its nearest pool image
    (also generator training data, unlabelled); ``share_nearest_is_5shot`` is how often the nearest
    of both is a 5-shot image: 50 of 947 candidates, so ~5% for a generator that does not copy them.
    """
    s = digits.split
    flat = syn_images.reshape(len(syn_images), -1).astype(np.float32)

    def nearest(idx: np.ndarray) -> np.ndarray:
        ref = digits.images[idx].reshape(len(idx), -1).astype(np.float32)
        d2 = (flat**2).sum(1)[:, None] - 2 * flat @ ref.T + (ref**2).sum(1)[None]
        return np.sqrt(np.maximum(d2, 0).min(axis=1) / flat.shape[1])

    to_shots, to_pool = nearest(s.labelled[5]), nearest(s.pool)
    return {
        "images": len(flat),
        "rms_to_nearest_5shot": float(np.mean(to_shots)),
        "rms_to_nearest_pool": float(np.mean(to_pool)),
        "share_nearest_is_5shot": float(np.mean(to_shots < to_pool)),
    }


def summary(values: list[float], real: list[float], classical: list[float]) -> dict[str, Any]:
    return {
        **mean_ci(values),
        "lift_over_real": paired_lift(values, real),
        "lift_over_classical": paired_lift(values, classical),
    }


# --- the benchmark --------------------------------------------------------------------------------


def sweep(
    cfg: Config, digits: Digits, syn: Synthetic, pool: Pool, log
) -> tuple[dict[str, Any], Img2imgSetting | None, GenerateSetting]:
    """Score every setting on val; returns the sweep and the best setting of each augflow arm."""
    split = digits.split
    real = digits.subset(split.labelled[cfg.shots[0]])
    val = digits.subset(split.val)
    jobs = arm_jobs("real", ("real",), cfg, syn, real, val)
    jobs += arm_jobs("classical", ("classical",), cfg, syn, real, val)
    gen_grid = [GenerateSetting(n, cfg.base_share) for n in cfg.gen_per_class]
    img_grid = [
        Img2imgSetting(s, v, cfg.base_share)
        for s in cfg.strengths
        if s in syn.img2img
        for v in cfg.variants
    ]
    for st in gen_grid:
        jobs += arm_jobs("generate", ("generate", st), cfg, syn, real, val, st)
    for st in img_grid:
        jobs += arm_jobs("img2img", ("img2img", st), cfg, syn, real, val, st)
    log(f"sweep: {len(jobs)} classifier trainings on val")
    scores = pool.map(jobs)

    def best(arm: str, grid: list) -> Any:
        # highest mean val accuracy; the first setting wins a tie
        return max(grid, key=lambda st: np.mean(per_seed(scores, (arm, st), cfg.seeds)))

    best_gen = best("generate", gen_grid)
    more = [GenerateSetting(best_gen.per_class, s) for s in cfg.shares if s != cfg.base_share]
    jobs = [
        j for st in more for j in arm_jobs("generate", ("generate", st), cfg, syn, real, val, st)
    ]
    best_img = best("img2img", img_grid) if img_grid else None
    more_img: list[Img2imgSetting] = []
    if best_img is not None:
        more_img = [
            Img2imgSetting(best_img.strength, best_img.variants, s)
            for s in cfg.shares
            if s != cfg.base_share
        ]
        for st in more_img:
            jobs += arm_jobs("img2img", ("img2img", st), cfg, syn, real, val, st)
    if jobs:
        log(f"sweep: {len(jobs)} more trainings (share of synthetic data)")
        scores.update(pool.map(jobs))
    gen_grid += more
    img_grid += more_img
    best_gen = best("generate", gen_grid)
    best_img = best("img2img", img_grid) if img_grid else None

    r = per_seed(scores, ("real",), cfg.seeds)
    c = per_seed(scores, ("classical",), cfg.seeds)
    result = {
        "scored_on": "val",
        "shots_per_class": cfg.shots[0],
        "real": {**mean_ci(r), "per_seed": r},
        "classical": {**mean_ci(c), "per_seed": c},
        "generate": [
            {**asdict(st), **summary(per_seed(scores, ("generate", st), cfg.seeds), r, c)}
            for st in gen_grid
        ],
        "img2img": [
            {**asdict(st), **summary(per_seed(scores, ("img2img", st), cfg.seeds), r, c)}
            for st in img_grid
        ],
        "best": {
            "generate": asdict(best_gen),
            "img2img": asdict(best_img) if best_img is not None else None,
        },
    }
    return result, best_img, best_gen


def final_scores(
    cfg: Config,
    digits: Digits,
    syn: Synthetic,
    pool: Pool,
    shots: int,
    best_img: Img2imgSetting | None,
    best_gen: GenerateSetting,
) -> dict[str, Any]:
    """Every arm at its chosen setting, scored once on test."""
    real = digits.subset(digits.split.labelled[shots])
    test = digits.subset(digits.split.test)
    extra = shots > cfg.shots[0]
    jobs = arm_jobs("real", ("real",), cfg, syn, real, test)
    jobs += arm_jobs("classical", ("classical",), cfg, syn, real, test)
    jobs += arm_jobs("generate", ("generate",), cfg, syn, real, test, best_gen)
    img_ok = best_img is not None and (not extra or best_img.strength in syn.img2img_extra)
    if img_ok:
        jobs += arm_jobs("img2img", ("img2img",), cfg, syn, real, test, best_img, extra)
        jobs += arm_jobs(
            "classical+img2img", ("classical+img2img",), cfg, syn, real, test, best_img, extra
        )
    scores = pool.map(jobs)
    r = per_seed(scores, ("real",), cfg.seeds)
    c = per_seed(scores, ("classical",), cfg.seeds)
    arms: dict[str, Any] = {}
    for arm in ARMS:
        if (arm, cfg.seeds[0]) not in scores:
            why = syn.errors.get("img2img", "img2img did not run")
            arms[arm] = {"mean": None, "ci95": None, "error": why}
            continue
        values = per_seed(scores, (arm,), cfg.seeds)
        arms[arm] = {**summary(values, r, c), "per_seed": values}
    settings = {
        "generate": asdict(best_gen),
        "img2img": asdict(best_img) if best_img is not None else None,
    }
    return {"shots_per_class": shots, "arms": arms, "settings": settings}


def headline(final: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, Any]:
    """usefulness.json: the issue's shape, each arm with its lifts (no per-seed lists)."""
    arms = {
        arm: {k: v for k, v in body.items() if k != "per_seed"}
        for arm, body in final["arms"].items()
    }
    return {"arms": arms, "shots_per_class": final["shots_per_class"], "seeds": list(seeds)}


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run(cfg: Config, out: Path, work: Path, via: str, model: Path = MODEL, log=print) -> dict:
    """The whole benchmark; writes the three result files into ``out`` and returns the details."""
    t_start = time.time()
    digits = load()
    split = digits.split
    inputs = {"a": write_inputs(work / "inputs" / "fewshot5.parquet", digits, split.labelled[5])}
    if len(cfg.shots) > 1:
        extra = np.setdiff1d(split.labelled[max(cfg.shots)], split.labelled[5])
        inputs["b"] = write_inputs(work / "inputs" / "fewshot10-extra.parquet", digits, extra)
    aug = Augflow(work, model, via, cfg.workers)
    log(f"augflow runs ({via}), model {model}")
    syn = make_synthetic(cfg, digits, aug, inputs, log)
    pool = Pool(cfg.jobs)
    try:
        sweep_result, best_img, best_gen = sweep(cfg, digits, syn, pool, log)
        finals = []
        for shots in cfg.shots:
            if shots != cfg.shots[0] and best_img is not None:
                try:
                    syn.img2img_extra[best_img.strength] = img2img_run(
                        cfg,
                        digits,
                        aug,
                        inputs["b"],
                        best_img.strength,
                        timed_runner(aug, syn, log),
                    )
                except (AugflowRunFailed, ContractMissing) as exc:
                    syn.errors["img2img"] = f"{exc} [{IMG2IMG_NEEDS}]"
            log(f"test: {shots}-shot")
            finals.append(final_scores(cfg, digits, syn, pool, shots, best_img, best_gen))
    finally:
        pool.close()
    t_end = time.time()
    details = {
        "config": {**asdict(cfg), "via": via, "model": _shown(model)},
        "split": {
            "test": len(split.test),
            "val": len(split.val),
            "pool": len(split.pool),
            **{f"labelled{k}": len(v) for k, v in split.labelled.items()},
        },
        "augflow": {"runs": syn.runs, "errors": syn.errors},
        "nearest_neighbours": {
            "generate": nearest_neighbours(syn.generate.images, digits),
            **{
                f"img2img@{st}": nearest_neighbours(rows.images, digits)
                for st, rows in syn.img2img.items()
            },
        },
        "sweep": sweep_result,
        "test": finals,
        "seconds": {
            "total": round(t_end - t_start, 1),
            "augflow_runs": round(sum(r["seconds"] for r in syn.runs), 1),
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "usefulness.json").write_text(
        json.dumps(headline(finals[0], cfg.seeds), indent=2) + "\n"
    )
    (out / "usefulness-details.json").write_text(json.dumps(details, indent=2) + "\n")
    from bench.usefulness_report import markdown

    (out / "usefulness.md").write_text(markdown(details))
    return details


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results folder")
    p.add_argument("--smoke", action="store_true", help="tiny configuration: plumbing only")
    p.add_argument("--via", choices=["flow", "cli"], default="flow", help="how augflow is run")
    p.add_argument("--work", default=None, help="augflow output root (default: a temp folder)")
    p.add_argument("--model", default=str(MODEL), help="the class-conditional generator folder")
    args = p.parse_args(argv)
    quiet_env()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # on a loaded machine the ephemeral Prefect server needs more than its default 20 s to start
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    cfg = SMOKE if args.smoke else FULL

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="augflow-usefulness-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        try:
            details = run(cfg, Path(args.out), work, args.via, Path(args.model), log)
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    arms = details["test"][0]["arms"]
    for arm, body in arms.items():
        if body["mean"] is None:
            log(f"{arm}: NOT RUN: {body['error']}")
        else:
            lift = body["lift_over_classical"]
            mark = " (CI excludes 0)" if excludes_zero(lift) else ""
            log(
                f"{arm}: {body['mean']:.4f} [{body['ci95'][0]:.4f}, {body['ci95'][1]:.4f}]; "
                f"over classical {lift['mean']:+.4f}{mark}"
            )
    log(
        f"wrote {args.out}/usefulness.json, usefulness-details.json, usefulness.md "
        f"in {details['seconds']['total']:.0f} s"
    )
    if any(body["mean"] is None for body in arms.values()):
        log("some arms could not run (see above): augflow lacks what they need; exit code 1")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
