"""Incumbent moves (:mod:`autotune.tuning.local_moves`, issue 8): the one-parameter moves of the best config so far
are queued before the sampler's own proposals, for at most half the budget, never a pruned or already-asked config;
the climb re-centres on the best and stops at a local optimum. Also the table's same-shape entry as a warm start.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from autotune.table import TableEntry
from autotune.table.store import update_table
from autotune.tuning import local_moves, warm_start
from autotune.tuning import study as study_mod
from autotune.tuning.space import Param, SearchSpace, config_hash
from tests import fault_kernel as fk
from tests.test_framework_budget import ScriptedWorker, make_study, measured, tune


def test_moves_step_numbers_to_neighbours_and_categoricals_to_every_other_value():
    space = fk.space("only", {"M": 64, "faults": 1, "delay_ms": 0}, None)
    start = space.validate({"mode": "ok", "BLOCK": 16, "UNROLL": 1})
    got = list(local_moves.moves(space, start))
    modes = [c for c in next(p for p in space.params if p.name == "mode").choices if c != "ok"]
    assert [change for change, _ in got] == [f"mode={m}" for m in modes] + ["BLOCK=32", "UNROLL=2"]
    for change, config in got:
        name, value = change.split("=")
        assert str(config[name]) == value
        assert sum(config[k] != start[k] for k in start) == 1 or (name == "mode" and config["UNROLL"] == 1)
    middle = space.validate({"mode": "ok", "BLOCK": 32, "UNROLL": 2})
    assert [c for c, _ in local_moves.moves(space, middle) if not c.startswith("mode=")] == [
        "BLOCK=16", "BLOCK=64", "UNROLL=1"]


def test_coupled_pairs_move_together_first_and_only_where_both_can_step():
    params = (Param("BLOCK_M", (16, 32, 64, 128)), Param("BLOCK_N", (32, 64)), Param("num_warps", (2, 4, 8)))
    space = SearchSpace(params=params, constraints=(), default={"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8},
                        coupled=(("BLOCK_M", "num_warps"),))
    changes = [c for c, _ in local_moves.moves(space, space.default)]
    # 128 rows with 8 warps: only down (neither can go up); then the one-parameter moves
    assert changes == ["BLOCK_M=64,num_warps=4", "BLOCK_M=64", "BLOCK_N=32", "num_warps=4"]
    middle = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4}
    assert [c for c, _ in local_moves.coupled_moves(space, middle)] == [
        "BLOCK_M=16,num_warps=2", "BLOCK_M=64,num_warps=8"]
    assert list(local_moves.coupled_moves(space, {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 8})) == []
    joint = dict(local_moves.coupled_moves(space, middle))["BLOCK_M=64,num_warps=8"]
    assert joint == {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8}


def test_attention_prefill_declares_its_query_tile_and_warps_coupled():
    from autotune.device import INTERPRETER
    from search_spaces import attention

    shape = {"batch": 1, "seq": 2048, "heads_q": 64, "heads_kv": 8, "head_dim": 64, "window": 0}
    space = attention.space("prefill", shape, INTERPRETER)
    first_change, first = next(local_moves.moves(space, space.default))
    assert first_change.count("=") == 2 and first["BLOCK_M"] * 2 == space.default["BLOCK_M"]
    assert first["num_warps"] * 2 == space.default["num_warps"]


def _bowl_space() -> SearchSpace:
    # time = base + 10·|log2(a/8)| + 5·|log2(b/4)| + (0 if c == "y" else 1); a=16 with b=1 is infeasible
    def forbid(config, shape, device):
        return "a=16 with b=1 is infeasible" if (config["a"], config["b"]) == (16, 1) else None

    params = (Param("a", (1, 2, 4, 8, 16)), Param("b", (1, 2, 4, 8)), Param("c", ("x", "y")))
    return SearchSpace(params=params, constraints=(forbid,), default={"a": 2, "b": 1, "c": "x"})


def _bowl(config, base: float = 1000.0) -> float:
    """base 1000: every move gains < RECENTRE_GAIN (best improvement); base 100: a=4 gains 8% (re-centre at once)."""
    return (base + 10 * abs(math.log2(config["a"] / 8)) + 5 * abs(math.log2(config["b"] / 4))
            + (0 if config["c"] == "y" else 1))


def _climb(space, limit: int, trials: int, base: float = 1000.0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study_mod.enqueue(study, space, space.default, source="default")
    climber = local_moves.IncumbentMoves(space, {}, None, limit)
    labels = []
    for _ in range(trials):
        label = climber.before_ask(study)
        if label:
            labels.append(label)
        trial = study.ask()
        config = space.suggest(trial)
        study_mod.claim(trial, config)
        reason = space.check(config, {}, None)
        study.tell(trial, state=TrialState.PRUNED) if reason else study.tell(trial, _bowl(config, base))
    return study, labels


def test_climb_walks_to_the_optimum_then_stops():
    space = _bowl_space()
    study, labels = _climb(space, limit=20, trials=30)
    # centre a=2,b=1,c=x: a 1/4, b 2, c y; then the best of those is the centre; and so on to a=8, b=4, c=y
    assert labels[:4] == ["move:a=1 of trial 0", "move:a=4 of trial 0", "move:b=2 of trial 0",
                          "move:c=y of trial 0"]
    moved = [t for t in study.trials if t.user_attrs.get("source") == "move"]
    assert all(space.check(study_mod.config_of(t), {}, None) is None for t in moved)  # never a pruned move
    assert len({t.user_attrs["config_hash"] for t in moved}) == len(moved)  # never a config asked before
    best = min((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert study_mod.config_of(best) == {"a": 8, "b": 4, "c": "y"}
    assert best.user_attrs["source"] == "move"
    # it stopped at the optimum: fewer moves than the limit, the rest of the 30 trials came from the sampler
    assert len(moved) < 20 and len(moved) == len(labels)
    assert all(t.user_attrs.get("source") == "sampler" for t in study.trials[1 + len(moved):])


def test_a_large_gain_recentres_before_the_centres_other_moves():
    study, labels = _climb(_bowl_space(), limit=20, trials=30, base=100.0)
    # 131 -> a=1 (141) then a=4 (121, 7.6% faster): the next move is a=8 of trial 2, not b=2 of trial 0
    assert labels[:3] == ["move:a=1 of trial 0", "move:a=4 of trial 0", "move:a=8 of trial 2"]
    assert "move:b=2 of trial 0" not in labels
    best = min((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert study_mod.config_of(best) == {"a": 8, "b": 4, "c": "y"}


def test_climb_respects_its_limit():
    study, labels = _climb(_bowl_space(), limit=3, trials=12)
    assert len(labels) == 3 == sum(1 for t in study.trials if t.user_attrs.get("source") == "move")
    assert local_moves.move_budget(12) == 6 and local_moves.move_budget(1) == 0


def test_tuner_spends_at_most_half_the_budget_on_moves(tmp_path):
    study, key, space, _ = make_study(tmp_path, faults=1)
    worker = ScriptedWorker()
    report = tune(study, key, space, 8, worker)
    assert report.measured == len(measured(study)) == 8
    moves = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("source") == "move"]
    assert 1 <= len(moves) <= local_moves.move_budget(8)
    assert all(t.user_attrs["enqueued_from"].startswith("move:") and t.state != TrialState.PRUNED for t in moves)
    hashes = [c for c in map(config_hash, worker.jobs)]
    assert len(hashes) == len(set(hashes))  # no config measured twice


def test_table_entry_of_the_same_shape_is_queued_as_an_old_winner(tmp_path):
    study, key, space, storage = make_study(tmp_path, faults=0)
    config = space.validate({"mode": "ok", "BLOCK": 64, "UNROLL": 2})
    entry = TableEntry(kernel=key.kernel, variant=key.variant, shape=key.shape_dict, config=config, median_us=1.0,
                       default_median_us=2.0, fingerprint={"triton": "3.5.0"}, study="elsewhere", trial=3,
                       tuned_at="2026-12-01T00:00:00+00:00", metrics={})
    table = tmp_path / "table.json"
    update_table(table, key.device_key, {"name": "test device"}, [entry])
    other = {**key.shape_dict, "M": 128}
    update_table(table, key.device_key, {"name": "test device"},
                 [TableEntry(**{**entry.__dict__, "shape": other, "config": space.default})])
    got = warm_start.old_winners(study, storage, key, space, {"triton": "3.6.0"}, table_path=table)
    assert got == [warm_start.WarmConfig(config, "table:same shape")]
    assert warm_start.old_winners(study, storage, key, space, {"triton": "3.6.0"}) == []  # no table, none
