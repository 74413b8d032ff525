"""The benchmark's classifier jobs. The classifier itself (tiny CNN, trainer, classical
augmentation) is the product's :mod:`augflow.models.proxy`, so the benchmark measures exactly what
the quality gate's proxy check and ``augflow evaluate --proxy`` run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from augflow.models.proxy import Classical, TrainConfig, accuracy, train_classifier

__all__ = [
    "Classical",
    "Job",
    "TrainConfig",
    "accuracy",
    "fit_and_score",
    "init_worker",
    "train_classifier",
]


@dataclass(frozen=True)
class Job:
    """One training run of the classifier and the set it is scored on (picklable for a pool)."""

    key: tuple
    seed: int
    real_x: np.ndarray
    real_y: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    synth_x: np.ndarray | None = None
    synth_y: np.ndarray | None = None
    share: float = 0.0
    classical: Classical | None = None
    cfg: TrainConfig = field(default_factory=TrainConfig)


def fit_and_score(job: Job) -> tuple[tuple, float]:
    model = train_classifier(
        job.real_x,
        job.real_y,
        job.seed,
        synth_x=job.synth_x,
        synth_y=job.synth_y,
        share=job.share,
        classical=job.classical,
        cfg=job.cfg,
    )
    return job.key, accuracy(model, job.eval_x, job.eval_y)


def init_worker() -> None:
    # one thread per process: the pool itself is the parallelism, and the box is shared
    torch.set_num_threads(1)
