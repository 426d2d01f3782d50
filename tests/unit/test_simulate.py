"""The simulator apart from the HPA model: traffic files, the workload's queues, the signal path through
the adapter's own store and policy, determinism, the goals, the ``simulate`` config section and the
report. Scenarios are shortened here (``Traffic.truncated``) so each run takes well under a second."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from adapter.config import Settings
from adapter.errors import ConfigError
from adapter.policy import PolicySettings
from adapter.policy_config import PolicyConfig
from adapter.simulate import SCENARIO_NAMES
from adapter.simulate.engine import (
    PolicyResult,
    SimulationResult,
    TimelinePoint,
    run_policy,
    simulate,
    weighted_quantile,
)
from adapter.simulate.goals import goals, timeouts_avoided
from adapter.simulate.hpa import DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP
from adapter.simulate.output import document, dumps, timeline_rows
from adapter.simulate.report import markdown, why_not_met
from adapter.simulate.settings import HpaSettings, SimulationConfig, hpa_from_mapping, load_simulation_config
from adapter.simulate.traffic import SCENARIOS, Traffic, TrafficError, load_traffic, parse_traffic, scenario
from adapter.simulate.workload import DEFAULT_WORKLOAD, Fleet, WorkloadModel, erlang_c

CONFIG = SimulationConfig()


def burst_head(seconds: float = 780) -> Traffic:
    """The burst scenario up to 3 minutes after its step (at 600 s)."""
    return scenario("burst", 1).truncated(seconds)


# -- traffic files -----------------------------------------------------------------------------------------


def test_csv_with_and_without_extra_latency() -> None:
    t = parse_traffic("timestamp,rps\n0,100\n60,200\n")
    assert t.duration == 60
    assert t.rps_at(np.array([30.0]))[0] == pytest.approx(150)
    assert t.extra_at(np.array([30.0]))[0] == 0
    t = parse_traffic("# comment\n\nrps,extra_latency_seconds,timestamp\n100,0,0\n100,0.3,30\n")
    assert t.extra_at(np.array([15.0]))[0] == pytest.approx(0.15)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("", 1, "empty file"),
    ("timestamp\n0\n", 1, "missing column 'rps'"),
    ("time,rps\n0,1\n", 1, "unknown column 'time'"),
    ("timestamp,rps\n0,100\n15,abc\n", 3, "rps 'abc' is not a number"),
    ("timestamp,rps\n0,100\n15,-5\n", 3, "finite number >= 0"),
    ("timestamp,rps\n0,100\n15,nan\n", 3, "finite number >= 0"),
    ("timestamp,rps\n0,100\n30,100\n20,100\n", 4, "ascending"),
    ("timestamp,rps\n0,100\n30,100\n30,100\n", 4, "ascending"),
    ("timestamp,rps\n0,100\n30,100,1\n", 3, "expected 2 fields"),
    ("timestamp,rps,extra_latency_seconds\n0,100,0\n30,100,-1\n", 3, "extra_latency_seconds"),
    ("timestamp,rps\n0,100\n10,100\n", 3, "at least 15 s"),
    ("timestamp,rps\n0,100\n9999999,100\n", 3, "7 days"),
])
def test_bad_csv_names_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(TrafficError) as info:
        parse_traffic(text, "load.csv")
    assert info.value.line == line
    assert words in info.value.problem
    assert str(info.value).startswith(f"load.csv:{line}: ")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(TrafficError, match="cannot be read"):
        load_traffic(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"timestamp,rps\n0,1\n\xff\xfe,2\n")
    with pytest.raises(TrafficError) as info:
        load_traffic(bad)
    assert info.value.line == 3


def test_change_at_is_where_the_load_departs() -> None:
    assert scenario("burst", 1).change_at() == 600
    assert scenario("dependency-slowdown", 1).change_at() == 600  # extra latency counts
    assert parse_traffic("timestamp,rps\n0,100\n60,100\n").change_at() is None


def test_scenarios_are_listed_and_deterministic() -> None:
    assert tuple(SCENARIOS) == SCENARIO_NAMES
    a, b = scenario("diurnal", 3), scenario("diurnal", 3)
    assert np.array_equal(a.rps, b.rps)
    assert not np.array_equal(a.rps, scenario("diurnal", 4).rps)
    head = scenario("burst", 1)
    assert head.rps_at(np.array([605.0]))[0] == pytest.approx(1200 + 8600 / 2)
    with pytest.raises(ValueError, match="unknown scenario"):
        scenario("nope", 1)


def test_truncated_keeps_the_value_at_the_cut() -> None:
    t = scenario("burst", 1).truncated(605)
    assert t.duration == 605
    assert t.rps[-1] == pytest.approx(5500)


# -- the workload ------------------------------------------------------------------------------------------


def test_erlang_c() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # M/M/2 at rho 0.5: 2 rho^2 / (1 + rho)


def test_backlog_builds_under_overload_and_drains_later() -> None:
    model = WorkloadModel(workers=2, service_seconds=0.01, cpu_seconds_per_request=0.005)  # 200 req/s
    fleet = Fleet(model, 1, startup_seconds=30)
    rng = np.random.default_rng(1)
    fleet.step(0, 1.0, 400, 0.0, 2.0, rng)
    assert fleet.backlog[0] == pytest.approx(200)  # 400 arrived, 200 served
    slow = fleet.step(1, 1.0, 100, 0.0, 2.0, rng)
    assert fleet.backlog[0] == pytest.approx(100)  # drains at 200 - 100 = 100/s
    assert slow.latency.max() > 0.4  # requests wait behind the backlog: about 100 / 200 s
    fleet.step(2, 1.0, 100, 0.0, 2.0, rng)
    assert fleet.backlog[0] == pytest.approx(0)
    calm = fleet.step(3, 1.0, 100, 0.0, 2.0, rng)
    assert calm.latency.max() < slow.latency.max()


def test_overload_produces_timeouts_and_caps_the_queue() -> None:
    fleet = Fleet(DEFAULT_WORKLOAD, 1, startup_seconds=30)  # 200 req/s
    rng = np.random.default_rng(2)
    out = None
    for t in range(10):
        out = fleet.step(float(t), 1.0, 2000, 0.0, 2.0, rng)
    assert out is not None
    assert fleet.backlog[0] == pytest.approx(200 * 2.0)  # capacity x timeout: the rest gave up
    assert out.timed_out.mean() > 0.9
    assert out.latency.max() == 2.0  # recorded at the timeout
    assert out.weight.sum() == pytest.approx(2000)  # samples stand for the true request count
    assert out.latency.shape[0] == 200


def test_cpu_usage_and_metrics_server_scrape() -> None:
    fleet = Fleet(DEFAULT_WORKLOAD, 2, startup_seconds=30)
    rng = np.random.default_rng(3)
    for t in range(15):
        fleet.step(float(t), 1.0, 240, 0.0, 2.0, rng)
    fleet.scrape(15)
    # 120 req/s a pod x 5 ms = 0.6 cores, plus 0.02 idle.
    assert fleet.metric_usage == pytest.approx([0.62, 0.62])
    fleet.scale_to(3, 15)
    assert not fleet.ready(20)[2] and fleet.ready(45)[2]
    assert np.isnan(fleet.metric_usage[2])
    for t in range(15, 30):
        fleet.step(float(t), 1.0, 240, 0.0, 2.0, rng)
    fleet.scrape(30)
    assert np.isnan(fleet.metric_usage[2])  # no window yet: the first scrape only starts one
    for t in range(30, 45):
        fleet.step(float(t), 1.0, 240, 0.0, 2.0, rng)
    fleet.scrape(45)
    assert fleet.metric_usage[2] == pytest.approx(0.02)  # idle while starting
    fleet.scale_to(1, 45)
    assert fleet.size == 1


def test_new_pods_take_no_traffic_until_ready() -> None:
    fleet = Fleet(DEFAULT_WORKLOAD, 1, startup_seconds=30)
    fleet.scale_to(2, 0)
    rng = np.random.default_rng(4)
    for t in range(5):
        fleet.step(float(t), 1.0, 300, 0.0, 2.0, rng)
    assert fleet.backlog[1] == 0 and fleet.backlog[0] > 0


# -- the run -----------------------------------------------------------------------------------------------


def test_weighted_quantile() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert weighted_quantile(values, np.ones(4), 0.5) == 2.0
    assert weighted_quantile(values, np.array([1.0, 1.0, 1.0, 97.0]), 0.03) == 3.0
    assert weighted_quantile(values, np.array([1.0, 1.0, 1.0, 97.0]), 0.05) == 4.0
    assert weighted_quantile(np.zeros(0), np.zeros(0), 0.95) is None


def test_same_seed_same_result_other_seed_other_result() -> None:
    traffic = burst_head(700)
    a = run_policy(traffic, CONFIG, "dual", seed=5)
    b = run_policy(traffic, CONFIG, "dual", seed=5)
    c = run_policy(traffic, CONFIG, "dual", seed=6)
    assert a == b
    assert a.timeline != c.timeline


def test_timeline_has_one_point_per_sync() -> None:
    result = run_policy(burst_head(300), CONFIG, "cpu", seed=1)
    assert [p.t for p in result.timeline] == list(range(0, 301, 15))
    assert result.timeline[0].p95_seconds is None
    assert all(p.p95_seconds is not None for p in result.timeline[1:])
    assert result.replica_hours == pytest.approx(10 * 300 / 3600)  # 10 pods, no change
    assert result.scale_events == 0 and result.first_scale_up_seconds is None


def test_latency_reaches_the_hpa_through_the_adapter() -> None:
    """The latency HPA reads the served p95 (window lag included) and dual the real policy's reason."""
    result = simulate(burst_head(), CONFIG, seed=1)
    lat, dual, cpu = result.policies["latency"], result.policies["dual"], result.policies["cpu"]
    steady = [p for p in lat.timeline if 60 <= p.t <= 600]
    assert all(0.15 < (p.metric or 0) < 0.25 for p in steady)  # the served p95 in steady state
    at = {p.t: p for p in dual.timeline}
    assert at[600].reason == "cpu"  # steady at the CPU target (p95 / target ~ 0.8 < CPU ~ 1.0)
    assert at[615].reason == "latency" and (at[615].metric or 0) > 2  # the burst shows within 15 s
    assert dual.first_scale_up_seconds == 15
    assert at[615].replicas == 20  # 10 ready x ratio > 2, limited to 100 % per 15 s
    # The true p95 saturates at the 2 s timeout while 10 pods face 9,800 requests/s.
    assert max(p.p95_seconds or 0 for p in cpu.timeline) == pytest.approx(2.0)
    assert cpu.timeouts > dual.timeouts > 0


