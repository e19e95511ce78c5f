"""The node agent's exit on a signal, whatever torch's code was doing when the signal came (the
real signal path, on real processes: tests/distributed/test_cluster_ops.py)."""

from __future__ import annotations

import signal

import pytest

from dreg_dist.distributed import agent


def _torchrun_raising(make: type[BaseException]):
    from torch.distributed.elastic.multiprocessing.api import SignalException

    def fake(argv: object) -> None:
        try:
            raise SignalException("Process 1 got signal: 10", sigval=signal.SIGUSR1)
        except SignalException:
            # torch's metrics wrapper, signalled before it read its clock, fails in its `finally`
            raise make("cannot access local variable 'start' where it is not associated with a value")
    return fake


def test_a_signal_that_lands_inside_torchs_metrics_wrapper_still_ends_with_128_plus_n(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch.distributed.run

    monkeypatch.setattr(torch.distributed.run, "main", _torchrun_raising(UnboundLocalError))
    assert agent.main([]) == 128 + signal.SIGUSR1
    assert "stopped by SIGUSR1" in capsys.readouterr().err


def test_an_error_with_no_signal_behind_it_is_left_to_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.run

    def failing(argv: object) -> None:
        raise RuntimeError("rendezvous timed out")

    monkeypatch.setattr(torch.distributed.run, "main", failing)
    with pytest.raises(RuntimeError, match="rendezvous timed out"):
        agent.main([])
