"""bench.json → the markdown tables in docs/benchmarks.md."""

from __future__ import annotations

from typing import Any


def _f(v: Any, d: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{d}f}"
    return str(v)


def _ok(v: float | None, target: float, above: bool = True) -> str:
    if v is None:
        return "—"
    return "met" if (v >= target if above else v <= target) else "**missed**"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    out = [
        "## Machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, GPU: {m['gpu'] or 'none'}; "
        f"{m['platform']}, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Load average at start {_f(m['loadavg_start'][0], 1)}, at end "
        f"{_f(m.get('loadavg_end', [None])[0], 1)}"
        + (" — **smoke run: plumbing only, numbers mean nothing**" if r.get("smoke") else "")
        + f". Whole run {_f(r.get('bench_wall_s'), 0)} s.",
        "",
    ]
    if "efficiency" in r:
        e, cfg = r["efficiency"], r["config"]["eff"]
        out += [
            f"## 1. Efficiency — {cfg['n']} images, UNet2DModel 64×64, {cfg['steps']} DDIM steps, "
            f"batch {cfg['batch']}, {cfg['threads']} torch thread(s) per worker",
            "",
            "| variant | steady images/s | total wall s (incl. start-up) |",
            "| --- | ---: | ---: |",
        ]
        names = {
            "bare": "(a) bare diffusers loop, one process",
            "augflow": "(b) augflow end to end (Prefect + Ray + GX + registry), batched",
            "raydata": "(c) Ray Data map_batches, actor pool of 1",
            "augflow_batch_invariant": "(b') augflow, CPU default: batch-invariant (1 image at a time)",
            "bare_again": "(a) bare loop again (drift check)",
        }
        for k, label in names.items():
            v = e[k]
            out.append(
                f"| {label} | {_f(v['steady_images_per_s'], 3)} | {_f(v['total_wall_s'], 1)} |"
            )
        q = e["ratios"]
        out += [
            "",
            "| ratio | value | target |",
            "| --- | ---: | --- |",
            f"| b/a steady | {_f(q['b_over_a_steady'], 3)} | ≥ 0.95: {_ok(q['b_over_a_steady'], 0.95)} |",
            f"| b/c steady | {_f(q['b_over_c_steady'], 3)} | ≥ 1.0: {_ok(q['b_over_c_steady'], 1.0)} |",
            f"| b/a total (a's wall / b's wall) | {_f(q['b_over_a_total'], 3)} | — |",
            f"| b/c total (c's wall / b's wall) | {_f(q['b_over_c_total'], 3)} | — |",
            f"| b'/a steady (batch-invariant CPU default) | {_f(q['b_invariant_over_a_steady'], 3)} | — |",
            f"| bare loop drift (second / first) | {_f(q['bare_drift'], 3)} | noise gauge |",
            "",
            f"Prefect task runs in the flow run: {e['augflow'].get('task_runs')} "
            f"({e['augflow'].get('shards')} shards).",
            "",
        ]
    if "scaling" in r:
        s, cfg = r["scaling"], r["config"]["scaling"]
        work = cfg["sleep"] * -(-cfg["shard_size"] // cfg["batch"])
        out += [
            f"## 2. Orchestration scaling — sleep model, {work:.2f} s per shard, "
            f"{cfg['shards_per_actor']} shards per actor",
            "",
            "| actors | shards | steady shards/s | ideal (N/W) | efficiency | end-to-end eff. (incl. actor start) | wall s |",
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
    if "overhead" in r:
        o = r["overhead"]
        out += [
            "## 2b. Overhead per shard — sleep model at 0 s, 1 image per shard",
            "",
            "| shards | actors | plan s | execute s | start-up s | driver s/shard | actor s/shard | share for a 5 s shard | resume scan s | driver peak RSS MB |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n, v in o.items():
            if n == "total_wall_s":
                continue
            share = v["actor_s_per_shard"] / (5.0 + v["actor_s_per_shard"])
            out.append(
                f"| {n} | {v['workers']} | {_f(v['plan_s'])} | {_f(v['execute_s'], 1)} | "
                f"{_f(v['startup_s'], 1)} | {_f(v['driver_s_per_shard'], 4)} | "
                f"{_f(v['actor_s_per_shard'], 4)} | {share:.2%} ({_ok(share, 0.01, above=False)}) | "
                f"{_f(v['resume_scan_s'])} | {_f(v['peak_driver_rss_mb'], 0)} |"
            )
        out.append("")
    if "memory" in r:
        mem = r["memory"]
        out += [
            "## 3. Memory — full flow, sleep model, 64×64 noise PNGs",
            "",
            "| images | shards | driver peak RSS MB | actor peak RSS MB (each) | Prefect task runs | flow s |",
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
            out += [
                "",
                f"10× data → driver ×{dr:.3f} ({_ok(dr, 1.1, above=False)}), "
                f"largest actor ×{_f(ar, 3)} ({_ok(ar, 1.1, above=False)}); target ≤ 1.1×.",
                "",
            ]
    if "storage" in r:
        out += [
            "## 4. Storage — share of a ShardWorker's wall time spent encoding and writing",
            "",
            "| target / model | wall s | PNG encode + metrics s | Parquet encode + write s | marker s | share |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for k, v in r["storage"].items():
            if k == "total_wall_s":
                continue
            out.append(
                f"| {k} | {_f(v['wall_s'])} | {_f(v['png_encode_and_metrics_s'], 3)} | "
                f"{_f(v['parquet_encode_and_write_s'], 3)} | {_f(v['marker_write_s'], 3)} | "
                f"{v['share']:.1%} |"
            )
        out += ["", "S3: `--s3 s3://bucket/prefix` adds the same rows for an S3 root.", ""]
    out += ["## 5. GPU", "", str(r.get("gpu")), ""]
    return "\n".join(out)
