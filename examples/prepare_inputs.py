"""Write the demo's inputs: crops of photos held out from the bundled models' training, with and
without Gaussian noise (σ = 25/255), as PNG files. Deterministic; writes nothing else.

    python examples/prepare_inputs.py examples/inputs
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from augflow.models.training.data import HELD_OUT, load_photo

CROPS = {  # (photo, top, left): edges, foliage, saturated colour and texture at a glance
    "china-temple": ("china", 130, 120),
    "china-trees": ("china", 280, 420),
    "flower-petals": ("flower", 150, 300),
    "aero-texture": ("aero", 150, 180),
}
SIZE = 96
SIGMA = 25.0


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    for sub in ("clean", "noisy"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name, (photo, top, left) in CROPS.items():
        if photo not in HELD_OUT:
            raise SystemExit(f"{photo} was used in training; the demo shows held-out photos only")
        crop = load_photo(photo)[top : top + SIZE, left : left + SIZE]
        noisy = np.clip(crop + rng.normal(0, SIGMA, crop.shape), 0, 255).round().astype(np.uint8)
        Image.fromarray(crop).save(out / "clean" / f"{name}.png")
        Image.fromarray(noisy).save(out / "noisy" / f"{name}.png")
    print(f"wrote {len(CROPS)} clean and {len(CROPS)} noisy crops under {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/inputs"))
