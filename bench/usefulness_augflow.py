"""Run augflow requests for the usefulness benchmark: in-process flow calls or the real CLI.

``via="flow"`` calls :func:`augflow.flows.augment.augment` in this process, so all runs share one
Prefect server and one Ray start-up (what a long-lived worker does); ``via="cli"`` runs
``augflow run request.yaml`` in a fresh process per request, exactly what a user types. Both
register a version and return its ``name@version``; the benchmark reads every version back through
the registry either way.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


class AugflowRunFailed(RuntimeError):
    """augflow refused or failed a request; the message is augflow's own."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: "augflow.schemas.errors.ModelLoadError: model ... " inside a traceback Ray passed along
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def _compact(message: str) -> str:
    """augflow's message in one line: its summary plus each distinct root cause, once.

    A failed shard's reason can hold a whole remote traceback (Ray's), repeated per shard; the
    lines that name an exception are what a reader needs.
    """
    lines = [_ANSI.sub("", ln).strip() for ln in message.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return ""
    causes: list[str] = []
    for ln in lines[1:]:
        m = _ERROR_LINE.match(ln.removeprefix("- "))
        if m and f"{m[1]}: {m[2]}" not in causes:
            causes.append(f"{m[1]}: {m[2]}")
    if not causes:  # plain reasons ("shard x: why"), no tracebacks: keep the distinct ones
        for ln in lines[1:]:
            reason = ln.removeprefix("- ")
            if reason.startswith("shard ") and ": " in reason:
                reason = reason.split(": ", 1)[1]  # the shard id adds nothing here
            if reason not in causes:
                causes.append(reason)
    return " ".join([lines[0].rstrip(":") + ":" if causes else lines[0], *causes])


class Augflow:
    def __init__(self, root: Path, model: Path, via: str, workers: int) -> None:
        if via not in ("flow", "cli"):
            raise ValueError(f"via must be 'flow' or 'cli', not {via!r}")
        self.root, self.model, self.via, self.workers = root, model, via, workers
        self.requests = root / "requests"
        self.requests.mkdir(parents=True, exist_ok=True)

    @property
    def output(self) -> str:
        return str(self.root / "data")

    def request(
        self,
        dataset: str,
        operation: dict[str, Any],
        *,
        steps: int,
        shard_size: int,
        inputs: Path | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "dataset": dataset,
            "operation": operation,
            "model": {"id": str(self.model)},
            "steps": steps,
            "seed": seed,
            "shard_size": shard_size,
            "output": self.output,
            "compute": {"micro_batch": 16},
            "execution": {"device": "cpu", "workers": self.workers},
            # The benchmark measures what the data is worth, so it must register it: with the
            # effect and set checks on, the gate refuses the img2img versions as copies of their
            # sources (img2img_not_a_copy on every row) — the same finding as the benchmark's:
            # the memorising generator's variants add nothing (docs/usefulness.md).
            "quality": {"effect_checks": False, "set_checks": False},
        }
        if inputs is not None:
            body["inputs"] = str(inputs)
        return body

    def run(self, body: dict[str, Any]) -> str:
        """Run one request to a registered version; returns ``name@version``."""
        if self.via == "cli":
            return self._run_cli(body)
        return self._run_flow(body)

    def _run_flow(self, body: dict[str, Any]) -> str:
        from augflow.flows.augment import augment
        from augflow.schemas import AugflowError, QualityGateError, parse_request

        request = parse_request(body)
        try:
            outcome = augment(request)
        except QualityGateError as exc:
            failed = "; ".join(exc.failed)
            raise AugflowRunFailed(f"{body['dataset']}: quality checks failed: {failed}") from None
        except AugflowError as exc:
            raise AugflowRunFailed(f"{body['dataset']}: {_compact(str(exc))}") from None
        return outcome.ref

    def _run_cli(self, body: dict[str, Any]) -> str:
        path = self.requests / f"{body['dataset']}.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        exe = Path(sys.executable).with_name("augflow")
        proc = subprocess.run([str(exe), "run", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            # the CLI prints its reason to stderr; the last lines are the error, not the progress bar
            why = _compact("\n".join(proc.stderr.strip().splitlines()[-12:]))
            raise AugflowRunFailed(
                f"{body['dataset']}: `augflow run` exited {proc.returncode}: {why}"
            )
        # stdout is "name@version uri"
        return proc.stdout.split()[0]
