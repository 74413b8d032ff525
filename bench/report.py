"""bench.json → the markdown tables in docs/benchmarks.md."""

from __future__ import annotations

from typing import Any


def _f(v: Any, d: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{d}f}"
    return str(v)


def _s(sp: dict[str, Any] | None, d: int = 2) -> str:
    """'median (min–max)' of a spread; a single value when there was one run."""
    if not sp or sp.get("median") is None:
        return "—"
    if sp.get("n", 0) <= 1 or sp["min"] == sp["max"]:
        return _f(sp["median"], d)
    return f"{_f(sp['median'], d)} ({_f(sp['min'], d)}–{_f(sp['max'], d)})"


def _ok(v: float | None, target: float, above: bool = True) -> str:
    if v is None:
        return "—"
    return "met" if (v >= target if above else v <= target) else "**missed**"


def _med(sp: dict[str, Any] | None) -> float | None:
    return None if not sp else sp.get("median")


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    out = [
        "## Machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, GPU: {m['gpu'] or 'none'}; "
        f"{m['platform']}, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + (
            f". Load average at start {_f(m['loadavg_start'][0], 1)}, at end "
            f"{_f(m.get('loadavg_end', [None])[0], 1)}"
            if len(r.get("runs", [])) <= 1
            else ". Load: see the runs below"
        )
        + "; benchmark processes at nice "
        f"{m.get('niceness', 0)}"
        + (" — **smoke run: plumbing only, numbers mean nothing**" if r.get("smoke") else "")
        + f". Whole run {_f(r.get('bench_wall_s'), 0)} s.",
        "",
    ]
    if len(r.get("runs", [])) > 1:  # merged from several runs (--merge): each with its load
        out += [f"Measured in {len(r['runs'])} runs of `bench.run`:", ""]
        for i, run in enumerate(r["runs"], 1):
            rm = run["machine"]
            out.append(
                f"- run {i}: {', '.join(run['sections'])} — load average at start "
                f"{_f(rm['loadavg_start'][0], 1)}, at end {_f(rm.get('loadavg_end', [None])[0], 1)}"
                f", {_f(rm.get('bench_wall_s'), 0)} s"
            )
        out.append("")
    if "e2e" in r:
        out += _e2e(r["e2e"])
    if "warm" in r:
        for mode, w in r["warm"].items():
            out += _warm(w, mode)
    if "overlap" in r:
        out += _overlap(r["overlap"], r["config"]["overlap"])
    if "scaling" in r:
        out += _scaling(r["scaling"], r["config"]["scaling"])
    if "overhead" in r:
        out += _overhead(r["overhead"], r.get("e2e"))
    if "memory" in r:
        out += _memory(r["memory"])
    if "storage" in r:
        out += _storage(r["storage"])
    out += ["## 8. GPU", "", str(r.get("gpu")), ""]
    return "\n".join(out)


