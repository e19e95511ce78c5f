"""The step guard's two modes behind one interface, the run control, and the loss window."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from dreg_dist.train.control import NonFiniteLossError, RunControl
from dreg_dist.train.state import TrainState
from dreg_dist.train.step_guard import (STEP_FLAG_LAG, DeviceGuard, HostGuard, StepFlags, StepGuard, make_guard,
                                        nonfinite_flag, skipped)
from dreg_dist.train.window import LossWindow

CPU = torch.device("cpu")


def _parts() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _run(make: Callable[[nn.Module, torch.optim.Optimizer], StepGuard], bad_steps: set[int], steps: int = 6
         ) -> tuple[dict[str, torch.Tensor], list[list[StepFlags]]]:
    """``steps`` steps of a tiny model, the loss poisoned at ``bad_steps``; the final state and
    what ``settled()`` handed over after each step."""
    model, opt = _parts()
    guard = make(model, opt)
    seen = []
    for step in range(steps):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        guard.begin_step()
        loss = model(x).square().mean()
        if step in bad_steps:
            loss = loss * float("nan")
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flags = guard.exchange(step, nonfinite_flag(loss, grads, check_grads=True), preempted=step == 4)
        seen.append(guard.settled(step))
        guard.apply(flags, opt.step)
        opt.zero_grad(set_to_none=True)
    seen.append(guard.settled(steps, wait=True))
    return {k: v.clone() for k, v in model.state_dict().items()}, seen


def test_both_modes_leave_the_same_state_and_report_the_same_flags() -> None:
    host_state, host_seen = _run(lambda m, o: HostGuard(CPU, m, restore_buffers=True), {2})
    dev_state, dev_seen = _run(lambda m, o: DeviceGuard(CPU, o, m), {2})
    clean_state, _ = _run(lambda m, o: HostGuard(CPU, m, restore_buffers=True), set())
    assert host_state.keys() == dev_state.keys()
    assert all(torch.equal(host_state[k], dev_state[k]) for k in host_state)
    assert not torch.equal(host_state["0.weight"], clean_state["0.weight"])  # the skip did something
    host_flags = [f for batch in host_seen for f in batch]
    dev_flags = [f for batch in dev_seen for f in batch]
    assert host_flags == dev_flags == [StepFlags(s, s == 2, s == 4) for s in range(6)]
    # host: each step's flags right after its exchange; device: STEP_FLAG_LAG steps later.
    assert [[f.step for f in b] for b in host_seen] == [[0], [1], [2], [3], [4], [5], []]
    lagged = [[f.step for f in b] for b in dev_seen]
    assert lagged[: STEP_FLAG_LAG + 1] == [[]] * (STEP_FLAG_LAG + 1) and lagged[STEP_FLAG_LAG + 1] == [0]
    assert sum(lagged, []) == list(range(6))


def test_a_skipped_step_leaves_the_state_as_before() -> None:
    for make in (lambda m, o: HostGuard(CPU, m, restore_buffers=True), lambda m, o: DeviceGuard(CPU, o, m)):
        before, _ = _run(make, set(), steps=2)
        after, _ = _run(make, {2}, steps=3)
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_make_guard_picks_the_mode() -> None:
    model, opt = _parts()
    assert make_guard("auto", CPU, opt, model, restore_buffers=False).mode == "host"
    assert make_guard("device", CPU, opt, model, restore_buffers=False).mode == "device"
    with pytest.raises(ValueError, match="step_guard"):
        make_guard("sometimes", CPU, opt, model, restore_buffers=False)


def _control(policy: str, stop_after: int | None = None) -> tuple[RunControl, TrainState, list[str]]:
    said: list[str] = []
    state = TrainState()
    return RunControl(state, steps_per_epoch=4, on_nonfinite=policy, stop_after_steps=stop_after,
                      say=said.append), state, said


def test_run_control_counts_or_raises_and_keeps_a_signal() -> None:
    control, state, said = _control("skip")
    control.observe([StepFlags(5, True, False), StepFlags(6, False, True), StepFlags(7, False, False)])
    assert state.skipped_steps == 1 and said == ["warning: non-finite loss or gradient at step 6 (epoch 2); step skipped"]
    assert control.preempted  # a later step without the flag does not clear it
    assert control.stop_reason() == "signal on another rank"
    stopping, _, _ = _control("stop")
    with pytest.raises(NonFiniteLossError, match="not finite at step 6 \\(epoch 2\\)"):
        stopping.observe([StepFlags(5, True, False)])


def test_stop_after_steps_goes_before_a_signal() -> None:
    control, state, _ = _control("stop", stop_after=3)
    assert control.stop_reason() is None
    control.observe([StepFlags(2, False, True)])
    state.global_step = 3
    assert control.stop_reason() == "stop_after_steps"


def test_the_loss_window_counts_only_applied_steps() -> None:
    window = LossWindow(CPU)
    assert window.means(world_size=1, global_batch_size=8) is None
    window.add({"loss": torch.tensor(float("nan"))}, skipped(torch.tensor([1.0, 0.0])))
    assert window.means(world_size=1, global_batch_size=8) is None  # only a skipped step
    window.add({"loss": torch.tensor(2.0)}, skipped(torch.tensor([0.0, 0.0])))
    window.add({"loss": torch.tensor(4.0)}, skipped(torch.tensor([0.0, 1.0])))
    means = window.means(world_size=1, global_batch_size=8)
    assert means is not None and means[0] == {"loss": 3.0} and means[1] > 0
    window.reset()
    assert window.means(world_size=1, global_batch_size=8) is None
    assert window.mean_throughput() == means[1]
