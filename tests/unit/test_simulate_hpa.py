"""The HPA model against hand-worked cases from the Kubernetes documentation and controller.

Sources: the "Horizontal Pod Autoscaling" page (algorithm details, configurable scaling behavior) and
``pkg/controller/podautoscaler`` (``horizontal.go``, ``replica_calculator.go``) with
``pkg/apis/autoscaling/v2/defaults.go``. Every expected number is worked out by hand in the comment
beside it.
"""

from __future__ import annotations

import pytest

from adapter.simulate.hpa import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Behavior,
    HorizontalPodAutoscaler,
    PodCpu,
    ScalingPolicy,
    ScalingRules,
    average_value_replicas,
    milli,
    utilization_replicas,
    value_replicas,
    within_tolerance,
)

NO_WINDOW_DOWN = ScalingRules((ScalingPolicy("Percent", 100, 15),), "Max", 0)


def hpa(min_replicas: int = 1, max_replicas: int = 100, up: ScalingRules = DEFAULT_SCALE_UP,
        down: ScalingRules = DEFAULT_SCALE_DOWN) -> HorizontalPodAutoscaler:
    return HorizontalPodAutoscaler(min_replicas, max_replicas, Behavior(up, down))


# -- per-metric proposals: the algorithm and the tolerance band ---------------------------------------------


def test_value_target_doubles_and_halves_as_in_the_documentation() -> None:
    # Docs: current 200m, desired 100m -> 200/100 = 2.0 -> double; current 50m -> 0.5 -> halve.
    assert value_replicas(current=4, ready_pods=4, value_milli=200, target_milli=100) == 8
    assert value_replicas(current=4, ready_pods=4, value_milli=50, target_milli=100) == 2


@pytest.mark.parametrize(("value", "expected"), [
    (1000, 4),   # ratio 1.0
    (1050, 4),   # |1 - 1.05| = 0.05 <= 0.1: within the band, no change
    (950, 4),    # 0.95: within
    (900, 4),    # |1 - 0.9| = 0.09999999999999998 in floats: within
    (1110, 5),   # 1.11 -> ceil(4 * 1.11) = ceil(4.44) = 5
    (800, 4),    # 0.8 -> ceil(3.2) = 4 (outside the band, but the ceiling keeps 4)
    (700, 3),    # 0.7 -> ceil(2.8) = 3
])
def test_tolerance_band(value: int, expected: int) -> None:
    assert value_replicas(current=4, ready_pods=4, value_milli=value, target_milli=1000) == expected


def test_value_target_multiplies_ready_pods_not_the_current_count() -> None:
    # 10 replicas of which 6 are ready, value 2x the target: ceil(6 * 2) = 12, not 20.
    assert value_replicas(current=10, ready_pods=6, value_milli=500, target_milli=250) == 12


def test_within_tolerance_is_the_controllers_float_test() -> None:
    assert within_tolerance(1.1 - 1e-12)
    assert not within_tolerance(1.1000001)
    assert not within_tolerance(1.1)  # |1 - 1.1| = 0.10000000000000009 > 0.1, as in Go


def test_average_value_target_divides_the_total() -> None:
    # 4 pods, total 1000m, 200m a pod: 1000 / (200 * 4) = 1.25 -> ceil(1000 / 200) = 5.
    assert average_value_replicas(status_replicas=4, total_milli=1000, target_per_pod_milli=200) == 5
    # total 820m: 820 / 800 = 1.025, within the band: stays 4.
    assert average_value_replicas(status_replicas=4, total_milli=820, target_per_pod_milli=200) == 4


def test_milli_value_rounds_up_like_quantity() -> None:
    assert milli(0.25) == 250
    assert milli(0.2501) == 251
    assert milli(1.0) == 1000


# -- Resource CPU utilisation ------------------------------------------------------------------------------


def cpu(usage: int | None, counted: bool = True, request: int = 1000) -> PodCpu:
    return PodCpu(request, usage, counted)


def test_cpu_utilization_is_ready_pods_times_the_ratio() -> None:
    # 4 pods at 900m of 1000m: 90 % against 60 % -> 1.5 -> ceil(1.5 * 4) = 6.
    assert utilization_replicas(4, [cpu(900)] * 4, target_percent=60) == 6
    # 66 % against 60 %: 1.1 -> |1 - 1.1| > 0.1 in floats -> ceil(4.4) = 5; 65 %: within -> 4.
    assert utilization_replicas(4, [cpu(660)] * 4, target_percent=60) == 5
    assert utilization_replicas(4, [cpu(650)] * 4, target_percent=60) == 4


