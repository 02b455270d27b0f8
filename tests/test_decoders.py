"""Decoder language models as classifiers: tiny random Qwen2, Qwen3, Llama, Gemma and BLOOM checkpoints built here, each
under prompt tuning, prefix tuning and LoRA. A padded text must be read exactly as it is alone (the head reads
the last real token), and a federated run trains, records every language and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_DATA, Crash, InProcessGrid

from mfpt.config import load_config
from mfpt.federation.protocol import CONFIG, ROUND_KEY
from mfpt.federation.server import run_federated
from mfpt.model.factory import build_model
from mfpt.results.checkpoints import checkpoint_path, load_checkpoint

pytestmark = pytest.mark.usefixtures("task_identity")

FAMILIES = ("qwen2", "qwen3", "llama", "gemma", "bloom")
METHODS = ("prompt", "ptuning", "prefix", "lora")


def _config(model: Path, method: str, tmp_path: Path, **overrides):
    return load_config(None, {"name": "decoder", "output_dir": str(tmp_path / "run"), "model.name": str(model),
                              "model.max_seq_length": 32, "data.source": "files", "data.path": str(TINY_DATA),
                              "data.languages": ["en", "sw"], "peft.method": method, "peft.num_virtual_tokens": 4,
                              "federation.rounds": 2, "train.batch_size": 8, "train.lr": 0.01, "train.threads": 1,
                              "train.device": "cpu", **overrides})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_padded_text_is_read_exactly_as_it_is_alone(tiny_decoders, family, method, tmp_path):
    built = build_model(_config(tiny_decoders[family], method, tmp_path), 3)
    model, tokenizer = built.model.eval(), built.tokenizer
    texts = ["health news from the hospital today", "sport"]
    with torch.no_grad():
        batch = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
    assert tokenizer(texts, padding=True)["attention_mask"][1].count(0) > 0  # the short text was padded
    assert torch.allclose(batch, alone, atol=1e-5), (family, method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable)  # the classification head trains with the method
    # The backbone stays frozen: only the method's own tensors and the head train.
    assert all(any(part in n for part in ("prompt_encoder", "lora_", "score")) for n in trainable), trainable
    if family == "llama":
        assert any("no pad token" in note for note in built.notes)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_federated_run_trains_each_decoder_family_with_each_method(tiny_decoders, family, method, tmp_path):
    cfg = _config(tiny_decoders[family], method, tmp_path, **{"federation.rounds": 1})
    result = run_federated(InProcessGrid(2), cfg, quiet=True)
    assert set(result.per_language) == {"eng", "swh"}
    assert all(0 <= s.accuracy <= 1 for s in result.per_language.values())
    state = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 1)).state
    before = build_model(cfg, 3).model
    initial = {n: p for n, p in before.named_parameters() if p.requires_grad}
    assert set(state) == {n for n in initial}  # exactly the trainable tensors travel and are saved
    assert any(not torch.allclose(state[n], initial[n].detach()) for n in state)  # and they trained


def assert_resumes_exactly(full, tmp_path: Path) -> None:
    """`full` run straight through, and again cut as round 2 starts and resumed: the same final state, bit for bit."""
    run_federated(InProcessGrid(2), full, quiet=True)
    cut = full.replace(output_dir=str(tmp_path / "cut"))

    def crash_in_round_2(msg) -> bool:
        return msg.metadata.message_type == "train" and int(msg.content[CONFIG][ROUND_KEY]) == 2

    with pytest.raises(Crash):  # dies as round 2 starts: round 1 is its last checkpoint
        run_federated(InProcessGrid(2, crash=crash_in_round_2), cut, quiet=True)
    run_federated(InProcessGrid(2), cut, quiet=True, resume=True)
    a = load_checkpoint(checkpoint_path(Path(full.output_dir), 2)).state
    b = load_checkpoint(checkpoint_path(tmp_path / "cut", 2)).state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_decoder_run_resumes_exactly(tiny_decoders, tmp_path):
    assert_resumes_exactly(_config(tiny_decoders["qwen2"], "prefix", tmp_path, output_dir=str(tmp_path / "full")),
                           tmp_path)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_a_decoder_run_predicts_as_it_was_evaluated(tiny_decoders, tmp_path, method):
    """`mfpt predict` rebuilds the decoder (its pad token, padding side, position ids) as training evaluated it."""
    from test_predict import _assert_training_path_probabilities
    from test_predict import _config as predict_config

    from mfpt.experiments.paradigms import run_experiment

    cfg = predict_config(tiny_decoders["llama"], tmp_path / "run", "centralized").replace(
        **{"peft.method": method, "federation.rounds": 1, "train.max_steps": 2})
    run_experiment(cfg, quiet=True)
    _assert_training_path_probabilities(cfg, tmp_path / "run")


def test_example_level_dp_trains_a_decoder(tiny_decoders, tmp_path):
    cfg = _config(tiny_decoders["gemma"], "prompt", tmp_path, **{"federation.rounds": 1, "privacy.dp": "example",
                                                                 "privacy.noise_multiplier": 1.0})
    result = run_federated(InProcessGrid(2), cfg, quiet=True)
    assert result.privacy["dp"] == "example" and set(result.per_language) == {"eng", "swh"}


@pytest.mark.parametrize("preset", sorted((Path(__file__).resolve().parent.parent / "configs" / "llm").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_the_decoder_presets_validate(preset):
    from mfpt.experiments.preflight import preflight

    cfg = load_config(preset)
    assert cfg.peft.method.value in ("lora", "prompt") and cfg.model.name.startswith("Qwen/")
    assert any(line.startswith("config:") for line in preflight(cfg))


# ------------------------------------------------------------------------------------------------ the LM head


def _lm_config(model: Path, method: str, tmp_path: Path, **overrides):
    return _config(model, method, tmp_path, **{"model.head": "lm", "data.labels": ["health", "politics", "sport"],
                                               "model.label_words": ["health", "politics", "sport"],
                                               "model.text_suffix": " topic:", **overrides})


# The tiny tokenizer spells most words letter by letter: these three are one token each, the label names several.
ONE_TOKEN_WORDS = ["a", "b", "c"]


@pytest.mark.parametrize("words", (ONE_TOKEN_WORDS, ["health", "politics", "sport"]), ids=("one-token", "multi-token"))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_lm_head_ranks_the_label_words_and_reads_a_padded_text_as_alone(tiny_decoders, family, method, words,
                                                                            tmp_path):
    import numpy as np
    import pandas as pd

    from mfpt.train.encoding import collate, encode_for

    cfg = _lm_config(tiny_decoders[family], method, tmp_path, **{"model.label_words": words})
    built = build_model(cfg, 3)
    model, tokenizer = built.model.eval(), built.tokenizer
    frame = pd.DataFrame({"text": ["health news from the hospital today", "sport"], "label": ["health", "sport"]})
    data = encode_for(cfg, frame, tokenizer, list(cfg.data.labels), built.max_length)
    cue = tokenizer(" topic:", add_special_tokens=False)["input_ids"]
    assert all(f["input_ids"][-len(cue):] == cue for f in data.features)  # every text ends with the cue
    with torch.no_grad():
        inputs, _ = collate(data, np.arange(2), tokenizer)
        batch = model(**inputs).logits
        alone = torch.cat([model(**collate(data, np.array([i]), tokenizer)[0]).logits for i in (0, 1)])
    assert inputs["attention_mask"][1].tolist().count(0) > 0 and inputs["attention_mask"][1, 0] == 0  # left-padded
    assert batch.shape == (2, 3)
    assert torch.allclose(batch, alone, atol=1e-4), (family, method)
    # The scores are the LM's own: next-token logits at one-token words, else each whole word's log-likelihood.
    first = collate(data, np.array([0]), tokenizer)[0]
    with torch.no_grad():
        if model.single_token:
            expected = model.lm(**first).logits[0, -1][model.label_ids[0]]
        else:
            expected = []
            for tokens in model.verbalizers[0]:
                ids = torch.cat([first["input_ids"], torch.tensor([tokens])], 1)
                logits = model.lm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].log_softmax(-1)
                # From the end: an input prompt's virtual positions come first in the logits.
                expected.append(sum(logits[len(logits) - len(tokens) - 1 + k, t] for k, t in enumerate(tokens)))
            expected = torch.stack(expected)
    assert model.single_token == (words == ONE_TOKEN_WORDS)
    assert torch.allclose(alone[0], expected, atol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(part in n for part in ("prompt_encoder", "lora_")) for n in trainable), trainable


@pytest.mark.parametrize("method", ("prompt", "prefix", "lora"))
@pytest.mark.parametrize("family", FAMILIES)
def test_a_federated_run_trains_each_decoder_family_through_its_lm_head(tiny_decoders, family, method, tmp_path):
    cfg = _lm_config(tiny_decoders[family], method, tmp_path, **{"federation.rounds": 1})
    result = run_federated(InProcessGrid(2), cfg, quiet=True)
    assert set(result.per_language) == {"eng", "swh"}
    state = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 1)).state
    initial = {n: p for n, p in build_model(cfg, 3).model.named_parameters() if p.requires_grad}
    assert set(state) == set(initial)
    assert any(not torch.allclose(state[n], initial[n].detach()) for n in state)


def test_an_lm_head_run_resumes_exactly_and_predicts(tiny_decoders, tmp_path):
    from mfpt.experiments.predict import Predictor

    assert_resumes_exactly(_lm_config(tiny_decoders["qwen3"], "prompt", tmp_path, output_dir=str(tmp_path / "full")),
                           tmp_path)
    predictor = Predictor.from_run(tmp_path / "full", device="cpu")
    rows = predictor.predict([{"text": "health news from the hospital today", "lang": "en"}])
    assert rows[0]["label"] in ("health", "politics", "sport")
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0)


def test_the_lm_head_refuses_what_it_cannot_read(tiny_decoders, tiny_xlmr, tmp_path):
    from mfpt.config import ConfigError

    with pytest.raises(ConfigError, match="are the same tokens"):
        build_model(_lm_config(tiny_decoders["qwen2"], "lora", tmp_path,
                               **{"model.label_words": ["sport", "sport", "health"]}), 3)
    with pytest.raises(ConfigError, match="reads a decoder's own language-model head"):
        build_model(_lm_config(tiny_xlmr, "lora", tmp_path), 3)


@pytest.mark.parametrize("words", (["d", "e", "f"], ["afya", "siasa", "michezo"]), ids=("one-token", "multi-token"))
def test_a_language_with_its_own_label_words_is_read_with_them_in_a_mixed_batch(tiny_decoders, words, tmp_path):
    """model.label_words_by_language: a Swahili text is scored exactly as by a model whose label words are the
    Swahili ones, an English text as by the default words, in one mixed batch; DP-SGD and a federated run take it."""
    import numpy as np
    import pandas as pd

    from mfpt.train.encoding import collate, encode_for

    base = {"model.label_words": ONE_TOKEN_WORDS}
    mixed = _lm_config(tiny_decoders["qwen2"], "lora", tmp_path,
                       **base, **{"model.label_words_by_language": [f"sw: {' | '.join(words)}"]})
    references = {"eng": _lm_config(tiny_decoders["qwen2"], "lora", tmp_path, **base),
                  "swh": _lm_config(tiny_decoders["qwen2"], "lora", tmp_path, **{"model.label_words": words})}
    frame = pd.DataFrame({"text": ["health news from the hospital today", "sport"], "label": ["health", "sport"],
                          "lang": ["swh", "eng"]})

    def scores(cfg):
        built = build_model(cfg, 3)
        data = encode_for(cfg, frame, built.tokenizer, list(cfg.data.labels), built.max_length)
        with torch.no_grad():
            # Normalised over the labels: a model that scores any word by its whole log-likelihood gives one-token
            # words their log-probabilities, next-token logits less a per-text constant that no ranking or loss sees.
            return built.model.eval()(**collate(data, np.arange(2), built.tokenizer)[0]).logits.log_softmax(-1)

    together = scores(mixed)
    assert torch.allclose(together[0], scores(references["swh"])[0], atol=1e-4)
    assert torch.allclose(together[1], scores(references["eng"])[1], atol=1e-4)
    assert not torch.allclose(together[0], scores(references["eng"])[0], atol=1e-4)
    private = mixed.replace(**{"federation.rounds": 1, "privacy.dp": "example", "privacy.noise_multiplier": 1.0})
    result = run_federated(InProcessGrid(2), private, quiet=True)
    assert set(result.per_language) == {"eng", "swh"}


@pytest.mark.parametrize("paradigm", ("local", "centralized", "transfer", "zeroshot"))
def test_every_paradigm_runs_through_the_lm_head(tiny_decoders, paradigm, tmp_path):
    from mfpt.experiments.paradigms import run_experiment

    cfg = _lm_config(tiny_decoders["llama"], "prompt", tmp_path, paradigm=paradigm, **{"federation.rounds": 1})
    result = run_experiment(cfg, quiet=True)
    assert set(result.per_language) == {"eng", "swh"}
    assert all(0 <= s.accuracy <= 1 for s in result.per_language.values())


@pytest.mark.parametrize("method", ("prompt", "ptuning", "lora", "full"))
@pytest.mark.parametrize("family", ("xlmr", "qwen2", "bloom"))
def test_gradient_checkpointing_gives_the_same_gradients(tiny_decoders, tiny_xlmr, family, method, tmp_path):
    import torch.nn.functional as F

    model_dir = tiny_xlmr if family == "xlmr" else tiny_decoders[family]
    grads = []
    for checkpointing in (False, True):
        built = build_model(_config(model_dir, method, tmp_path, **{"train.gradient_checkpointing": checkpointing}), 3)
        model, tokenizer = built.model.train(), built.tokenizer
        inputs = tokenizer(["health news from the hospital today", "sport"], padding=True, return_tensors="pt")
        torch.manual_seed(1)  # the same dropout masks in both (checkpointing replays the RNG state)
        F.cross_entropy(model(**inputs).logits, torch.tensor([0, 2])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        if checkpointing:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            assert base.is_gradient_checkpointing
            assert any("gradient checkpointing" in note for note in built.notes)
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0]), family


def test_gradient_checkpointing_with_prefix_tuning_is_refused_in_one_line():
    from mfpt.config import ConfigError

    with pytest.raises(ConfigError, match="does not work with peft.method = 'prefix'"):
        load_config(None, {"peft.method": "prefix", "train.gradient_checkpointing": True})


@pytest.mark.parametrize("method", ("prompt", "prefix", "lora"))
@pytest.mark.parametrize("family", ("xlmr", "qwen2", "gemma"))
def test_a_bf16_base_trains_fp32_tensors_and_predicts(tiny_decoders, tiny_xlmr, family, method, tmp_path):
    from mfpt.experiments.predict import Predictor

    model_dir = tiny_xlmr if family == "xlmr" else tiny_decoders[family]
    cfg = _config(model_dir, method, tmp_path, **{"model.dtype": "bfloat16", "train.precision": "bf16",
                                                  "federation.rounds": 1})
    built = build_model(cfg, 3)
    params = dict(built.model.named_parameters())
    assert {p.dtype for p in params.values() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in params.values() if not p.requires_grad} == {torch.bfloat16}
    result = run_federated(InProcessGrid(2), cfg, quiet=True)
    assert set(result.per_language) == {"eng", "swh"}
    state = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 1)).state
    assert {t.dtype for t in state.values()} == {torch.float32}  # what travels and is saved stays fp32
    rows = Predictor.from_run(cfg.output_dir, device="cpu").predict([{"text": "sport news", "lang": "en"}])
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0)


def test_a_bf16_base_is_refused_without_bf16_autocast_in_one_line():
    from mfpt.config import ConfigError

    with pytest.raises(ConfigError, match="needs train.precision = 'bf16'"):
        load_config(None, {"model.dtype": "bfloat16", "train.precision": "fp32"})
    with pytest.raises(ConfigError, match="freezes nothing"):
        load_config(None, {"model.dtype": "bfloat16", "train.precision": "bf16", "peft.method": "full"})


def test_quantisation_is_refused_on_a_cpu_and_with_full_fine_tuning_in_one_line(tiny_decoders, tmp_path, monkeypatch):
    from mfpt.config import ConfigError
    from mfpt.model.factory import quantization_arguments

    with pytest.raises(ConfigError, match=r"'4bit' runs on a CUDA GPU only .* resolves to cpu") as err:
        build_model(_config(tiny_decoders["qwen2"], "lora", tmp_path, **{"model.quantization": "4bit"}), 3)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="trains every weight"):
        load_config(None, {"model.quantization": "8bit", "peft.method": "full"})
    # Where a GPU is but bitsandbytes is not installed, the message names what to install.
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    with pytest.raises(ConfigError, match=r"needs bitsandbytes: pip install 'mfpt\[quantization\]'"):
        quantization_arguments("4bit", torch.device("cuda", 0))
    assert quantization_arguments("none", torch.device("cpu")) is None


@pytest.mark.parametrize("entry, message", [
    ("sw: a", "gives 'swh' 1 words"),
    ("fr: a | b | c", r"lists \['fra'\], which are not languages of this run"),
    ("sw a | b | c", "is not 'LANG: word | word | ...'"),
    ("qqq: a | b | c", "Unknown language code 'qqq'"),
])
def test_label_words_by_language_are_checked_as_the_config_loads(tiny_decoders, entry, message, tmp_path):
    from mfpt.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _lm_config(tiny_decoders["qwen2"], "lora", tmp_path, **{"model.label_words_by_language": [entry]})
    with pytest.raises(ConfigError, match="applies to model.head = 'lm' only"):
        _config(tiny_decoders["qwen2"], "lora", tmp_path, **{"model.label_words_by_language": ["sw: a | b | c"]})


@pytest.mark.parametrize("head", ("classifier", "lm"))
@pytest.mark.parametrize("overrides", [
    {"privacy.dp": "client", "privacy.noise_multiplier": 0.5, "federation.weighting": "uniform"},
    {"privacy.secure_aggregation": True},
    {"privacy.secure_aggregation": True, "privacy.dp": "client", "privacy.noise_multiplier": 0.5,
     "privacy.clip_at": "client", "federation.weighting": "uniform"},
    {"personalization.method": "finetune", "personalization.finetune_steps": 2},
    {"personalization.method": "distance-weighted"},
    {"personalization.method": "update-similarity"},
], ids=("client-dp", "secagg", "secagg-client-dp", "finetune", "distance-weighted", "update-similarity"))
def test_client_level_privacy_and_personalisation_run_on_a_decoder(tiny_decoders, overrides, head, tmp_path):
    """Every privacy mode and personalisation method with a decoder, either head (example-level DP: above)."""
    from test_secure_aggregation import SerialisingGrid

    make = _lm_config if head == "lm" else _config
    cfg = make(tiny_decoders["qwen2"], "prompt", tmp_path, **{"data.languages": ["en", "sw", "ha"],
                                                               "federation.rounds": 2, **overrides})
    grid = SerialisingGrid(3)
    result = run_federated(grid, cfg, quiet=True)
    assert set(result.per_language) == {"eng", "swh", "hau"}
    if "privacy.dp" in overrides:
        assert result.privacy["dp"] == "client" and result.privacy["epsilon"] > 0
    if overrides.get("privacy.secure_aggregation"):
        assert result.privacy["secure_aggregation"] is True
        train = [r for r in grid.replies if r.metadata.message_type == "train" and not r.has_error()]
        assert train and all(len(rec) == 0 for r in train for rec in r.content.array_records.values())
    if "personalization.method" in overrides:
        assert result.personalization is not None
        assert set(result.personalization.per_language) == {"eng", "swh", "hau"}


def test_a_deployed_node_keeps_its_own_languages_label_words(tiny_decoders, tmp_path):
    """A node reads only its own language: it keeps that language's words (the others' would name languages it does
    not have, which the config refuses), and `mfpt validate` builds every node's config."""
    from mfpt.data.clients import ClientSpec
    from mfpt.experiments.preflight import preflight
    from mfpt.federation.node import node_data_config

    cfg = _lm_config(tiny_decoders["qwen2"], "lora", tmp_path,
                     **{"model.label_words_by_language": ["sw: d | e | f", "en: a | b | c"]})
    assert node_data_config(cfg, ClientSpec("swh"), "x.jsonl").model.label_words_by_language == ("sw: d | e | f",)
    assert node_data_config(cfg, ClientSpec("eng"), "x.jsonl").model.label_words_by_language == ("en: a | b | c",)
    assert any(line.startswith("deployed nodes:") for line in preflight(cfg))
