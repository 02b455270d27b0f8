"""Generation tasks (data.task = generation): decoders trained on text -> target pairs and scored per language with
chrF++ of their greedy generations; the UDHR translation source; what cannot work without labels is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_DATA, InProcessGrid
from test_decoders import FAMILIES, _config, assert_resumes_exactly

from mfpt.config import ConfigError, load_config
from mfpt.data.sources import LANG, SPLIT, TARGET, TEXT, DataError, load_udhr_topics, load_udhr_translation
from mfpt.federation.protocol import decode_counts, encode_counts
from mfpt.federation.server import run_federated
from mfpt.results.schema import read_result
from mfpt.train.encoding import IGNORED, collate, encode_generation, prompt_batches
from mfpt.train.evaluation import EvalCounts, chrf_metric, chrf_statistics

pytestmark = pytest.mark.usefixtures("task_identity")


def _generation_data(tmp_path: Path, target=lambda text: text.split()[0]) -> Path:
    """The fixture texts, each with a target made from it (default: its first word)."""
    rows = [json.loads(line) for line in TINY_DATA.read_text(encoding="utf-8").splitlines()]
    path = tmp_path / "generation.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"], "target": target(r["text"]), "lang": r["lang"],
                                        "split": r["split"]}) + "\n" for r in rows), encoding="utf-8")
    return path


def _gen_config(model: Path, method: str, tmp_path: Path, data: Path, **overrides):
    return _config(model, method, tmp_path, **{"model.head": "lm", "data.task": "generation", "data.path": str(data),
                                               "model.text_suffix": " =>", "model.max_new_tokens": 8, **overrides})


# ------------------------------------------------------------------------------------------------ the data


def test_udhr_translation_pairs_parallel_paragraphs_and_never_trains_on_a_test_article():
    cfg = load_config(None, {"data.source": "udhr-translation", "data.task": "generation", "model.head": "lm"})
    pairs = load_udhr_translation(cfg.data)
    topics = load_udhr_topics(cfg.data)
    english = topics[topics[LANG] == "eng"]
    assert "eng" not in set(pairs[LANG]) and set(pairs[TARGET]) <= set(english[TEXT])  # to-english by default
    # Every pair keeps the split of its article, the same in every language: no test paragraph is trained on,
    # in any language, as a source or as a target.
    split_of_english = dict(zip(english[TEXT], english[SPLIT]))
    assert all(split_of_english[t] == s for t, s in zip(pairs[TARGET], pairs[SPLIT]))
    training = pairs[pairs[SPLIT] == "train"]
    trained_rows = set(zip(topics.loc[topics[SPLIT] == "train", LANG], topics.loc[topics[SPLIT] == "train", TEXT]))
    assert set(zip(training[LANG], training[TEXT])) <= trained_rows
    assert set(training[TARGET]) <= set(english.loc[english[SPLIT] == "train", TEXT])
    swahili = pairs[pairs[LANG] == "swh"]
    assert len(swahili) == (topics[LANG] == "swh").sum()  # every Swahili paragraph has its English one
    reverse = load_udhr_translation(cfg.replace(**{"data.direction": "from-english"}).data)
    assert list(reverse[TEXT]) == list(pairs[TARGET]) and list(reverse[TARGET]) == list(pairs[TEXT])


def test_a_generation_task_needs_targets_and_a_classification_task_labels(tmp_path):
    from mfpt.data.clients import load_source

    generation = _generation_data(tmp_path)
    with pytest.raises(DataError, match="needs a 'label' column"):
        load_source(load_config(None, {"data.path": str(generation)}).data)
    with pytest.raises(DataError, match="needs a 'target' column"):
        load_source(load_config(None, {"data.path": str(TINY_DATA), "data.task": "generation",
                                       "model.head": "lm"}).data)


@pytest.mark.parametrize("overrides, names", [
    ({}, "model.head = 'lm'"),
    ({"model.head": "lm", "data.labels": ["a", "b"]}, "data.labels"),
    ({"model.head": "lm", "federation.partition": "dirichlet"}, "federation.partition"),
    ({"model.head": "lm", "attack.kind": "label-flip", "attack.languages": ["eng"]}, "attack.kind"),
    ({"model.head": "lm", "model.max_new_tokens": 0}, "model.max_new_tokens"),
])
def test_what_needs_labels_is_refused_for_a_generation_task(overrides, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config(None, {"data.task": "generation", **overrides})


# ------------------------------------------------------------------------------------------------ the pieces


def test_the_loss_reads_only_the_target_and_generation_sees_only_the_prompt(tiny_decoders, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_decoders["qwen2"])
    tokenizer.padding_side = "left"
    frame = pd.DataFrame({TEXT: ["the many balls week teams", "sport"], TARGET: ["goals today", "b"]})
    data = encode_generation(frame, tokenizer, max_length=32, max_new_tokens=3, text_suffix=" =>")
    assert all(len(t) <= 3 + 1 and t[-1] == tokenizer.eos_token_id for t in data.targets)  # cut, then end-of-text
    inputs, labels = collate(data, np.arange(2), tokenizer)
    for row in range(2):
        target = data.targets[row]
        # The labels are the target's tokens where they stand in the (left-padded) inputs, IGNORED elsewhere.
        assert labels[row, -len(target):].tolist() == target == inputs["input_ids"][row, -len(target):].tolist()
        assert (labels[row, :-len(target)] == IGNORED).all()
    prompts, idx = next(prompt_batches(data, 2, tokenizer))
    for row in idx:
        alone = tokenizer([frame[TEXT][row]], add_special_tokens=True)["input_ids"][0]
        prompt = prompts["input_ids"][row][prompts["attention_mask"][row].bool()].tolist()
        assert prompt == data.features[row]["input_ids"][:-len(data.targets[row])]
        assert prompt[:len(alone) - (alone[-1] == tokenizer.eos_token_id)] == alone[:len(prompt)][:len(alone) - (
            alone[-1] == tokenizer.eos_token_id)]  # the text, then the cue; no target token
    assert tokenizer.padding_side == "left"


def test_chrf_statistics_add_up_across_clients_and_travel_exactly():
    hypotheses = ["the cat sat on the mat", "hello world", "a b c", "mfpt"]
    references = ["the cat is on the mat", "hello there world", "a b d", "mfpt"]
    halves = [EvalCounts(0, 2, 1.5, chrf_stats=chrf_statistics(hypotheses[i:i + 2], references[i:i + 2]), exact=e)
              for i, e in ((0, 0), (2, 1))]
    pooled = halves[0] + halves[1]
    assert pooled.chrf == pytest.approx(chrf_metric().corpus_score(hypotheses, [references]).score / 100)
    assert pooled.score == pooled.chrf and pooled.accuracy == 0.25 and pooled.n == 4
    assert pooled.chrf != pytest.approx(np.mean([h.chrf for h in halves]))  # pooled statistics, not a mean of scores
    decoded = decode_counts(encode_counts(pooled, "personal."), 0, "personal.")
    assert decoded.chrf == pooled.chrf and decoded.exact == 1 and decoded.loss_sum == 3.0


# ------------------------------------------------------------------------------------------------ runs


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_generation_run_trains_each_decoder_family_and_scores_chrf_per_language(tiny_decoders, family, method,
                                                                                    tmp_path):
    from mfpt.model.factory import build_model

    cfg = _gen_config(tiny_decoders[family], method, tmp_path, _generation_data(tmp_path),
                      **{"federation.rounds": 1})
    if family == "bloom" and method != "lora":  # BLOOM's ALiBi mask leaves out virtual tokens in generate()
        with pytest.raises(ConfigError, match="peft.method = 'lora' or 'full'"):
            build_model(cfg, 0)
        return
    result = run_federated(InProcessGrid(2), cfg, quiet=True)
    assert set(result.per_language) == {"eng", "swh"}
    assert all(0 <= s.chrf <= 1 and s.macro_f1 is None for s in result.per_language.values())
    assert result.average.chrf == pytest.approx(np.mean([s.chrf for s in result.per_language.values()]))
    from mfpt.results.checkpoints import checkpoint_path, load_checkpoint

    state = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 1)).state
    initial = {n: p for n, p in build_model(cfg, 0).model.named_parameters() if p.requires_grad}
    assert set(state) == set(initial)  # exactly the method's tensors travel: no head, no LM weights
    assert any(not torch.allclose(state[n], initial[n].detach()) for n in state)


def test_a_generation_run_learns_its_targets_and_reports_chrf(tiny_decoders, tmp_path):
    """Full fine-tuning of a tiny decoder on a one-word answer ("a", one token): the test texts are answered exactly
    after training, while the untrained model scores far lower; report.md says chrF++."""
    from mfpt.data.clients import ClientSpec
    from mfpt.experiments.paradigms import run_experiment
    from mfpt.train.evaluation import evaluate
    from mfpt.train.runtime import get_runtime

    data = _generation_data(tmp_path, target=lambda text: "a")
    cfg = _gen_config(tiny_decoders["qwen2"], "full", tmp_path, data, **{"paradigm": "centralized",
                                                                          "federation.rounds": 3,
                                                                          "train.local_epochs": 20})
    runtime = get_runtime(cfg)
    untrained = {lang: evaluate(runtime.classifier.model, runtime.encoded(ClientSpec(lang), "test"),
                                runtime.classifier.tokenizer, 8, torch.device("cpu"), 0, max_new_tokens=8)
                 for lang in cfg.data.languages}
    trained = run_experiment(cfg, quiet=True)
    for lang, score in trained.per_language.items():
        # Nearly every generation is exactly the answer (a long text cut at max_seq_length may still miss it).
        assert score.chrf >= 0.85 and score.accuracy >= 0.75, (lang, score)
        assert untrained[lang].chrf < 0.5 and untrained[lang].accuracy < 0.5
    from mfpt.analysis.live import run_state

    state = run_state(cfg.output_dir)  # `mfpt watch` draws chrF++ as the headline
    assert state["settings"]["metric"] == "chrf"
    assert state["final"]["average"] == pytest.approx(trained.average.chrf)
    last = state["curves"]["test"]["per_language"]["eng"][-1]
    assert last["score"] == last["chrf"] == pytest.approx(trained.per_language["eng"].chrf)
    report = (Path(cfg.output_dir) / "report.md").read_text(encoding="utf-8")
    assert "chrF++ (%) of the greedy generations" in report and "Exact match (%)" in report
    assert read_result(Path(cfg.output_dir)).per_language["eng"].chrf == trained.per_language["eng"].chrf


@pytest.mark.parametrize("paradigm", ["local", "centralized", "transfer", "zeroshot"])
def test_every_paradigm_runs_a_generation_task(tiny_decoders, tmp_path, paradigm):
    from mfpt.experiments.paradigms import run_experiment

    cfg = _gen_config(tiny_decoders["llama"], "prompt", tmp_path, _generation_data(tmp_path),
                      **{"paradigm": paradigm, "federation.rounds": 1, "data.languages": ["eng", "swh", "hau"]})
    result = run_experiment(cfg, quiet=True)
    scored = {lang for lang, s in result.per_language.items() if s.chrf is not None}
    assert scored >= {"swh", "hau"} and result.average.chrf is not None


def test_example_level_dp_and_resume_work_on_a_generation_task(tiny_decoders, tmp_path):
    data = _generation_data(tmp_path)
    private = _gen_config(tiny_decoders["gemma"], "lora", tmp_path, data,
                          **{"federation.rounds": 1, "privacy.dp": "example", "privacy.noise_multiplier": 1.0})
    result = run_federated(InProcessGrid(2), private, quiet=True)
    assert result.privacy["dp"] == "example" and all(s.chrf is not None for s in result.per_language.values())
    assert_resumes_exactly(_gen_config(tiny_decoders["qwen3"], "prompt", tmp_path, data,
                                       output_dir=str(tmp_path / "full")), tmp_path)


def test_predict_writes_the_generations_evaluation_made(tiny_decoders, tmp_path):
    from mfpt.experiments.paradigms import run_experiment
    from mfpt.experiments.predict import Predictor

    data = _generation_data(tmp_path, target=lambda text: "a")
    cfg = _gen_config(tiny_decoders["qwen2"], "prompt", tmp_path, data,
                      **{"paradigm": "centralized", "federation.rounds": 1, "train.max_steps": 2})
    run_experiment(cfg, quiet=True)
    rows = [{"text": "the many balls week teams", "lang": "eng", "id": "x1"}, {"text": "sport", "lang": "swh"}]
    predictions = Predictor.from_run(Path(cfg.output_dir)).predict(rows)
    assert [p["index"] for p in predictions] == [0, 1] and predictions[0]["id"] == "x1"
    assert all(isinstance(p["generation"], str) and "label" not in p for p in predictions)


def test_the_canary_audit_refuses_a_generation_task(tmp_path):
    from mfpt.experiments.canary_audit import audit

    cfg = load_config(None, {"data.task": "generation", "model.head": "lm", "privacy.dp": "client",
                             "federation.weighting": "uniform"})
    with pytest.raises(ConfigError, match="no labels"):
        audit(cfg, tmp_path)


@pytest.mark.parametrize("overrides", [
    {"privacy.secure_aggregation": True, "privacy.dp": "client", "privacy.noise_multiplier": 0.5,
     "privacy.clip_at": "client", "federation.weighting": "uniform"},
    {"personalization.method": "finetune", "personalization.finetune_steps": 2},
    {"personalization.method": "distance-weighted"},
], ids=("secagg-client-dp", "finetune", "distance-weighted"))
def test_client_level_privacy_and_personalisation_run_a_generation_task(tiny_decoders, overrides, tmp_path):
    from test_secure_aggregation import SerialisingGrid

    cfg = _gen_config(tiny_decoders["qwen2"], "prompt", tmp_path, _generation_data(tmp_path),
                      **{"data.languages": ["en", "sw", "ha"], "federation.rounds": 2, **overrides})
    result = run_federated(SerialisingGrid(3), cfg, quiet=True)
    assert all(s.chrf is not None for s in result.per_language.values()) and len(result.per_language) == 3
    if "personalization.method" in overrides:
        assert all(s.chrf is not None for s in result.personalization.per_language.values())


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix", "lora"])
def test_generation_continues_the_prompt_under_every_method(tiny_decoders, method, tmp_path):
    """peft's generate() returns the prompt's ids before the new ones under every method (virtual tokens are fed as
    embeddings, not ids), which is what `generate` cuts at."""
    from mfpt.model.factory import build_model
    from mfpt.train.evaluation import generate

    cfg = _gen_config(tiny_decoders["llama"], method, tmp_path, _generation_data(tmp_path))
    built = build_model(cfg, 0)
    frame = pd.DataFrame({TEXT: ["the many balls week teams", "sport"], TARGET: ["a", "b"]})
    data = encode_generation(frame, built.tokenizer, 32, 4, text_suffix=" =>")
    inputs, _ = next(prompt_batches(data, 2, built.tokenizer))
    with torch.no_grad():
        out = built.model.eval().generate(**inputs, max_new_tokens=5, do_sample=False,
                                          pad_token_id=built.tokenizer.pad_token_id)
    assert torch.equal(out[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    texts = generate(built.model, data, built.tokenizer, 2, torch.device("cpu"), None, 5)
    assert texts == [t.strip() for t in built.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                                      skip_special_tokens=True)]


def test_mfpt_tune_chooses_a_generation_setting_by_its_validation_chrf(tiny_decoders, tmp_path):
    from test_tune import _tune

    data = _generation_data(tmp_path, target=lambda text: "a")
    config = tmp_path / "generation.toml"
    config.write_text(f'name = "gen-tune"\noutput_dir = "{tmp_path / "x"}"\nparadigm = "centralized"\n'
                      f'[model]\nname = "{tiny_decoders["qwen2"]}"\nhead = "lm"\nmax_seq_length = 32\n'
                      'max_new_tokens = 4\ntext_suffix = " =>"\n[peft]\nmethod = "full"\n'
                      f'[data]\ntask = "generation"\nsource = "files"\npath = "{data}"\nlanguages = ["eng", "swh"]\n'
                      '[federation]\nrounds = 2\n[train]\nbatch_size = 8\nthreads = 1\ndevice = "cpu"\n'
                      'local_epochs = 4\n', encoding="utf-8")
    tuning = _tune(config, tmp_path / "tune", settings=("paradigm=centralized",), grid=[("train.lr", ["x0.01", "x1"])])
    setting = tuning["settings"][0]
    scores = {t["values"]["train.lr"]: t["score"] for t in setting["trials"]}
    chrf = {lr: read_result(tmp_path / "tune" / setting["folder"] / t["runs"][0]).average.chrf
            for lr, t in zip(scores, setting["trials"])}
    exact = {lr: read_result(tmp_path / "tune" / setting["folder"] / t["runs"][0]).average.accuracy
             for lr, t in zip(scores, setting["trials"])}
    assert scores == pytest.approx(chrf) and scores != pytest.approx(exact)  # chrF++, not the exact matches
    assert setting["chosen"]["train.lr"] == max(scores, key=scores.get)


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora"])
def test_the_loss_keeps_only_the_logits_that_predict_a_target_token(tiny_decoders, method, tmp_path):
    """example_losses asks the LM head for the last positions only; the loss equals the one over every position."""
    from mfpt.model.factory import build_model
    from mfpt.train.objective import example_losses, target_losses

    cfg = _gen_config(tiny_decoders["qwen3"], method, tmp_path, _generation_data(tmp_path))
    built = build_model(cfg, 0)
    frame = pd.DataFrame({TEXT: ["the many balls week teams", "sport"], TARGET: ["goals today", "b"]})
    data = encode_generation(frame, built.tokenizer, 32, 6, text_suffix=" =>")
    inputs, labels = collate(data, np.arange(2), built.tokenizer)
    model = built.model.eval()
    with torch.no_grad():
        kept = example_losses(model, inputs, labels)
        every = target_losses(model(**inputs).logits.float(), labels)
    torch.testing.assert_close(kept, every)
    assert (kept > 0).all()


def test_mfpt_prepare_keeps_a_generation_files_targets_for_the_run(tiny_decoders, tmp_path):
    """What `mfpt prepare files` writes from a generation file, a generation run reads: the targets, no labels."""
    from mfpt.data.clients import prepare
    from mfpt.data.prepare import read_source, write_prepared

    frame, provenance = read_source("files", str(_generation_data(tmp_path)), ["eng", "swh"])
    card = write_prepared(frame, provenance, tmp_path / "prepared", "train")
    assert card["labels"] == [] and "target" in card["columns"] and "label" not in card["columns"]
    assert card["languages"]["eng"]["splits"]["train"]["rows"] == (frame[(frame[LANG] == "eng")
                                                                         & (frame[SPLIT] == "train")].shape[0])
    written = pd.read_json(tmp_path / "prepared" / "eng.jsonl", lines=True)
    assert list(written.columns) == ["text", "target", "lang", "split"]
    cfg = _gen_config(tiny_decoders["qwen2"], "lora", tmp_path, tmp_path / "prepared", **{"federation.rounds": 1})
    prepared = prepare(cfg)
    assert prepared.labels == () and set(prepared.frame[TARGET]) == set(frame[TARGET])
    result = run_federated(InProcessGrid(2), cfg, quiet=True)
    assert all(s.chrf is not None for s in result.per_language.values())
