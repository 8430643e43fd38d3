import math

import numpy as np
import pytest

from tfface.train.schedules import FaceLRSchedule, build_lr_schedule


def lr_at(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_step_schedule_with_warmup_matches_reference():
    sched = build_lr_schedule("step", 0.1, steps_per_epoch=10, epochs=6, warmup_epochs=1, step_epochs=(3, 5),
                              decay=0.1)
    steps = np.arange(60)
    expected = np.where(steps < 10, 0.1 * steps / 10,
                        np.where(steps < 30, 0.1, np.where(steps < 50, 0.01, 0.001)))
    np.testing.assert_allclose(lr_at(sched, steps), expected, rtol=1e-6, atol=1e-9)


def test_cosine_schedule_endpoints_and_midpoint():
    sched = build_lr_schedule("cosine", 0.4, steps_per_epoch=5, epochs=4, warmup_epochs=0)
    total = 20
    steps = np.arange(total + 3)
    expected = 0.5 * 0.4 * (1 + np.cos(math.pi * np.clip(steps / total, 0, 1)))
    np.testing.assert_allclose(lr_at(sched, steps), expected, rtol=1e-5, atol=1e-7)
    assert float(sched(10)) == pytest.approx(0.2, rel=1e-5)


def test_constant_and_serialisation_round_trip():
    sched = FaceLRSchedule(0.05, total_steps=100, kind="constant", warmup_steps=4)
    again = FaceLRSchedule.from_config(sched.get_config())
    np.testing.assert_allclose(lr_at(again, range(8)), [0, 0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05, 0.05],
                               rtol=1e-6)


def test_polynomial_schedule_with_warmup_matches_reference():
    # arcface_torch's PolyScheduler: linear warm-up, then base_lr (1 - p)^2 down to 0.
    sched = build_lr_schedule("polynomial", 0.1, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    steps = np.arange(55)
    progress = np.clip((steps - 10) / 40, 0, 1)
    expected = np.where(steps < 10, 0.1 * steps / 10, 0.1 * (1 - progress) ** 2)
    np.testing.assert_allclose(lr_at(sched, steps), expected, rtol=1e-5, atol=1e-8)
    assert float(sched(50)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("power,end_lr", [(1.0, 0.0), (0.9, 1e-4), (3.0, 0.01)])
def test_polynomial_power_and_end_lr(power, end_lr):
    sched = build_lr_schedule("polynomial", 0.4, steps_per_epoch=4, epochs=5, end_lr=end_lr, power=power)
    steps = np.arange(25)
    expected = end_lr + (0.4 - end_lr) * (1 - np.clip(steps / 20, 0, 1)) ** power
    np.testing.assert_allclose(lr_at(sched, steps), expected, rtol=1e-5, atol=1e-8)
    again = FaceLRSchedule.from_config(sched.get_config())
    np.testing.assert_allclose(lr_at(again, steps), expected, rtol=1e-5, atol=1e-8)


def test_cosine_with_warmup_and_end_lr():
    sched = build_lr_schedule("cosine", 0.2, steps_per_epoch=2, epochs=10, warmup_epochs=2, end_lr=0.002)
    steps = np.arange(22)
    progress = np.clip((steps - 4) / 16, 0, 1)
    expected = np.where(steps < 4, 0.2 * steps / 4, 0.002 + 0.5 * (0.2 - 0.002) * (1 + np.cos(math.pi * progress)))
    np.testing.assert_allclose(lr_at(sched, steps), expected, rtol=1e-5, atol=1e-8)


def test_bad_power_is_rejected():
    with pytest.raises(ValueError, match="power"):
        FaceLRSchedule(0.1, 10, kind="polynomial", power=0)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="schedule kind"):
        FaceLRSchedule(0.1, 10, kind="linear")
