import pytest

from montessori.schedule import WsdSteps, optimizer_steps, wsd_steps


@pytest.mark.parametrize(
    ("n", "batch", "accumulation", "epochs", "expected"),
    [(4, 2, 1, 1, 2), (5, 2, 1, 1, 3), (5, 2, 2, 1, 2), (1, 4, 8, 1, 1), (10, 2, 1, 2, 10), (10, 2, 1, 0.5, 3)],
)
def test_optimizer_steps_count_short_batches_and_accumulations(n, batch, accumulation, epochs, expected):
    assert optimizer_steps(n, batch, accumulation, epochs) == expected


def test_wsd_steps_split_by_the_ratios():
    assert wsd_steps(10, 0.1, 0.5, 0.4) == WsdSteps(warmup=1, stable=5, decay=4)
    assert wsd_steps(100, 0.1, 0.5, 0.4) == WsdSteps(warmup=10, stable=50, decay=40)
    assert wsd_steps(3, 0.1, 0.5, 0.4) == WsdSteps(warmup=0, stable=2, decay=1)
    assert wsd_steps(1, 0.1, 0.5, 0.4) == WsdSteps(warmup=0, stable=1, decay=0)


@pytest.mark.parametrize("total", [1, 2, 3, 7, 13, 250, 1001])
def test_wsd_steps_cover_every_step_when_ratios_sum_to_one(total):
    plan = wsd_steps(total, 0.1, 0.5, 0.4)
    assert plan.total == total
    assert min(plan.warmup, plan.stable, plan.decay) >= 0


def test_wsd_steps_leave_a_tail_when_ratios_sum_below_one():
    assert wsd_steps(10, 0.2, 0.3, 0.2) == WsdSteps(warmup=2, stable=3, decay=2)


def test_wsd_ratios_above_one_name_the_config_key():
    with pytest.raises(ValueError, match="'dpo.schedule'.*exceeds 1"):
        wsd_steps(10, 0.5, 0.5, 0.4, key="dpo.schedule")