def test_dependency_slowdown_is_recognised_once_cpu_is_below_the_floor() -> None:
    result = simulate(scenario("dependency-slowdown", 1).truncated(900), CONFIG, seed=1,
                      policies=("dual",))
    reasons = [p.reason for p in result.policies["dual"].timeline if p.t > 700]
    assert set(reasons) == {"dependency_latency"}
    held = {p.replicas for p in result.policies["dual"].timeline if p.t > 720}
    assert len(held) == 1  # it holds instead of adding pods


def test_policy_targets_come_from_the_config() -> None:
    tight = dataclasses.replace(Settings(), policy=PolicyConfig(PolicySettings(latency_target_seconds=0.1)))
    result = run_policy(burst_head(400), SimulationConfig(tight), "latency", seed=1)
    assert result.max_replicas > 10  # p95 ~0.2 s is twice a 0.1 s target: it scales up before the burst


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        run_policy(burst_head(300), CONFIG, "memory", seed=1)


# -- output and goals --------------------------------------------------------------------------------------


def fake(scenario_name: str, **figures: dict[str, float]) -> SimulationResult:
    policies = {}
    for name in ("cpu", "latency", "dual"):
        f = figures.get(name, {})
        policies[name] = PolicyResult(name, f.get("viol", 0.0), f.get("rh", 1.0), f.get("first"), 10, 1,
                                      int(f.get("timeouts", 0)), 1000,
                                      (TimelinePoint(0, 1.0, 10, 10, None),
                                       TimelinePoint(15, 2.0, 12, 10, 0.3)))
    return SimulationResult(scenario_name, 1, 0.42, burst_head(300), CONFIG, policies)


