"""Diversity and distribution distance of a version against a reference set, streamed.

One feature pass per image (:mod:`augflow.models.features`), then torchmetrics' unbiased KID (on
a fixed-size reservoir of features) and FID (running sums), and the mean pairwise feature
distance of each side (running sums). The result is a
:class:`augflow.models.setmetrics.DistributionReport`, which the set-level checks read.

Apart from :mod:`augflow.models.setmetrics` because this needs torch: the flow's process imports
it (about a second of CPU) only when a run has a reference to compare with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from augflow.models.features import FeatureExtractor, prepare_images
from augflow.models.reservoir import Reservoir
from augflow.models.setmetrics import DistributionReport, ImageLike


class PrecomputedFeatures(nn.Module):
    """The ``feature`` module handed to torchmetrics: the features are computed once per image by
    a :class:`FeatureExtractor` and passed in, so KID, FID and diversity share one forward pass."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class _Moments:
    """Running count, sum and sum of squared norms: the mean pairwise squared distance."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.sq = 0.0

    def add(self, f: np.ndarray) -> None:
        f64 = f.astype(np.float64)
        self.n += len(f64)
        self.total += f64.sum(axis=0)
        self.sq += float((f64 * f64).sum())

    def mean_pairwise_sq_distance(self) -> float | None:
        """Mean of |f_i − f_j|² over pairs i ≠ j = 2n/(n−1) (E|f|² − |E f|²)."""
        if self.n < 2:
            return None
        mean = self.total / self.n
        return max(0.0, 2.0 * self.n / (self.n - 1) * (self.sq / self.n - float(mean @ mean)))


class FeatureStats:
    """Features of the outputs and of a reference set, streamed; KID, FID and diversity at the end.

    ``update(images, real=False)`` for outputs, ``real=True`` for the reference (either order,
    interleaved or not). KID is torchmetrics' unbiased estimator, mean and spread over
    ``kid_subsets`` random subsets (of ``kid_subset_size``, at most half the smaller reservoir)
    of the two reservoirs (deterministic: seeded); FID is torchmetrics' on running
    sums, reported only when both sides have ``fid_min_images`` images (with fewer its bias
    dominates). Diversity is the mean pairwise squared feature distance of each side, exact over
    the whole stream.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        reservoir: int = 5000,
        kid_subsets: int = 50,
        kid_subset_size: int = 1000,
        fid_min_images: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.extractor = extractor
        self.dim = int(extractor.num_features)
        self.kid_subsets = int(kid_subsets)
        self.kid_subset_size = int(kid_subset_size)
        self.fid_min_images = int(fid_min_images)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._fid = FrechetInceptionDistance(
            feature=PrecomputedFeatures(self.dim), reset_real_features=False
        )
        self._fid.set_dtype(torch.float64)
        self._res = {
            True: Reservoir(reservoir, self.dim, seed),
            False: Reservoir(reservoir, self.dim, seed + 1),
        }
        self._mom = {True: _Moments(self.dim), False: _Moments(self.dim)}

    def features(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Features of ``images`` (any sizes), in batches of ``batch_size``."""
        out = []
        for start in range(0, len(images), self.batch_size):
            x = prepare_images(images[start : start + self.batch_size], self.extractor.input_size)
            out.append(self.extractor(x.to(_device_of(self.extractor))).cpu())
        if not out:
            return torch.zeros((0, self.dim))
        return torch.cat(out)

    def update(self, images: Sequence[ImageLike], real: bool = False) -> None:
        self.update_features(self.features(images), real)

    def update_features(self, features: torch.Tensor, real: bool = False) -> None:
        f = features.detach().to(torch.float64).cpu()
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {tuple(f.shape)}")
        if len(f) == 0:
            return
        self._fid.update(f, real=real)
        arr = f.numpy().astype(np.float32)
        self._res[real].add(arr)
        self._mom[real].add(arr)

    def compute(self) -> DistributionReport:
        from torchmetrics.image.kid import KernelInceptionDistance

        n_real, n_fake = self._mom[True].n, self._mom[False].n
        kid = kid_std = None
        # Subsets of at most half the smaller side: subsets as large as a side would all be that
        # whole side, and their spread (kid_std) would say nothing.
        smaller = min(len(self._res[True].data), len(self._res[False].data))
        subset = min(self.kid_subset_size, smaller // 2)
        notes = []
        if subset >= 2:
            metric = KernelInceptionDistance(
                feature=PrecomputedFeatures(self.dim),
                subsets=self.kid_subsets,
                subset_size=subset,
            )
            metric.update(torch.from_numpy(self._res[True].data).double(), real=True)
            metric.update(torch.from_numpy(self._res[False].data).double(), real=False)
            # torchmetrics draws its subsets with torch's global generator: fork it and seed.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                mean, std = metric.compute()
            kid, kid_std = float(mean), float(std)
        else:
            notes.append("KID needs at least 4 images on each side")
        fid = None
        if min(n_real, n_fake) >= self.fid_min_images:
            fid = float(self._fid.compute())
        else:
            notes.append(f"FID needs {self.fid_min_images} images on each side")
        out_div = self._mom[False].mean_pairwise_sq_distance()
        ref_div = self._mom[True].mean_pairwise_sq_distance()
        ratio = out_div / ref_div if out_div is not None and ref_div else None
        return DistributionReport(
            extractor=self.extractor.name,
            extractor_digest=self.extractor.digest,
            num_features=self.dim,
            outputs=n_fake,
            reference=n_real,
            kid=kid,
            kid_std=kid_std,
            kid_subset_size=subset if subset >= 2 else None,
            fid=fid,
            output_diversity=out_div,
            reference_diversity=ref_div,
            diversity_ratio=ratio,
            note="; ".join(notes),
        )


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
