"""`train.progress`: the validation curve of a run and its last-quarter gain."""

from __future__ import annotations

import numpy as np

from ardiff.train.progress import last_quarter_gain, validation_curve
from ardiff.train.records import append_metrics


def test_last_quarter_gain_reads_convergence_off_the_validation_curve():
  steps = np.arange(100.0, 1601.0, 100.0)  # 100..1600: three quarters at 1200
  assert last_quarter_gain(steps, np.full(16, 1.3)) == 0.0  # flat: converged
  falling = 2.0 - steps / 1600  # 1.25 at 1200, 1.0 at 1600: 20% of the loss at 3/4
  assert abs(last_quarter_gain(steps, falling) - 0.2) < 1e-12
  rising = 1.0 + (steps > 1200) * 0.1  # overfitting after 3/4: the best is at 3/4, gain 0
  assert last_quarter_gain(steps, rising) == 0.0
  assert np.isnan(last_quarter_gain(steps[:1], falling[:1]))


def test_validation_curve_keeps_only_the_rows_with_a_validation_loss(tmp_path):
  assert [len(a) for a in validation_curve(str(tmp_path))] == [0, 0]  # no metrics file yet
  for step, row in ((10, {"loss": 3.0}), (20, {"val/loss": 2.5}), (30, {"loss": 2.0}),
                    (40, {"val/loss": 2.25, "loss": 1.5})):
    append_metrics(str(tmp_path), {"step": step, **row})
  steps, losses = validation_curve(str(tmp_path))
  np.testing.assert_array_equal(steps, [20.0, 40.0])
  np.testing.assert_array_equal(losses, [2.5, 2.25])
