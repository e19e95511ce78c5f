"""A benchmark's measured cost of one optimizer step per run (``bench/method_cost.py``), read
for the report's compute columns: the runs' own wall-clock is shared-machine time, this is not."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

from dreg_dist.records import BASELINE
from dreg_dist.report.runs import Run, iter_finite


@dataclass
class StepCosts:
    """A benchmark's measured cost of one optimizer step per run, over the baseline's at the
    same batch setup (``bench/method_cost.py``): ``{"machine": {...}, "costs": [{"label",
    "runs": ["<sweep>/<run>", ...], "reference", "ms_per_step", "ratio"}, ...]}``."""

    ratios: dict[str, float]
    """Run id (:attr:`Run.run_id`) -> ratio."""
    machine: dict[str, Any] = field(default_factory=dict)

    def apply(self, runs: Iterable[Run]) -> int:
        """Set each listed run's ``step_cost``; the number of the file's run ids that match no run."""
        seen = set()
        for run in runs:
            run.step_cost = self.ratios.get(run.run_id)
            seen.add(run.run_id)
        return len(set(self.ratios) - seen)


def read_step_costs(path: Union[str, Path]) -> StepCosts:
    """A step-cost file (see :class:`StepCosts`) whose ratios are against the report's baseline
    method; ValueError, one line, when it is not one."""
    reference = BASELINE
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"step-cost file '{path}' cannot be read as JSON: {err}") from None
    costs = data.get("costs") if isinstance(data, dict) else None
    if not isinstance(costs, list):
        raise ValueError(f"step-cost file '{path}' has no 'costs' list")
    ratios: dict[str, float] = {}
    for i, entry in enumerate(costs):
        ratio = (iter_finite([entry.get("ratio")]) or [None])[0] if isinstance(entry, dict) else None
        ids = entry.get("runs") if isinstance(entry, dict) else None
        if ratio is None or ratio <= 0 or not isinstance(ids, list) or not all(isinstance(r, str) for r in ids):
            raise ValueError(f"step-cost file '{path}': costs[{i}] needs 'runs' (a list of '<sweep>/<run>') "
                             "and a positive 'ratio'")
        # A ratio against anything else would be read as one against the report's baseline.
        if entry.get("reference", reference) != reference:
            raise ValueError(f"step-cost file '{path}': costs[{i}] is against '{entry['reference']}', "
                             f"the report compares against '{reference}'")
        for run_id in ids:
            if ratios.get(run_id, ratio) != ratio:
                raise ValueError(f"step-cost file '{path}': run '{run_id}' has two different ratios")
            ratios[run_id] = ratio
    machine = data.get("machine")
    return StepCosts(ratios=ratios, machine=machine if isinstance(machine, dict) else {})
