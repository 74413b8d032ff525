"""Set-level metrics (models/setmetrics.py): hashes and near-duplicates, memorisation, variant
spread, and the distribution distance — including the sanity of KID itself on real photos, the
bundled generator's samples and blurred photos, and the broken generators of
tests/broken_models.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from augflow.models import setmetrics as S
from augflow.models.evaluate import BUNDLED
from augflow.models.feature_stats import FeatureStats
from augflow.models.features import FeatureExtractor, load_feature_extractor
from augflow.models.quality_calibration import FEATURE_UNSEEN, to_rgb
from augflow.models.training.data import faces_32, load_photo


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # One thread: on a shared CPU, torch's thread team waits on its slowest member, which made
    # these model runs several times slower than single-threaded ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _photo_tiles(size: int = 64) -> list[np.ndarray]:
    """Non-overlapping tiles of photos the feature network never saw."""
    tiles = []
    for name in FEATURE_UNSEEN:
        img = load_photo(name)
        for y in range(0, img.shape[0] - size + 1, size):
            for x in range(0, img.shape[1] - size + 1, size):
                tiles.append(np.ascontiguousarray(img[y : y + size, x : x + size]))
    return tiles


# --- hashes and near-duplicates ------------------------------------------------------------------


def test_phash64_is_imagehash_phash() -> None:
    import imagehash

    img = Image.fromarray(load_photo("coffee")[:200, :200])
    assert S.phash64(img) == int(str(imagehash.phash(img, hash_size=8)), 16)
    assert S.phash64(np.asarray(img)) == S.phash64(img)


def test_indexed_search_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2**63, 6000, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    h[600:1200] = (h[600:1200] & ~np.uint64(0xFFFFF)) | np.uint64(0x12345)  # shared bits
    for k in range(50):  # planted pairs at distances 0..5
        flips = rng.choice(64, size=k % 6, replace=False)
        h[3000 + k] = h[k] ^ np.uint64(sum(1 << int(f) for f in flips))
    others = h[:900] ^ np.uint64(0b1011)
    for t in (0, 2, 4, 6):
        brute = S._pairs_brute(h, h, t, True)
        indexed = S._pairs_indexed(h, h, t, True, 10**10)
        assert sorted(zip(*brute, strict=True)) == sorted(zip(*indexed, strict=True))
        cross_b = S._pairs_brute(others, h, t, False)
        cross_i = S._pairs_indexed(others, h, t, False, 10**10)
        assert sorted(zip(*cross_b, strict=True)) == sorted(zip(*cross_i, strict=True))
    assert len(S.near_pairs(h, 5)[0]) >= 50


def test_the_near_pair_search_holds_a_bounded_step_whatever_the_set_size() -> None:
    # 100k distinct random hashes: ~68M candidate pairs, compared step by step. Each step's
    # temporaries are sized by _BLOCK_PAIRS, not by the set: 4M-pair steps peaked at ~240 MB.
    import tracemalloc

    h = np.random.default_rng(3).integers(0, 2**63, size=100_000, dtype=np.int64).astype(np.uint64)
    tracemalloc.start()
    try:
        S.near_pairs(h, 6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MB"


def test_near_duplicates_of_real_images() -> None:
    tiles = _photo_tiles()[:120]
    ids = [f"row{k:03d}" for k in range(len(tiles))]
    nd = S.NearDuplicates()
    nd.update(tiles, ids)
    clean = nd.compute()
    assert clean.duplicate_rows == 0 and clean.unique_fraction == 1.0
    # add a JPEG re-encode, a 5% resize and an exact copy of three tiles: all three are caught
    copies = []
    buf = io.BytesIO()
    Image.fromarray(tiles[5]).save(buf, format="JPEG", quality=70)
    copies.append(np.asarray(Image.open(buf)))
    copies.append(np.asarray(Image.fromarray(tiles[9]).resize((67, 67))))
    copies.append(tiles[11].copy())
    nd.update(copies, ["jpeg", "resized", "copy"])
    report = nd.compute()
    assert report.duplicate_rows == 3
    assert report.unique_fraction == pytest.approx(120 / 123)
    found = {e["row_id"]: e["duplicate_of"] for e in report.examples}
    assert found == {"jpeg": "row005", "resized": "row009", "copy": "row011"}


def test_groups_can_be_ignored_and_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(2)
    h = rng.integers(0, 2**62, 400, dtype=np.int64).astype(np.uint64)
    h[1] = h[0]  # same source: ignored
    h[7] = h[0]  # another source: a duplicate
    groups = [f"src{k // 4}" for k in range(400)]
    ids = [f"r{k}" for k in range(400)]
    one = S.NearDuplicates(ignore_same_group=True)
    one.update_hashes(h, ids, groups)
    streamed = S.NearDuplicates(ignore_same_group=True)
    for start in range(0, 400, 64):
        streamed.update_hashes(
            h[start : start + 64], ids[start : start + 64], groups[start : start + 64]
        )
    a, b = one.compute(), streamed.compute()
    assert a == b
    assert a.duplicate_rows == 1 and a.examples[0]["row_id"] == "r7"
    plain = S.NearDuplicates()
    plain.update_hashes(h, ids)
    assert plain.compute().duplicate_rows == 2


def test_a_million_identical_images_is_cheap() -> None:
    nd = S.NearDuplicates()
    h = np.full(1_000_000, 0x0123456789ABCDEF, dtype=np.uint64)
    nd.update_hashes(h, [f"{k:024x}" for k in range(len(h))])
    report = nd.compute()
    assert report.exact and report.duplicate_rows == len(h) - 1
    assert report.unique_fraction == pytest.approx(1e-6)


def test_self_similar_sets_fall_back_to_a_sample_estimate(monkeypatch) -> None:
    monkeypatch.setattr(S, "_BRUTE_FORCE_PAIRS", 1000)
    monkeypatch.setattr(S, "_COMPARISON_BUDGET", 5000)
    rng = np.random.default_rng(3)
    h = rng.integers(0, 2**62, 5000, dtype=np.int64).astype(np.uint64)
    h[2500:] = h[:2500] ^ np.uint64(1)  # the second half copies the first at distance 1
    nd = S.NearDuplicates()
    nd.update_hashes(h, [str(k) for k in range(5000)])
    report = nd.compute()
    assert not report.exact
    assert report.duplicate_fraction == pytest.approx(0.5, abs=0.05)


# --- memorisation and variants -------------------------------------------------------------------


def test_reference_matches_find_copies_of_training_images() -> None:
    faces = [_rgb(f) for f in faces_32()]
    ref = S.ReferenceMatches()
    ref.add_reference(faces[:60], [f"lfw{k}" for k in range(60)])
    outputs = [faces[3], faces[10], *faces[60:70]]  # two copies of training faces, ten unseen
    ref.update(outputs, [f"out{k}" for k in range(len(outputs))])
    report = ref.compute()
    assert report.matched_rows == 2 and report.reference_images == 60
    assert {(e["row_id"], e["reference"]) for e in report.examples} == {
        ("out0", "lfw3"),
        ("out1", "lfw10"),
    }


def test_variant_spread_catches_identical_variants() -> None:
    tiles = _photo_tiles()[:8]
    rng = np.random.default_rng(0)
    spread = S.VariantSpread()
    # source a: four different variants; source b: four identical ones (a seed-blind model)
    variants_a = [
        np.clip(tiles[0] + rng.normal(0, 12, tiles[0].shape), 0, 255).astype(np.uint8)
        for _ in range(4)
    ]
    spread.update(variants_a, ["a"] * 4, [f"a{k}" for k in range(4)])
    spread.flush()  # end of a shard
    spread.update([tiles[1]] * 4, ["b"] * 4, [f"b{k}" for k in range(4)])
    report = spread.compute()
    assert report.sources == 2 and report.failing_sources == 1
    assert report.examples[0]["source_id"] == "b" and report.examples[0]["psnr"] == 100.0
    assert report.max_pair_psnr == 100.0


# --- features: KID, FID, diversity ---------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor():
    return load_feature_extractor("bundled")


def _kid(extractor, real: list, fake: list, **kw) -> S.DistributionReport:
    stats = FeatureStats(extractor, **kw)
    stats.update(real, real=True)
    stats.update(fake, real=False)
    return stats.compute()


def test_kid_is_sane_on_real_and_blurred_photos(extractor) -> None:
    """Two disjoint halves of the same photo tiles: KID within its own spread of zero, and well
    below the KID between one half and the other half blurred by 2 px."""
    tiles = _photo_tiles()
    order = np.random.default_rng(0).permutation(len(tiles))
    half = len(tiles) // 2
    a = [tiles[k] for k in order[:half]]
    b = [tiles[k] for k in order[half : 2 * half]]
    blurred = [ndi.gaussian_filter(t, (2.0, 2.0, 0)) for t in b]
    same = _kid(extractor, a, b)
    blur = _kid(extractor, a, blurred)
    assert half >= 140
    assert abs(same.kid) < same.kid_std
    assert blur.kid > 5 * abs(same.kid)
    assert blur.kid > same.kid + 2 * same.kid_std
    assert same.diversity_ratio == pytest.approx(1.0, abs=0.25)


@pytest.fixture(scope="module")
def generated_faces() -> list[np.ndarray]:
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline.from_pretrained(BUNDLED / "ddim-faces32", use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(i) for i in range(100)]
    with torch.inference_mode():
        imgs = pipe(batch_size=100, generator=gens, num_inference_steps=20, output_type="np").images
    return [to_rgb(x) for x in (imgs * 255).round().astype(np.uint8)]


def test_kid_separates_real_faces_from_the_bundled_generator(extractor, generated_faces) -> None:
    faces = [_rgb(f) for f in faces_32()]  # never seen by the feature network
    real_halves = _kid(extractor, faces[:50], faces[50:])
    generated = _kid(extractor, faces, generated_faces)
    assert abs(real_halves.kid) < real_halves.kid_std
    assert generated.kid > 10 * abs(real_halves.kid)
    assert generated.kid > 2 * generated.kid_std


def test_streaming_in_shards_equals_one_pass(extractor) -> None:
    tiles = _photo_tiles()[:90]
    one = _kid(extractor, tiles[:40], tiles[40:], reservoir=1000)
    shards = FeatureStats(extractor, reservoir=1000)
    for start in range(0, 40, 16):
        shards.update(tiles[start : min(start + 16, 40)], real=True)
    for start in range(40, 90, 7):
        shards.update(tiles[start : start + 7], real=False)
    two = shards.compute()
    assert two.kid == pytest.approx(one.kid, rel=1e-4, abs=1e-7)
    assert two.output_diversity == pytest.approx(one.output_diversity, rel=1e-5)
    assert (two.outputs, two.reference) == (50, 40)
    assert two.fid is None and "FID needs" in two.note


class _FixedWidth(FeatureExtractor):
    """Only what FeatureStats reads of an extractor; features are handed in directly."""

    name, digest, num_features, input_size = "fixed-width", "-", 128, 8


def test_fid_and_reservoir_with_many_images() -> None:
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.normal(0, 1, (1500, 128)).astype(np.float32))
    fake = torch.from_numpy(rng.normal(0.5, 1, (1500, 128)).astype(np.float32))
    stats = FeatureStats(_FixedWidth(), reservoir=300, kid_subsets=10, kid_subset_size=200)
    for k in range(0, 1500, 100):
        stats.update_features(real[k : k + 100], real=True)
        stats.update_features(fake[k : k + 100], real=False)
    report = stats.compute()
    assert len(stats._res[True].data) == 300 and stats._res[True].seen == 1500
    # FID of two unit Gaussians whose means differ by 0.5 in 128 dimensions: 128 × 0.25 = 32,
    # plus the estimation bias of 1500 samples
    assert 30 < report.fid < 40
    assert report.kid > 0 and report.kid_subset_size == 150  # half the 300-image reservoir


def test_same_image_generator_fails_duplicates_and_diversity(tmp_path, extractor) -> None:
    from broken_models import make_same_image_generator

    from augflow.models.loading import load_pipeline
    from augflow.schemas.request import ModelSpec

    faces = [_rgb(f) for f in faces_32()]
    path = make_same_image_generator(tmp_path / "same", faces[42])
    pipe = load_pipeline(ModelSpec(id=str(path)), "cpu").pipeline
    gens = [torch.Generator().manual_seed(i) for i in range(12)]
    out = pipe(
        prompt=[""] * 12,
        height=32,
        width=32,
        num_inference_steps=3,
        generator=gens,
        output_type="np",
    ).images
    images = list((out * 255).round().astype(np.uint8))
    nd = S.NearDuplicates()
    nd.update(images, [f"g{k}" for k in range(12)])
    dup = nd.compute()
    assert dup.duplicate_rows == 11 and dup.unique_fraction == pytest.approx(1 / 12)
    div = _kid(extractor, faces[:50], images)
    assert div.output_diversity == pytest.approx(0.0, abs=1e-6)
    assert div.diversity_ratio < 0.01
    mem = S.ReferenceMatches()
    mem.add_reference(faces[:40])
    mem.update(images, [f"g{k}" for k in range(12)])
    assert mem.compute().matched_rows == 0  # it repeats one face, not a reference face


def test_copying_generator_is_caught_by_memorisation_only(tmp_path) -> None:
    from broken_models import make_copying_generator

    from augflow.models.loading import load_pipeline
    from augflow.schemas.request import ModelSpec

    faces = [_rgb(f) for f in faces_32()]
    prompts = [
        "portrait of ann",
        "photo of bob",
        "a picture of carl",
        "dora smiling",
        "eve",
        "frank at noon",
    ]
    path = make_copying_generator(tmp_path / "copy", faces[:6], prompts)
    pipe = load_pipeline(ModelSpec(id=str(path)), "cpu").pipeline
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    out = pipe(
        prompt=prompts, height=32, width=32, num_inference_steps=3, generator=gens, output_type="np"
    ).images
    images = list((out * 255).round().astype(np.uint8))
    ids = [f"g{k}" for k in range(6)]
    nd = S.NearDuplicates()
    nd.update(images, ids)
    assert nd.compute().duplicate_rows == 0  # six different pictures: no duplicates
    mem = S.ReferenceMatches()
    mem.add_reference(faces[:40], [f"lfw{k}" for k in range(40)])
    mem.update(images, ids)
    report = mem.compute()
    assert report.matched_fraction == 1.0
    assert report.examples[0]["reference"] == "lfw0" and report.examples[0]["distance"] == 0


def test_set_checks_apply_the_thresholds() -> None:
    dup = S.DuplicateReport(
        rows=200, max_distance=6, duplicate_rows=4, duplicate_fraction=0.02, unique_fraction=0.98
    )
    inputs = S.DuplicateReport(
        rows=200, max_distance=6, duplicate_rows=3, duplicate_fraction=0.015, unique_fraction=0.985
    )
    mem = S.MemorisationReport(
        rows=200, reference_images=50, max_distance=6, matched_rows=1, matched_fraction=0.005
    )
    var = S.VariantReport(sources=50, max_pair_psnr=100.0, failing_sources=2, threshold_db=40.0)
    dist = S.DistributionReport(
        extractor="bundled:tiny", extractor_digest="sha256:0", num_features=128, outputs=200,
        reference=50, kid=0.3, kid_std=0.1, kid_subset_size=25, fid=None,
        output_diversity=10.0, reference_diversity=40.0, diversity_ratio=0.25,
    )  # fmt: skip

    def verdicts(op: str, **kw) -> dict[str, bool]:
        return {c.name: c.passed for c in S.set_checks(op, **kw)}

    # generate: 2% duplicates > 1%, 0.5% memorised > 0.1%, a quarter of the diversity < 0.5
    assert verdicts("generate", duplicates=dup, memorisation=mem, distribution=dist) == {
        "near_duplicates": False,
        "memorisation": False,
        "diversity": False,
        "distribution_kid": True,  # reported, no default threshold
    }
    # denoise: the inputs' own 1.5% duplicates are allowed on top; diversity is not judged
    assert verdicts("denoise", duplicates=dup, input_duplicates=inputs, distribution=dist) == {
        "near_duplicates": True,
        "distribution_kid": True,
    }
    # img2img: 2 of 50 sources with copied variants is within the 5%
    assert verdicts("img2img", variants=var) == {"variants_differ": True}
    strict = S.SetThresholds(max_kid=0.1, max_variant_copy_fraction=0.0)
    checks = {
        c.name: c
        for c in S.set_checks("img2img", variants=var, distribution=dist, thresholds=strict)
    }
    assert not checks["distribution_kid"].passed and checks["distribution_kid"].threshold == 0.1
    assert not checks["variants_differ"].passed