def test_goals_met_and_not_met() -> None:
    burst = fake("burst", cpu={"viol": 4.0, "timeouts": 100}, dual={"viol": 1.5, "first": 15, "timeouts": 25})
    assert [g.met for g in goals(burst)] == [True, True]
    assert timeouts_avoided(burst) == pytest.approx(0.75)
    late = fake("burst", cpu={"viol": 4.0}, dual={"viol": 2.5, "first": 30})
    assert [g.met for g in goals(late)] == [False, False]
    assert "38 % fewer" in goals(late)[0].figure
    dep = fake("dependency-slowdown", latency={"rh": 40.0, "viol": 10}, dual={"rh": 20.0, "viol": 10})
    assert [g.met for g in goals(dep)] == [True, True]
    dep = fake("dependency-slowdown", latency={"rh": 40.0, "viol": 10}, dual={"rh": 30.0, "viol": 11})
    assert [g.met for g in goals(dep)] == [False, False]
    cpu = fake("cpu-bound", cpu={"rh": 10.0, "viol": 2}, dual={"rh": 10.0, "viol": 2})
    assert [g.met for g in goals(cpu)] == [True, True]
    assert goals(fake("diurnal")) == []


def test_json_document_shape() -> None:
    doc = json.loads(dumps(fake("burst", dual={"first": 15.0})))
    assert set(doc) == {"scenario", "seed", "slo_seconds", "policies"}
    assert set(doc["policies"]) == {"cpu", "latency", "dual"}
    dual = doc["policies"]["dual"]
    assert set(dual) == {"slo_violation_minutes", "replica_hours", "first_scale_up_seconds", "max_replicas",
                         "scale_events", "timeouts", "timeline"}
    assert dual["first_scale_up_seconds"] == 15 and doc["policies"]["cpu"]["first_scale_up_seconds"] is None
    assert dual["timeline"][1] == {"t": 15, "rps": 2, "replicas": 12, "ready": 10, "p95_seconds": 0.3}
    assert document(fake("burst"))["slo_seconds"] == 0.42