def _e2e(e: dict[str, Any]) -> list[str]:
    cfg, p = e["config"], e["params"]
    sizes = [str(n) for n in cfg["sizes"] if str(n) in e]
    out = [
        f"## 1. End to end — `{e['model']}`, generate, {cfg['steps']} DDIM steps, "
        f"up to {cfg['repeats']} interleaved repeats per arm (rounds: see the ratio table)",
        "",
        f"(a) bare loop, best-tuned: {p['bare_threads']} torch thread(s), batches of "
        f"{p['bare_batch']}; (b) `augflow run`, default configuration; (c) Ray Data, "
        f"{p['peer_actors']} actors × {p['peer_threads']} thread, batches of {p['peer_batch']}. "
        "Seconds from process start; median (min–max).",
        "",
        "| images | arm | wall s (to exit) | to result s | first image s | steady images/s |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    names = {"bare": "(a) bare", "augflow": "(b) augflow", "raydata": "(c) Ray Data"}
    for n in sizes:
        row = e[n]
        for arm in cfg["arms"]:
            v = row[arm]
            out.append(
                f"| {n} | {names[arm]} | {_s(v['wall_s'], 1)} | {_s(v['result_s'], 1)} | "
                f"{_s(v['first_image_s'], 1)} | {_s(v['steady_images_per_s'])} |"
            )
    out += [
        "",
        "| images | b/a end to end (a's wall ÷ b's) | b/a to result | b/a steady | "
        "b/c end to end | b/c steady | rounds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sizes:
        q = e[n]["ratios"]
        out.append(
            f"| {n} | {_s(q['b_over_a_wall'], 3)} | {_s(q['b_over_a_result'], 3)} | "
            f"{_s(q['b_over_a_steady'], 3)} | {_s(q.get('b_over_c_wall'), 3)} | "
            f"{_s(q.get('b_over_c_steady'), 3)} | {q['b_over_a_wall'].get('n', '—')} |"
        )
    out += ["", "| target | measured | |", "| --- | ---: | --- |"]
    small, mid, big = (e.get(str(n)) for n in (16, 256, 2048))
    if small:
        first = _med(small["augflow"]["first_image_s"])
        times = _med(small["ratios"]["b_wall_over_a_wall"])
        out.append(
            f"| 16 images: first image ≤ 10 s | {_f(first, 1)} s | {_ok(first, 10, False)} |"
        )
        out.append(f"| 16 images: wall ≤ 2× bare | {_f(times, 2)}× | {_ok(times, 2.0, False)} |")
    if mid:
        v = _med(mid["ratios"]["b_over_a_wall"])
        out.append(f"| 256 images: end to end ≥ 0.85× bare | {_f(v, 3)} | {_ok(v, 0.85)} |")
    if big:
        v = _med(big["ratios"]["b_over_a_steady"])
        c = _med(big["ratios"].get("b_over_c_steady"))
        out.append(
            f"| 2,048 images: steady b/a ≥ 0.95 (default config) | {_f(v, 3)} | {_ok(v, 0.95)} |"
        )
        out.append(f"| 2,048 images: steady b/c ≥ 1.0 | {_f(c, 3)} | {_ok(c, 1.0)} |")
    t = e.get("bare_tuning", {})
    if t.get("trials"):
        out += [
            "",
            f"Bare-loop sweep ({t['trials'][0]['images']} images, one run each; the fastest "
            "steady state is the bare arm above):",
            "",
            "| threads | batch | steady images/s | wall s |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for x in t["trials"]:
            out.append(
                f"| {x['threads']} | {x['batch']} | {_f(x['steady_images_per_s'])} | "
                f"{_f(x['wall_s'], 1)} |"
            )
    out.append("")
    return out


def _warm(w: dict[str, Any], mode: str) -> list[str]:
    how = {
        "serve": "`augflow worker --serve augment/on-demand` (flow runs in the worker's process)",
        "pool": "`augflow worker --pool augflow-local` (a Prefect process worker: a process per "
        "flow run)",
    }[mode]
    out = [
        f"## 2{'a' if mode == 'serve' else 'b'}. Warm on-demand requests — {how}, `augflow submit`",
        "",
        "| request | submit → compute s | flow run start → compute s | submit → done s | "
        "actor pid | state |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for i, q in enumerate(w["requests"]):
        kind = "cold" if i == 0 else "warm"
        out.append(
            f"| {i + 1} ({kind}) | {_f(q.get('submit_to_compute_s'), 2)} | "
            f"{_f(q.get('flow_start_to_compute_s'), 2)} | {_f(q.get('submit_to_done_s'), 1)} | "
            f"{q.get('pid', '—')} | {q.get('state')} |"
        )
    warm = [q.get("submit_to_compute_s") for q in w["requests"][1:]]
    warm = [x for x in warm if x is not None]
    loads = ", ".join(
        f"pid {a['pid']}: {a['model_loads']} model load(s), {a['requests']} requests"
        for a in w["actors"]
    )
    if warm:
        med = sorted(warm)[len(warm) // 2]
        out += [
            "",
            f"Warm requests, submit → compute: median {med:.2f} s (target ≤ 3 s: "
            f"{_ok(med, 3.0, False)}). Actors: {loads}.",
        ]
    out.append("")
    return out


def _overlap(o: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    out = [
        f"## 3. The GPU critical path, simulated — a fake device: {cfg['seconds'] * 1000:.0f} ms "
        f"per batch of {cfg['batch']} at {cfg['side']}²; real conversion, PNG encoding and metrics",
        "",
        "| encode threads | device busy (steady state) | wall s | batches late |",
        "| ---: | ---: | ---: | ---: |",
    ]
    late = o.get("device_overruns", {})
    for k, values in o["device_busy"].items():
        label = f"{k} (encoding inside the compute lock)" if k == "0" else k
        busy = _spread(values)
        overran = "/".join(str(n) for n in late.get(k, [])) or "–"
        out.append(f"| {label} | {_s(busy, 3)} | {_s(_spread(o['walls_s'][k]), 1)} | {overran} |")
    out += [
        "",
        f"Host work after the device for one {cfg['side']}² image (float → uint8, PNG, metrics): "
        f"{o['encode_and_metrics_s_per_image'] * 1000:.1f} ms on one core here "
        f"(PNG {o['png_bytes_per_image'] / o['raw_bytes_per_image']:.0%} of raw). Keeping the "
        f"device 95 % busy needs ≈ {o['cores_needed_for_95']:.1f} cores for it. *Batches late*: "
        "per repeat, batches whose making overran the device time (counted busy only up to it).",
        "",
    ]
    return out


def _spread(values: list[float]) -> dict[str, Any]:
    v = sorted(values)
    return {"median": v[len(v) // 2], "min": v[0], "max": v[-1], "n": len(v)} if v else {}


def _scaling(s: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    work = cfg["sleep"] * -(-cfg["shard_size"] // cfg["batch"])
    out = [
        f"## 4. Orchestration scaling — sleep model, {work:.2f} s per shard, "
        f"{cfg['shards_per_actor']} shards per actor",
        "",
        "| actors | shards | steady shards/s | ideal (N/W) | efficiency | end-to-end eff. "
        "(incl. actor start) | wall s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, v in s.items():
        if n == "total_wall_s":
            continue
        out.append(
            f"| {n} | {v['shards']} | {_f(v['steady_shards_per_s'])} | "
            f"{_f(v['ideal_shards_per_s'])} | {_f(v['efficiency'], 3)} | "
            f"{_f(v['end_to_end_efficiency'], 3)} | {_f(v['wall_s'], 1)} |"
        )
    last = s.get(str(max(cfg["sizes"])), {})
    out += [
        "",
        f"Target ≥ 0.9 at {max(cfg['sizes'])} actors: {_ok(last.get('efficiency'), 0.9)}.",
        "",
    ]
    return out


def _overhead(o: dict[str, Any], e: dict[str, Any] | None) -> list[str]:
    out = [
        "## 5. Overhead per shard — sleep model at 0 s, 1 image per shard",
        "",
        "| shards | actors | plan s | execute s | start-up s | driver s/shard | actor s/shard | "
        "resume scan s | driver peak RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = {n: v for n, v in o.items() if n != "total_wall_s"}
    for n, v in rows.items():
        out.append(
            f"| {n} | {v['workers']} | {_f(v['plan_s'])} | {_f(v['execute_s'], 1)} | "
            f"{_f(v['startup_s'], 1)} | {_f(v['driver_s_per_shard'], 4)} | "
            f"{_f(v['actor_s_per_shard'], 4)} | {_f(v['resume_scan_s'])} | "
            f"{_f(v['peak_driver_rss_mb'], 0)} |"
        )
    big = (e or {}).get("2048")
    if big and rows:
        per_shard = max(v["actor_s_per_shard"] for v in rows.values())
        shards = -(-2048 // 64)
        wall = _med(big["augflow"]["wall_s"])
        share = per_shard * shards / (2 if shards > 1 else 1) / wall if wall else None
        out += [
            "",
            f"Orchestration at 2,048 images: {shards} shards × {per_shard * 1000:.1f} ms of actor "
            f"time each, over 2 actors, ÷ the run's median wall {_f(wall, 1)} s = "
            f"{_f(share * 100 if share else None, 3)} % (target < 1 %: "
            f"{_ok(share, 0.01, above=False)}).",
        ]
    out.append("")
    return out


def _memory(mem: dict[str, Any]) -> list[str]:
    out = [
        "## 6. Memory — full flow incl. validation, sleep model, 8×8 noise PNGs",
        "",
        "| images | shards | driver peak RSS MB | actor peak RSS MB (each) | Prefect task runs | "
        "flow s |",
        "| ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for v in mem.values():
        out.append(
            f"| {v['images']} | {v['shards']} | {_f(v['driver_peak_rss_mb'], 0)} | "
            f"{', '.join(f'{x:.0f}' for x in v['actor_peak_rss_mb'])} | {v['task_runs']} | "
            f"{_f(v['flow_s'], 1)} |"
        )
    vals = list(mem.values())
    if len(vals) == 2:
        dr = vals[1]["driver_peak_rss_mb"] / vals[0]["driver_peak_rss_mb"]
        a0, a1 = (max(v["actor_peak_rss_mb"] or [0]) for v in vals)
        ar = a1 / a0 if a0 else None
        grow = vals[1]["images"] / vals[0]["images"]
        out += [
            "",
            f"{grow:.0f}× the rows → driver ×{dr:.3f} ({_ok(dr, 1.1, above=False)}), largest "
            f"actor ×{_f(ar, 3)} ({_ok(ar, 1.1, above=False)}); target ≤ 1.1×.",
        ]
    out.append("")
    return out


def _storage(st: dict[str, Any]) -> list[str]:
    out = [
        "## 7. Storage — share of a ShardWorker's wall time spent encoding and writing",
        "",
        "| target / model | wall s | to uint8 + PNG + metrics s | Parquet encode + write s | "
        "marker s | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, v in st.items():
        if k == "total_wall_s":
            continue
        out.append(
            f"| {k} | {_f(v['wall_s'])} | {_f(v['png_encode_and_metrics_s'], 3)} | "
            f"{_f(v['parquet_encode_and_write_s'], 3)} | {_f(v['marker_write_s'], 3)} | "
            f"{v['share']:.1%} |"
        )
    out += ["", "S3: `--s3 s3://bucket/prefix` adds the same rows for an S3 root.", ""]
    return out
