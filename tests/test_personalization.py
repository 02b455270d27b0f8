"""Personalisation: the per-language aggregation maths against hand-computed numbers, the strategy's messages
(only a node's own language's state and the global one reach it, only trainable tensors), resume of every
language's state, held-out combinations, finetune, config refusals and results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELS, LANGS, Crash, InProcessGrid
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from mfpt.config import ConfigError, load_config
from mfpt.data.clients import ClientSpec
from mfpt.federation.protocol import (
    ARRAYS,
    CLIENT_KEY,
    CONFIG,
    EXAMPLES_KEY,
    FINETUNE_STEPS_KEY,
    METRICS,
    PERSONAL_ARRAYS,
    ROUND_KEY,
    TRAIN_LOSS_KEY,
    TRAIN_STEPS_KEY,
)
from mfpt.federation.server import run_federated
from mfpt.federation.strategies.base import NodeInfo, RoundListener, make_strategy
from mfpt.federation.strategies.language_kernels import (
    cosine_distances,
    heldout_weights,
    kernel_weights,
    language_updates,
    personalized_states,
)
from mfpt.federation.strategies.personalized import strategy_mixins
from mfpt.model.factory import build_model
from mfpt.model.state import state_spec, trainable_state
from mfpt.results.checkpoints import load_checkpoint
from mfpt.results.schema import RunResult, read_result

pytestmark = pytest.mark.usefixtures("task_identity")

HELDOUT = ["yor"]
D = np.array([[0.0, 0.2, 0.6],
              [0.2, 0.0, 0.4],
              [0.6, 0.4, 0.0]])


def _states(values):
    return [{"p": torch.tensor([float(v), 2.0 * v]), "h": torch.tensor([[float(-v)]])} for v in values]


# ------------------------------------------------------------------------------------------ the maths, by hand


def test_kernel_weights_equal_the_hand_computed_softmax_over_the_other_languages():
    w = kernel_weights(D, temperature=0.2, self_weight=0.5)
    # eng: others swh (0.2), hau (0.6): softmax(-1, -3) = e^-1 / (e^-1 + e^-3), e^-3 / (...)
    a, b = math.exp(-1), math.exp(-3)
    assert w[0] == pytest.approx([0.5, 0.5 * a / (a + b), 0.5 * b / (a + b)])
    c, d = math.exp(-1), math.exp(-2)  # swh: eng 0.2, hau 0.4
    assert w[1] == pytest.approx([0.5 * c / (c + d), 0.5, 0.5 * d / (c + d)])
    assert np.allclose(w.sum(axis=1), 1.0)


def test_personalized_states_are_the_hand_computed_weighted_means():
    updates = dict(zip(LANGS, _states([1, 2, 4])))
    got = personalized_states(updates, D, LANGS, temperature=0.2, self_weight=0.5)
    a, b = math.exp(-1), math.exp(-3)
    eng = 0.5 * 1 + 0.5 * (a * 2 + b * 4) / (a + b)
    assert got["eng"]["p"].tolist() == pytest.approx([eng, 2 * eng], rel=1e-6)
    assert got["eng"]["h"].item() == pytest.approx(-eng, rel=1e-6)
    c, d = math.exp(-1), math.exp(-2)
    swh = 0.5 * 2 + 0.5 * (c * 1 + d * 4) / (c + d)
    assert got["swh"]["p"][0].item() == pytest.approx(swh, rel=1e-6)


def test_infinite_temperature_is_uniform_fedavg_and_self_weight_one_keeps_the_own_update():
    updates = dict(zip(LANGS, _states([1, 2, 4])))
    uniform = personalized_states(updates, D, LANGS, temperature=1e12, self_weight=1 / 3)
    for lang in LANGS:
        assert uniform[lang]["p"].tolist() == pytest.approx([7 / 3, 14 / 3])
    own = personalized_states(updates, D, LANGS, temperature=0.2, self_weight=1.0)
    for lang in LANGS:
        torch.testing.assert_close(own[lang]["p"], updates[lang]["p"], rtol=0, atol=0)


def test_language_updates_weigh_a_languages_clients_and_cosine_distance_is_one_minus_cosine():
    states = _states([1, 3, 10])
    got = language_updates([("eng", 1.0, states[0]), ("eng", 3.0, states[1]), ("swh", 5.0, states[2])])
    assert got["eng"]["p"][0].item() == pytest.approx((1 * 1 + 3 * 3) / 4)
    assert got["swh"]["p"][0].item() == pytest.approx(10)
    zero = {"p": torch.zeros(2), "h": torch.zeros(1, 1)}
    ups = [{"p": torch.tensor([1.0, 0.0]), "h": torch.zeros(1, 1)}, {"p": torch.tensor([1.0, 1.0]), "h": torch.zeros(1, 1)}]
    dist = cosine_distances(ups, [zero, zero])
    assert dist[0, 1] == pytest.approx(1 - 1 / math.sqrt(2)) and dist[0, 0] == pytest.approx(0)


def test_heldout_weights_are_the_softmax_of_the_distances_to_the_trained_languages():
    w = heldout_weights(np.array([[0.1, 0.3, 0.5]]), temperature=0.1)
    e = np.exp([-1.0, -3.0, -5.0])
    assert w[0] == pytest.approx(e / e.sum())


# ------------------------------------------------------------------------------------------ the strategy


class _Listener(RoundListener):
    def __init__(self):
        self.personal, self.trained, self.refused = {}, [], []

    def on_train(self, round_, rows, *a):
        self.trained.extend(rows)

    def on_evaluate(self, *a): ...
    def on_refusal(self, round_, node, node_id, reason):
        self.refused.append((node, reason))

    def on_personal_evaluate(self, round_, counts):
        self.personal[round_] = counts


def _reply(node_id: int, index: int, state: dict, n: int) -> Message:
    out = Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=node_id, message_type=MessageType.TRAIN)
    metrics = MetricRecord({CLIENT_KEY: index, EXAMPLES_KEY: n, TRAIN_LOSS_KEY: 1.0, TRAIN_STEPS_KEY: 1})
    return Message(RecordDict({ARRAYS: ArrayRecord(state), METRICS: metrics}), reply_to=out)


def _strategy(**overrides):
    cfg = load_config(None, {"data.languages": LANGS, "data.heldout_languages": HELDOUT, "data.labels": LABELS,
                             "federation.weighting": "uniform", "personalization.method": "distance-weighted",
                             "personalization.temperature": 0.2, "personalization.self_weight": 0.5, **overrides})
    nodes = {100 + i: NodeInfo(100 + i, i, ClientSpec(lang, heldout=lang in HELDOUT), 10, 5)
             for i, lang in enumerate(LANGS + HELDOUT)}
    states = _states([1, 2, 4])
    strategy = make_strategy(cfg, nodes, state_spec(states[0]), _Listener(), mixins=strategy_mixins(cfg))
    # A fixed distance matrix (trained languages first, then the held-out one) instead of URIEL's.
    strategy.distance = np.array([[0.0, 0.2, 0.6, 0.3], [0.2, 0.0, 0.4, 0.1], [0.6, 0.4, 0.0, 0.5], [0.3, 0.1, 0.5, 0.0]])
    return strategy, states


def test_the_strategy_keeps_fedavg_and_builds_the_hand_computed_per_language_aggregates():
    strategy, states = _strategy()
    replies = [_reply(100 + i, i, states[i], 10) for i in (2, 0, 1)]
    global_state = strategy.aggregate_train(1, replies)[0].to_torch_state_dict()
    assert global_state["p"].tolist() == pytest.approx([7 / 3, 14 / 3])  # the global FedAvg state is kept
    expected = personalized_states(dict(zip(LANGS, states)), D, LANGS, 0.2, 0.5)
    a, b = math.exp(-1), math.exp(-3)
    assert strategy.personal["eng"]["p"][0].item() == pytest.approx(0.5 + 0.5 * (2 * a + 4 * b) / (a + b), rel=1e-6)
    for lang in LANGS:
        torch.testing.assert_close(strategy.personal[lang]["p"], expected[lang]["p"])


def test_a_heldout_language_gets_the_combination_the_matrix_says():
    strategy, states = _strategy()
    strategy.aggregate_train(1, [_reply(100 + i, i, states[i], 10) for i in range(3)])
    e = np.exp(-np.array([0.3, 0.1, 0.5]) / 0.2)
    w = e / e.sum()
    held = strategy.heldout_personal()["yor"]
    expected = sum(w[j] * strategy.personal[lang]["p"].double() for j, lang in enumerate(LANGS))
    torch.testing.assert_close(held["p"].double(), expected, rtol=1e-6, atol=1e-7)


def test_update_similarity_weighs_by_the_cosine_of_the_updates():
    strategy, states = _strategy(**{"personalization.method": "update-similarity"})
    sent = {"p": torch.zeros(2), "h": torch.zeros(1, 1)}
    strategy._sent = {lang: sent for lang in LANGS}
    strategy.aggregate_train(1, [_reply(100 + i, i, states[i], 10) for i in range(3)])
    # States 1, 2, 4 times the same direction: cosine 1 everywhere, so the kernel is uniform over the others.
    assert strategy.personal["eng"]["p"][0].item() == pytest.approx(0.5 * 1 + 0.25 * 2 + 0.25 * 4, rel=1e-6)


def test_max_update_norm_is_measured_from_the_state_the_language_trained_from():
    strategy, states = _strategy(**{"federation.max_update_norm": 0.5, "federation.min_clients": 1})
    far = {"p": torch.tensor([100.0, 100.0]), "h": torch.tensor([[100.0]])}
    strategy._global = {k: torch.zeros_like(v) for k, v in far.items()}  # the global state, far from `far`
    strategy._sent = {"eng": far}
    near = {k: v + 0.1 for k, v in far.items()}
    strategy.aggregate_train(1, [_reply(100, 0, near, 10), _reply(101, 1, near, 10)])
    assert [row["lang"] for row in strategy.listener.trained] == ["eng"]
    assert strategy.listener.trained[0]["update_norm"] == pytest.approx(0.1 * math.sqrt(3), rel=1e-4)  # float32 at 100
    (who, reason), = strategy.listener.refused
    assert who.client.lang == "swh" and "max_update_norm" in reason  # swh trained from the global state


# ------------------------------------------------------------------------------------------ end to end, in process


def _cfg(make_config, tmp_path, name, **overrides):
    base = {"data.languages": ",".join(LANGS), "data.heldout_languages": ",".join(HELDOUT),
            "data.labels": ",".join(LABELS), "output_dir": str(tmp_path / name), "federation.round_timeout": 5.0,
            "federation.rounds": 3, "personalization.method": "distance-weighted"}
    base.update(overrides)
    return make_config(**base)


def _nodes_langs(cfg):
    return {100 + i: lang for i, lang in enumerate(list(cfg.data.languages) + list(cfg.data.heldout_languages))}


def test_only_the_own_language_state_and_the_global_one_reach_a_client(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path, "run")
    grid = InProcessGrid(4)
    result = run_federated(grid, cfg, quiet=True)
    trainable = set(trainable_state(build_model(cfg, len(LABELS)).model))
    langs = _nodes_langs(cfg)
    checkpoints = {r: load_checkpoint(Path(cfg.output_dir) / "checkpoints" / f"round-{r:04d}.safetensors") for r in (1, 2, 3)}
    seen_train = 0
    for round_, _, msg in grid.log:
        kind, node = msg.metadata.message_type, msg.metadata.dst_node_id
        arrays = {name: rec.to_torch_state_dict() for name, rec in msg.content.array_records.items()}
        for state in arrays.values():
            assert set(state) == trainable  # only trainable tensors travel
        if kind == "train":
            assert set(arrays) == {ARRAYS}  # one state: never the global plus others, never another language's
            if round_ > 1:  # from round 2 on, exactly the node's own language's state of the previous round
                own = checkpoints[round_ - 1].personal[langs[node]]
                for k in own:
                    torch.testing.assert_close(arrays[ARRAYS][k], own[k], rtol=0, atol=0)
                seen_train += 1
        elif kind == "evaluate":
            assert set(arrays) == {ARRAYS, PERSONAL_ARRAYS}  # the global state and the node's own language's
            checkpoint = checkpoints[round_]
            for k in checkpoint.state:
                torch.testing.assert_close(arrays[ARRAYS][k], checkpoint.state[k], rtol=0, atol=0)
            if langs[node] in checkpoint.personal:
                for k, v in checkpoint.personal[langs[node]].items():
                    torch.testing.assert_close(arrays[PERSONAL_ARRAYS][k], v, rtol=0, atol=0)
    assert seen_train == 2 * 3
    # Per-language states differ from each other and from the global one (they are personalised).
    final = checkpoints[3]
    key = next(iter(final.state))
    assert not torch.equal(final.personal["eng"][key], final.personal["hau"][key])
    assert not torch.equal(final.personal["eng"][key], final.state[key])
    # results.json: global and personalised per-language accuracy, held-out language included.
    assert set(result.per_language) == set(LANGS) and set(result.heldout) == set(HELDOUT)
    assert result.personalization is not None and result.personalization.method == "distance-weighted"
    assert set(result.personalization.per_language) == set(LANGS) and set(result.personalization.heldout) == set(HELDOUT)
    assert read_result(cfg.output_dir) == result
    # bytes_down counts both states in every evaluate message, exactly.
    progress = json.loads((Path(cfg.output_dir) / "progress.json").read_text())
    sent_r2 = [m for r, _, m in grid.log if r == 2]
    down = sum(rec.count_bytes() for m in sent_r2 for rec in m.content.array_records.values())
    assert progress["comm"][1]["bytes_down"] == down


def test_resume_restores_every_languages_state_bit_identically(make_config, tmp_path):
    full = _cfg(make_config, tmp_path, "full")
    run_federated(InProcessGrid(4), full, quiet=True)
    cut = full.replace(output_dir=str(tmp_path / "cut"))
    with pytest.raises(Crash):
        run_federated(InProcessGrid(4, crash=lambda m: m.metadata.message_type == "train"
                                    and int(m.content[CONFIG][ROUND_KEY]) == 3), cut, quiet=True)
    assert set(load_checkpoint(Path(cut.output_dir) / "checkpoints" / "round-0002.safetensors").personal) == set(LANGS)
    run_federated(InProcessGrid(4), cut, resume=True, quiet=True)
    a = load_checkpoint(Path(full.output_dir) / "checkpoints" / "round-0003.safetensors")
    b = load_checkpoint(Path(cut.output_dir) / "checkpoints" / "round-0003.safetensors")
    assert set(a.personal) == set(b.personal) == set(LANGS)
    for lang in LANGS:
        for k in a.personal[lang]:
            torch.testing.assert_close(b.personal[lang][k], a.personal[lang][k], rtol=0, atol=0)
    for k in a.state:
        torch.testing.assert_close(b.state[k], a.state[k], rtol=0, atol=0)


def test_finetune_personalises_after_the_last_round_and_combines_for_the_heldout_language(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path, "ft", **{"personalization.method": "finetune", "personalization.finetune_steps": 2,
                                                "federation.rounds": 2})
    grid = InProcessGrid(4)
    result = run_federated(grid, cfg, quiet=True)
    finetune = [m for m in grid.sent if m.metadata.message_type == "train" and FINETUNE_STEPS_KEY in m.content[CONFIG]]
    assert len(finetune) == 3 and all(int(m.content[CONFIG][FINETUNE_STEPS_KEY]) == 2 for m in finetune)
    final = load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "round-0002.safetensors")
    for m in finetune:  # every language fine-tunes the final global state
        for k, v in m.content[ARRAYS].to_torch_state_dict().items():
            torch.testing.assert_close(v, final.state[k], rtol=0, atol=0)
    heldout_eval = [m for m in grid.sent if m.metadata.message_type == "evaluate" and PERSONAL_ARRAYS in m.content]
    assert [m.metadata.dst_node_id for m in heldout_eval] == [103]  # only the held-out node, and once
    p = result.personalization
    assert p is not None and set(p.per_language) == set(LANGS) and set(p.heldout) == set(HELDOUT)
    assert p.extra_bytes == sum(rec.count_bytes() for m in finetune + heldout_eval for rec in m.content.array_records.values()) \
        + 3 * finetune[0].content[ARRAYS].count_bytes()  # the fine-tuned states sent back
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert {r["lang"] for r in rows if r["split"] == "personalized"} == set(LANGS + HELDOUT)


# ------------------------------------------------------------------------------------------ config and results


@pytest.mark.parametrize("paradigm", ["centralized", "local", "zeroshot", "transfer"])
def test_personalisation_is_refused_where_it_makes_no_sense(paradigm):
    with pytest.raises(ConfigError, match=f"personalization.method = 'distance-weighted' needs paradigm = 'federated', not '{paradigm}'"):
        load_config(None, {"paradigm": paradigm, "personalization.method": "distance-weighted"})
    load_config(None, {"paradigm": paradigm})  # none is fine everywhere


@pytest.mark.parametrize("key,value,message", [
    ("temperature", 0.0, "must be > 0"), ("self_weight", 1.5, r"must be in \[0, 1\]"),
    ("finetune_steps", -1, "must be an integer >= 0"), ("distance_kind", "syntax", "Did you mean .syntactic"),
    ("method", "distance", "must be one of"),
])
def test_personalisation_ranges_are_refused_with_the_key(key, value, message):
    with pytest.raises(ConfigError, match=f"personalization.{key}.*{message}"):
        load_config(None, {f"personalization.{key}": value})


def test_a_schema_1_results_file_still_reads(tmp_path):
    cfg = _cfg_result()
    data = cfg.to_json()
    data.pop("personalization")
    data["schema_version"] = 1
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert read_result(tmp_path).personalization is None


def _cfg_result() -> RunResult:
    from mfpt.results.schema import Communication, LanguageScore, MeanScore, Personalization

    score = LanguageScore(0.5, 0.4, 1.0, 10)
    return RunResult(name="x", paradigm="federated", method="prefix", model="m", seed=0, trainable_params=1,
                     total_params=2, rounds=1, languages=["eng"], heldout_languages=[], low_resource=[], labels=["a", "b"],
                     per_language={"eng": score}, heldout={}, average=MeanScore(0.5, 0.4), low_resource_average=None,
                     heldout_average=None, communication=Communication(), local_steps={}, protocol="p",
                     refused_updates=0, wall_seconds=1.0, config={},
                     personalization=Personalization("finetune", {"eng": score}, {}, MeanScore(0.5, 0.4), None, None))


def test_personalization_round_trips_through_results_json(tmp_path):
    result = _cfg_result()
    (tmp_path / "results.json").write_text(json.dumps(result.to_json()))
    assert read_result(tmp_path) == result
    assert result.personalization.gain(result.per_language) == {"eng": 0.0}


def test_the_report_shows_global_and_personalised_states_and_the_gain_per_language(tmp_path):
    import dataclasses as dc

    from conftest import fake_run, table_rows

    from mfpt.analysis.grouping import contexts, group_runs, load_runs
    from mfpt.analysis.report import personalization_gains
    from mfpt.results.recorder import mean_block
    from mfpt.results.schema import LanguageScore, Personalization, write_result

    accs = {"eng": 0.5, "swh": 0.4, "hau": 0.3}
    for seed, bump in ((0, 0.1), (1, 0.2)):
        folder = fake_run(tmp_path, "federated", seed, accs, heldout={"yor": 0.25})
        result = read_result(folder)
        mine = {lang: LanguageScore(a + bump, a, 1.0, 9) for lang, a in accs.items()}
        held = {"yor": LanguageScore(0.25 + bump, 0.2, 1.0, 9)}
        block = Personalization("distance-weighted", mine, held, mean_block(mine, list(accs)),
                                mean_block(mine, ["hau"]), mean_block(held, ["yor"]))
        config = {**result.config, "personalization": {"method": "distance-weighted"}}
        write_result(folder, dc.replace(result, personalization=block, config=config))
    runs = load_runs([tmp_path])
    [ctx] = contexts(group_runs(runs))
    assert ctx.groups[0].label == "federated / prefix + distance-weighted"
    gains = personalization_gains(ctx)
    assert gains == {"distance-weighted - global": pytest.approx({"eng": 15.0, "swh": 15.0, "hau": 15.0})}
    from mfpt.analysis.report import render_report

    text = render_report(runs, tmp_path / "report")
    rows = table_rows(text, "Personalisation (`personalization.method`)")
    assert rows["federated / prefix + distance-weighted: global"][0] == "50.0 ± 0.0"
    assert rows["federated / prefix + distance-weighted: personalised"][0] == "65.0 ± 7.1"
    assert rows["federated / prefix + distance-weighted: gain"][3] == "+15.0 ± 7.1"  # yor, held out