def test_timeline_rows_condense() -> None:
    points = [TimelinePoint(15 * i, 100.0, 3, 3, 0.5 if i == 17 else 0.1) for i in range(100)]
    rows = timeline_rows(points, 0.42, rows=10)
    assert len(rows) == 10
    assert "over" in rows[1][5] and rows[0][5] == "ok"


def test_report_markdown() -> None:
    text = markdown([fake("burst", cpu={"viol": 4.0, "timeouts": 10}, dual={"viol": 1.0, "first": 15})],
                    "simulation.png", "python -m adapter.simulate.report")
    assert "| SLO-violation minutes |" in text
    assert "| burst | dual >= 50 % fewer SLO-violation minutes than CPU-only |" in text
    assert "![" in text and "(simulation.png)" in text


# -- the simulate config section ---------------------------------------------------------------------------


def test_simulate_section(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("""
store: {window_seconds: 30, slice_seconds: 5}
defaults: {latency_target_seconds: 0.3}
simulate:
  min_replicas: 3
  max_replicas: 40
  behavior:
    scaleDown: {policies: [{type: Pods, value: 2, periodSeconds: 60}]}
""", encoding="utf-8")
    config = load_simulation_config(path)
    assert config.adapter.store.window_seconds == 30
    assert config.adapter.policy.defaults.latency_target_seconds == 0.3
    assert (config.hpa.min_replicas, config.hpa.max_replicas) == (3, 40)
    assert config.hpa.behavior.scale_up == DEFAULT_SCALE_UP
    down = config.hpa.behavior.scale_down
    assert down.policies[0].type == "Pods" and down.select_policy == DEFAULT_SCALE_DOWN.select_policy
    assert config.hpa.behavior_from_config


def test_config_without_simulate_section_is_the_adapters(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("defaults: {cpu_floor: 0.4}\n", encoding="utf-8")
    config = load_simulation_config(path)
    assert config.adapter.policy.defaults.cpu_floor == 0.4
    assert config.hpa == HpaSettings()
    path.write_text("defaults: {cpu_floor: -1}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"defaults\.cpu_floor"):
        load_simulation_config(path)


@pytest.mark.parametrize(("body", "key"), [
    ({"max_replicas": 0}, "simulate.max_replicas"),
    ({"min_replicas": 5, "max_replicas": 4}, "simulate.max_replicas"),
    ({"replicas": 4}, "simulate.replicas"),
    ({"behavior": {"scaleUp": {"selectPolicy": "Fastest"}}}, "simulate.behavior.scaleUp.selectPolicy"),
    ({"behavior": {"scaleUp": {"policies": [{"type": "Pod", "value": 1, "periodSeconds": 15}]}}},
     "simulate.behavior.scaleUp.policies[0].type"),
    ({"behavior": {"scaleDown": {"policies": [{"type": "Pods", "value": 1}]}}},
     "simulate.behavior.scaleDown.policies[0].periodSeconds"),
    ({"behavior": {"scaleDown": {"stabilizationWindowSeconds": 4000}}},
     "simulate.behavior.scaleDown.stabilizationWindowSeconds"),
    ({"timeout_seconds": 0}, "simulate.timeout_seconds"),
])
def test_bad_simulate_section_names_the_key(body: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        hpa_from_mapping(body)
    assert info.value.key == key


def test_why_not_met_states_the_facts_of_the_run() -> None:
    result = simulate(scenario("dependency-slowdown", 1).truncated(900), CONFIG, seed=1,
                      policies=("dual",), scenario="dependency-slowdown")
    text = why_not_met(result)
    assert "`dependency_latency`" in text and "`cpu_floor` 0.3" in text
    assert f"reached {result.policies['dual'].max_replicas} replicas" in text


def test_backlog_drains_without_arrivals() -> None:
    fleet = Fleet(DEFAULT_WORKLOAD, 1, startup_seconds=30)
    rng = np.random.default_rng(5)
    fleet.step(0, 1.0, 500, 0.0, 2.0, rng)
    assert fleet.backlog[0] == pytest.approx(300)
    out = fleet.step(1, 1.0, 0, 0.0, 2.0, rng)
    assert out.latency.shape[0] == 0
    assert fleet.backlog[0] == pytest.approx(100)
