"""The usefulness benchmark's Markdown tables (``usefulness.md``), made from its details JSON."""

from __future__ import annotations

from typing import Any

from bench.usefulness_stats import excludes_zero


def pct(s: dict[str, Any] | None) -> str:
    if s is None or s.get("mean") is None:
        return "not run"
    lo, hi = s["ci95"]
    return f"{100 * s['mean']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def pp(s: dict[str, Any] | None) -> str:
    """A lift in percentage points; bold when its 95% CI excludes zero."""
    if s is None or s.get("mean") is None:
        return "–"
    lo, hi = s["ci95"]
    text = f"{100 * s['mean']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"**{text}**" if excludes_zero(s) else text


def setting(arm: str, settings: dict[str, Any]) -> str:
    if arm in ("img2img", "classical+img2img") and settings.get("img2img"):
        st = settings["img2img"]
        return f"strength {st['strength']}, {st['variants']} variants/image, share {st['share']}"
    if arm == "generate":
        st = settings["generate"]
        return f"{st['per_class']} samples/class, share {st['share']}"
    return ""


def markdown(details: dict[str, Any]) -> str:
    cfg = details["config"]
    seeds = len(cfg["seeds"])
    lines = [
        "# Usefulness benchmark results",
        "",
        f"Tiny CNN on scikit-learn digits (16×16), {seeds} seeds; mean and 95% CI (Student t over "
        "seeds); lifts are paired per seed, **bold** where the CI excludes zero. "
        f"augflow via `{cfg['via']}`, model `{cfg['model']}`, {cfg['steps']} DDIM steps. "
        f"Total {details['seconds']['total']:.0f} s "
        f"(augflow runs {details['seconds']['augflow_runs']:.0f} s).",
        "",
    ]
    for final in details["test"]:
        lines += [
            f"## Test accuracy, {final['shots_per_class']} labelled images per class",
            "",
            "| arm | setting (chosen on val) | accuracy | lift over real | lift over classical |",
            "|---|---|---|---|---|",
        ]
        for arm, body in final["arms"].items():
            if body.get("mean") is None:
                lines.append(f"| {arm} | not run: augflow cannot do it yet (below) | – | – | – |")
                continue
            lines.append(
                f"| {arm} | {setting(arm, final['settings'])} | {pct(body)} | "
                f"{pp(body['lift_over_real'])} | {pp(body['lift_over_classical'])} |"
            )
        lines.append("")
    sw = details["sweep"]
    lines += [
        f"## Sweep (scored on val, {sw['shots_per_class']}-shot)",
        "",
        f"real: {pct(sw['real'])}; classical: {pct(sw['classical'])}",
        "",
        "### img2img variants",
        "",
        "| strength | variants/image | share | val accuracy | lift over real | lift over classical |",
        "|---|---|---|---|---|---|",
    ]
    if not sw["img2img"]:
        lines.append("| not run: augflow cannot do it yet (below) | | | | | |")
    for row in sw["img2img"]:
        lines.append(
            f"| {row['strength']} | {row['variants']} | {row['share']} | {pct(row)} | "
            f"{pp(row['lift_over_real'])} | {pp(row['lift_over_classical'])} |"
        )
    lines += [
        "",
        "### generate (class-conditional samples)",
        "",
        "| samples/class | share | val accuracy | lift over real | lift over classical |",
        "|---|---|---|---|---|",
    ]
    for row in sw["generate"]:
        lines.append(
            f"| {row['per_class']} | {row['share']} | {pct(row)} | "
            f"{pp(row['lift_over_real'])} | {pp(row['lift_over_classical'])} |"
        )
    lines += [
        "",
        "## Do the synthetic images copy the labelled ones?",
        "",
        "RMS distance (0–255) of each synthetic image to its nearest 5-shot image and to its "
        "nearest pool image; last column: how often the nearest of both is a 5-shot image "
        "(50 of 947 candidates; a generator that does not copy them gives about 5%). img2img "
        "variants start from 5-shot images, so for them the first column is how far a variant "
        "moved from its source (at most).",
        "",
        "| synthetic set | images | to nearest 5-shot | to nearest pool | nearest is 5-shot |",
        "|---|---|---|---|---|",
    ]
    for name, nn in details["nearest_neighbours"].items():
        lines.append(
            f"| {name} | {nn['images']} | {nn['rms_to_nearest_5shot']:.1f} | "
            f"{nn['rms_to_nearest_pool']:.1f} | {100 * nn['share_nearest_is_5shot']:.0f}% |"
        )
    lines += ["", "## augflow runs", "", "| version | seconds |", "|---|---|"]
    lines += [f"| `{r['ref']}` | {r['seconds']} |" for r in details["augflow"]["runs"]]
    for arm, why in details["augflow"]["errors"].items():
        lines += ["", f"**{arm} could not run**: {why}"]
    return "\n".join(lines) + "\n"