def test_unready_pods_count_as_idle_on_a_scale_up() -> None:
    # 3 ready pods at 70 % and 1 unready (still starting), target 50 %: 1.4 on the ready pods alone
    # would ask for ceil(1.4 * 3) = 5. On a scale-up the unready pod counts as 0 %: 2100m / 4000m =
    # 52 % -> 1.04, within the tolerance: no change.
    pods = [cpu(700)] * 3 + [cpu(700, counted=False)]
    assert utilization_replicas(4, pods, target_percent=50) == 4
    # With more load the recount still scales: 3 at 100 %: 3000 / 4000 = 75 % -> 1.5 -> ceil(6.0) = 6.
    pods = [cpu(1000)] * 3 + [cpu(1000, counted=False)]
    assert utilization_replicas(4, pods, target_percent=50) == 6


def test_missing_pods_count_as_full_on_a_scale_down() -> None:
    # 4 pods with samples at 10 %, 1 without, target 50 %: ratio 0.2. The missing pod counts as
    # max(100, 50) = 100 % of its request: (400 + 1000) / 5000 = 28 % -> 0.56 -> ceil(0.56 * 5) = 3,
    # where ignoring it would give ceil(0.2 * 4) = 1.
    pods = [cpu(100)] * 4 + [cpu(None)]
    assert utilization_replicas(5, pods, target_percent=50) == 3


def test_a_recount_that_changes_direction_keeps_the_current_count() -> None:
    # 2 ready at 60 % (target 50 %: 1.2, a scale-up) and 2 missing (counted as 0 % on a scale-up):
    # 120 / 400 = 30 % -> 0.6, the other direction: no change.
    pods = [cpu(600)] * 2 + [cpu(None)] * 2
    assert utilization_replicas(4, pods, target_percent=50) == 4


def test_no_samples_is_a_missing_metric() -> None:
    assert utilization_replicas(3, [cpu(None)] * 3, target_percent=60) is None
    assert utilization_replicas(3, [cpu(500, counted=False)] * 3, target_percent=60) is None


# -- stabilisation -----------------------------------------------------------------------------------------


def test_scale_down_takes_the_highest_recommendation_in_the_window() -> None:
    # Default scale-down window 300 s. Starting at 10, recommendations 6, 8, 5, ... every 15 s: the
    # highest within 300 s (the initial 10 included) holds the count at 10 ...
    h = hpa()
    proposals = [10, 6, 8, 5] + [5] * 16  # t = 0 .. 285
    for i, proposal in enumerate(proposals):
        assert h.reconcile(15 * i, 10, [proposal]) == 10, f"t={15 * i}"
    assert h.reason == "ScaleDownStabilized"
    # ... until t = 300, when the recommendations of t = 0 have left the window: the highest left is 8
    # (t = 30), then 5 once that one leaves too (t = 330).
    assert h.reconcile(300, 10, [5]) == 8
    assert h.reconcile(315, 8, [5]) == 8
    assert h.reconcile(330, 8, [5]) == 5


def test_scale_up_window_takes_the_lowest_recommendation() -> None:
    # scaleUp window 60 s (and a rate limit too wide to matter): the lowest recommendation within the
    # last 60 s, the current one included, caps a scale-up.
    h = hpa(up=ScalingRules((ScalingPolicy("Percent", 1000, 15),), "Max", 60))
    assert h.reconcile(0, 4, [4]) == 4
    assert h.reconcile(15, 4, [12]) == 4  # 4 (t = 0) is within the window
    assert h.reason == "ScaleUpStabilized"
    assert h.reconcile(30, 4, [9]) == 4
    assert h.reconcile(45, 4, [10]) == 4
    # At t = 60 the recommendations of t = 0 are no longer after the cutoff: min(12, 9, 10, 11) = 9.
    assert h.reconcile(60, 4, [11]) == 9
    # At t = 90 those of t <= 30 have left: min(10, 11, 13) = 10.
    assert h.reconcile(75, 9, [13]) == 9
    assert h.reconcile(90, 9, [13]) == 10


def test_default_scale_down_waits_300_s_then_goes_all_the_way() -> None:
    h = hpa(min_replicas=1)
    for t in range(0, 300, 15):
        assert h.reconcile(t, 10, [1]) == 10
    assert h.reconcile(300, 10, [1]) == 1  # 100 % per 15 s allows all of it


# -- scaling policies --------------------------------------------------------------------------------------


def test_default_scale_up_is_max_of_4_pods_and_100_percent_per_15_s() -> None:
    h = hpa(max_replicas=1000)
    current, seen = 1, []
    for t in range(0, 75, 15):
        current = h.reconcile(t, current, [500])
        seen.append(current)
    # 1 -> max(1 + 4, 2) = 5 -> max(9, 10) = 10 -> 20 -> 40 -> 80.
    assert seen == [5, 10, 20, 40, 80]


