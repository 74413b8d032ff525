"""The GPU benchmark's reduced CPU form runs and reports both sides."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_bench.py"


def test_gpu_bench_smoke() -> None:
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.main(["--smoke"])
    assert result["augflow_images_per_s"] > 0 and result["bare_diffusers_images_per_s"] > 0
    assert result["unet_gflops_per_image"] > 0
    assert result["augflow_mfu"] is None  # no peak is known for a CPU
