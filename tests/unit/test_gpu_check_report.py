"""The GPU check's verdict: every launch ran and moved the latent as the first launch did."""
from __future__ import annotations

import torch

from bench.gpu_check import agreement, report


def row(name: str, delta: torch.Tensor) -> dict:
    unguided = torch.zeros(1, 4, 8, 8)
    return {"launch": name, "unguided": unguided, "guided": unguided + delta, "unguided_s_per_step": 1.0,
            "guided_s_per_step": 2.0, "unguided_peak": 100, "guided_peak": 150}


def test_launches_that_guide_alike_agree(capsys):
    delta = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    rows = [row("default", delta), row("lowvram", delta * 1.5 + 1e-4)]
    assert agreement(rows[1], rows[0]) > 0.999
    assert report(rows)
    assert "lowvram" in capsys.readouterr().out


def test_a_launch_that_loses_the_gradient_or_fails_is_not_met(capsys):
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(1, 4, 8, 8, generator=generator)
    other = torch.randn(1, 4, 8, 8, generator=generator)
    assert not report([row("default", delta), row("sage_attention", other)])
    assert not report([row("default", delta), {"launch": "flash_attention", "error": "no backward"}])
    out = capsys.readouterr().out
    assert "NOT met" in out and "flash_attention" in out and "failed: no backward" in out