def test_scale_up_limit_counts_the_changes_within_the_period() -> None:
    # Percent 100 per 60 s: from 2, at most 4 within any 60 s.
    h = hpa(max_replicas=100, up=ScalingRules((ScalingPolicy("Percent", 100, 60),), "Max", 0))
    assert h.reconcile(0, 2, [50]) == 4
    assert h.reason == "ScaleUpLimit"
    assert h.reconcile(15, 4, [50]) == 4  # period start = 4 - 2 added = 2 -> limit 4
    assert h.reconcile(45, 4, [50]) == 4
    assert h.reconcile(60, 4, [50]) == 8  # the event at t = 0 is no longer after the cutoff


def test_pods_and_percent_policies_documentation_example() -> None:
    # Docs: scaleDown policies Pods 4 / 60 s and Percent 10 / 60 s, selectPolicy Max (the most change):
    # with 80 replicas 10 % (8 pods) beats 4 pods: 80 -> 72; a minute later 72 * 0.9 = 64.8 -> 64.
    down = ScalingRules((ScalingPolicy("Pods", 4, 60), ScalingPolicy("Percent", 10, 60)), "Max", 0)
    h = hpa(down=down)
    assert h.reconcile(0, 80, [10]) == 72
    assert h.reason == "ScaleDownLimit"
    assert h.reconcile(15, 72, [10]) == 72  # the period's start is still 80
    assert h.reconcile(60, 72, [10]) == 64
    # Below 40 replicas 4 pods is the larger change: 30 -> 26.
    assert hpa(down=down).reconcile(0, 30, [10]) == 26


def test_select_policy_min_takes_the_smallest_change() -> None:
    down = ScalingRules((ScalingPolicy("Pods", 4, 60), ScalingPolicy("Percent", 10, 60)), "Min", 0)
    assert hpa(down=down).reconcile(0, 80, [10]) == 76  # 4 pods < 8 pods
    up = ScalingRules((ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)), "Min", 0)
    assert hpa(up=up).reconcile(0, 10, [50]) == 14  # +4 < +10


def test_select_policy_disabled_never_scales_that_way() -> None:
    down = ScalingRules((ScalingPolicy("Percent", 100, 15),), "Disabled", 0)
    h = hpa(down=down)
    assert h.reconcile(0, 10, [2]) == 10
    assert h.reconcile(15, 10, [2]) == 10
    assert h.reconcile(30, 10, [20]) == 20  # scaling up is still allowed
    up = ScalingRules((ScalingPolicy("Percent", 100, 15),), "Disabled", 0)
    assert hpa(up=up).reconcile(0, 10, [20]) == 10


def test_percent_scale_up_uses_the_controllers_float_arithmetic() -> None:
    # ceil(50 * (1 + 10 / 100)): 50 * 1.1 is 55.00000000000001 in binary floating point, so the
    # controller (Go float64, the same IEEE arithmetic) allows 56, not 55; from 10 it allows 11.
    up = ScalingRules((ScalingPolicy("Percent", 10, 15),), "Max", 0)
    assert hpa(up=up).reconcile(0, 50, [80]) == 56
    assert hpa(up=up).reconcile(0, 10, [50]) == 11


# -- min/max clamping and missing metrics ------------------------------------------------------------------


def test_max_replicas_clamps_a_scale_up() -> None:
    h = hpa(max_replicas=50)
    assert h.reconcile(0, 40, [200]) == 50  # the rate allows 80, maxReplicas 50
    assert h.reason == "TooManyReplicas"


def test_min_replicas_clamps_a_scale_down() -> None:
    h = hpa(min_replicas=3, down=NO_WINDOW_DOWN)
    assert h.reconcile(0, 10, [0]) == 3
    assert h.reason == "TooFewReplicas"


def test_out_of_range_counts_are_brought_back_without_metrics() -> None:
    assert hpa(max_replicas=50).reconcile(0, 60, [None]) == 50
    assert hpa(min_replicas=3).reconcile(0, 1, [None]) == 3


def test_a_missing_metric_never_scales_down() -> None:
    h = hpa(down=NO_WINDOW_DOWN)
    # CPU says 3, the latency metric is missing: the controller would scale down, so it holds.
    assert h.reconcile(0, 5, [3, None]) == 5
    assert h.reason == "FailedGetMetrics"
    # ... but a scale-up on the metric that works goes ahead.
    assert h.reconcile(15, 5, [8, None]) == 8


def test_all_metrics_missing_changes_nothing() -> None:
    h = hpa(down=NO_WINDOW_DOWN)
    assert h.reconcile(0, 5, [None]) == 5
    assert h.reconcile(15, 5, [None, None]) == 5


def test_the_largest_proposal_wins() -> None:
    assert hpa().reconcile(0, 5, [3, 9, 6]) == 9


def test_range_is_validated() -> None:
    with pytest.raises(ValueError, match="minReplicas"):
        HorizontalPodAutoscaler(5, 2)
