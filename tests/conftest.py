"""Shared test fixtures: tiny random encoders built inside the tests and a 4-language fixture dataset."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from flwr.serverapp import Grid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
# The build-time libraries (scripts/udhr_topics.py, scripts/offline_encoder.py) are not part of the installed package.
sys.path.insert(0, str(ROOT / "scripts"))

FIXTURES = Path(__file__).parent / "fixtures"
TINY_DATA = FIXTURES / "tiny_multilingual.jsonl"


# ------------------------------------------------------------------------------------------ the fast tier
# `make test-fast` sets MFPT_TEST_TIER=fast and leaves out the tests marked ray, deployment or slow. So that the tier
# stays fast, an unmarked test that starts a process (Ray's own processes, the mfpt command, a SuperLink...) fails
# there, naming the marker to add. git (every results.json records the commit) and fc-list (matplotlib's font cache,
# built once) and uname (MLflow asks platform.processor() when it opens a run) may run.
ALLOWED_IN_FAST_TIER = {"git", "fc-list", "uname"}


@pytest.fixture(autouse=True)
def _no_processes_in_the_fast_tier(monkeypatch):
    if os.environ.get("MFPT_TEST_TIER") != "fast":
        yield
        return
    import subprocess

    original = subprocess.Popen.__init__

    def refuse(self, args, *rest, **kwargs):
        program = Path(str(args[0] if isinstance(args, (list, tuple)) else str(args).split()[0])).name
        if program not in ALLOWED_IN_FAST_TIER:
            raise RuntimeError(f"this test starts a process ({program}) in the fast tier: mark it "
                               "@pytest.mark.ray (a Flower simulation) or @pytest.mark.deployment (anything else)")
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield


# Loggers whose level a command or a run sets for the rest of its process (mfpt.cli.main, the simulation runner).
CONFIGURED_LOGGERS = ("", "mfpt", "flwr", "transformers", "peft", "datasets")


@pytest.fixture(autouse=True)
def _restore_logging():
    """Give every test the logging set-up the one before it found: levels, propagation, handlers, and no logger left
    disabled (a library that calls logging.config.dictConfig disables every logger it does not name)."""
    import logging

    saved = {name: (logger.level, logger.propagate, list(logger.handlers))
             for name in CONFIGURED_LOGGERS if (logger := logging.getLogger(name or None))}
    disabled = {name for name, logger in logging.root.manager.loggerDict.items()
                if isinstance(logger, logging.Logger) and logger.disabled}
    yield
    for name, (level, propagate, handlers) in saved.items():
        logger = logging.getLogger(name or None)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            logger.disabled = name in disabled


def _tiny_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                           unk_token="<unk>"))
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    # The trainer's order of the pieces, and the last digits of their scores, differ from process to process, which
    # gave every test session other token ids. The special tokens first, then the pieces in alphabetical order with
    # scores rounded, give the same tokenizer every time.
    specials, pieces = vocab[:4], sorted((piece, round(score, 4)) for piece, score in vocab[4:])
    return XLMRobertaTokenizer(vocab=specials + pieces)


def _texts() -> list[str]:
    return [json.loads(line)["text"] for line in TINY_DATA.read_text(encoding="utf-8").splitlines()]


def _save_tiny_encoder(out: Path, config_cls, model_cls, **shape) -> Path:
    """Save a 2-layer, hidden-32 random encoder (no pooler weights) with a tokenizer trained on the fixture texts."""
    import torch

    tokenizer = _tiny_tokenizer(_texts())
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, pad_token_id=1, **shape)
    model_cls(config, add_pooling_layer=False).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory) -> Path:
    """A tiny XLM-R checkpoint (RoBERTa classification head, 130 positions)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    return _save_tiny_encoder(tmp_path_factory.mktemp("tiny-xlmr"), XLMRobertaConfig, XLMRobertaModel,
                              max_position_embeddings=130, bos_token_id=0, eos_token_id=2, type_vocab_size=1)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint saved WITHOUT pooler weights (like multilingual-e5)."""
    from transformers import BertConfig, BertModel

    return _save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), BertConfig, BertModel, max_position_embeddings=128)


def tiny_config(model: Path, output_dir: Path, **overrides: Any):
    """A validated ExperimentConfig on a tiny model and the fixture data; keyword overrides use dotted keys (or
    `__` for the dot)."""
    from mfpt.config import load_config

    base = {"name": "test", "output_dir": str(output_dir), "model.name": str(model), "model.max_seq_length": 32,
            "data.source": "files", "data.path": str(TINY_DATA), "peft.num_virtual_tokens": 4, "federation.rounds": 2,
            "train.batch_size": 8, "train.lr": 0.01, "train.threads": 1, "train.device": "cpu"}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, base)


@pytest.fixture
def make_config(tmp_path, tiny_xlmr):
    """Build a validated ExperimentConfig on the tiny model and fixture data; keyword overrides use dotted keys."""

    def make(**overrides: Any):
        return tiny_config(tiny_xlmr, overrides.pop("output_dir", tmp_path / "run"), **overrides)

    return make


# ------------------------------------------------------------------------- Flower messages and grids in this process
# Shared by the tests that drive the real ServerApp logic and ClientApp without Ray or processes. Test modules import
# the classes from here (`from conftest import InProcessGrid`) and use the fixtures by name.

LANGS = ["eng", "swh", "hau"]
LABELS = ["health", "politics", "sport"]


@contextlib.contextmanager
def flower_run_identity():
    """A run identity for messages built outside a Flower process (Flower's simulation sets the same); restored after."""
    from flwr.supercore.task_identity import TaskIdentity

    names = ("_task_id", "_run_id", "_node_id")  # the public properties raise while unset, so read these
    saved = {name: getattr(TaskIdentity, name, None) for name in names}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(TaskIdentity, name, value)


@pytest.fixture
def task_identity():
    """`flower_run_identity` for one test."""
    with flower_run_identity():
        yield


def federated_config(make_config, tmp_path, **overrides: Any):
    """The fixture federation: LANGS with LABELS declared (as a deployment must), a 5 s round timeout."""
    base = {"data.languages": ",".join(LANGS), "data.labels": ",".join(LABELS), "output_dir": str(tmp_path / "run"),
            "federation.round_timeout": 5.0}
    base.update(overrides)
    return make_config(**base)


def metrics_rows(out_dir: str | Path, split: str) -> list[dict]:
    """The metrics.jsonl rows of one `split` of a run folder."""
    from mfpt.core.files import read_jsonl
    from mfpt.results.schema import METRICS_FILE

    return [row for row in read_jsonl(Path(out_dir) / METRICS_FILE) if row["split"] == split]


class Crash(RuntimeError):
    """The 'server' dies (raised from the grid, so the ServerApp stops mid-run)."""



class InProcessGrid(Grid):
    """A Grid whose nodes are the real ClientApp in this process; nodes can die, join or misbehave.

    `tamper[node_id]` rewrites that node's replies; `crash(msg)` true raises Crash before `msg` is sent. Every
    message sent is kept in `sent`, and `log` holds (round, evaluation split, message) as each was sent (the
    strategy reuses one ConfigRecord, so the round and split must be read at send time)."""

    def __init__(self, num_clients: int, tamper: dict | None = None, crash=None) -> None:
        self.contexts: dict = {}
        self.alive: set[int] = set()
        self.tamper = tamper or {}
        self.crash = crash
        self.sent: list = []
        self.log: list[tuple[int, str | None, Any]] = []
        for index in range(num_clients):
            self.add_node(100 + index, index)

    def add_node(self, node_id: int, partition: int) -> None:
        from flwr.app import Context, RecordDict

        self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config={"partition-id": partition},
                                         state=RecordDict(), run_config={})
        self.alive.add(node_id)

    # Grid API ---------------------------------------------------------------------------------------------
    def set_run(self, run) -> None: ...

    @property
    def run(self): ...

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        from flwr.app import Message

        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return sorted(self.alive)

    def push_messages(self, messages):  # pragma: no cover - send_and_receive is all the strategies use
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout: float | None = None):
        from mfpt.client_app import app as client_app
        from mfpt.federation.protocol import CONFIG, EVAL_SPLIT_KEY, ROUND_KEY

        replies = []
        for msg in messages:
            if self.crash is not None and self.crash(msg):
                raise Crash(f"server killed before sending {msg.metadata.message_type}")
            self.sent.append(msg)
            config = msg.content.config_records.get(CONFIG) if msg.has_content() else None
            if config is not None:
                split = config.get(EVAL_SPLIT_KEY)
                self.log.append((int(config.get(ROUND_KEY, 0)), None if split is None else str(split), msg))
            node = msg.metadata.dst_node_id
            if node not in self.alive:
                continue  # a dead node never answers; the round times out without it
            reply = client_app(msg, self.contexts[node])
            replies.append(self.tamper[node](reply) if node in self.tamper else reply)
        return replies


class IdleGrid:
    """Just enough of a Flower grid for configure_train: the connected node ids."""

    def __init__(self, node_ids) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


class RecordingListener:
    """A RoundListener that keeps the refusal reasons and the train rows, and ignores the rest."""

    def on_sampled(self, *args) -> None: ...
    def __init__(self) -> None:
        self.refused: list[str] = []
        self.trained: list[dict] = []

    def on_train(self, round_, rows, *args) -> None:
        self.trained.extend(rows)

    def on_evaluate(self, *args) -> None: ...
    def on_missing(self, *args) -> None: ...

    def on_refusal(self, round_, node, node_id, reason) -> None:
        self.refused.append(reason)


def train_reply(request, index: int, state: dict, examples: int = 10, loss: float = 1.0, steps: int = 1):
    """A client's train reply to `request` (a Message): `state` as its arrays, the metrics every reply carries."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from mfpt.federation.protocol import ARRAYS, CLIENT_KEY, EXAMPLES_KEY, METRICS, TRAIN_LOSS_KEY, TRAIN_STEPS_KEY

    metrics = MetricRecord({CLIENT_KEY: index, EXAMPLES_KEY: examples, TRAIN_LOSS_KEY: loss, TRAIN_STEPS_KEY: steps})
    return Message(RecordDict({ARRAYS: ArrayRecord(state), METRICS: metrics}), reply_to=request)


# ------------------------------------------------------------------------------------------ reports


def fake_run(root: Path, paradigm: str, seed: int, accs: dict[str, float], heldout: dict[str, float] | None = None,
             size: int = 0, low: tuple[str, ...] = ("hau",), rounds: int = 3, strategy: str = "fedavg",
             generation: bool = False, attack: dict[str, Any] | None = None) -> Path:
    """A results.json + metrics.jsonl with chosen numbers (the report reads nothing else); `generation`: the numbers
    are chrF++, and the exact-match rate (accuracy) half of them; `attack`: results.json's attack block."""
    from mfpt.core.files import json_line, write_text
    from mfpt.results.recorder import mean_block
    from mfpt.results.schema import Communication, LanguageScore, RunResult, write_result

    languages, heldout = list(accs), heldout or {}
    def score(a: float, majority: float | None) -> LanguageScore:
        return LanguageScore(a / 2, None, 1.0, 9, None, a) if generation else LanguageScore(a, a / 2, 1.0, 9, majority)

    per = {lang: score(a, 4 / 9) for lang, a in accs.items()}
    held = {lang: score(a, None) for lang, a in heldout.items()}
    config = {"name": "t", "seed": seed, "output_dir": "x", "paradigm": paradigm, "peft": {"method": "prefix"},
              "federation": {"rounds": rounds, "strategy": strategy}, "data": {"train_per_language": size, "eval_split": "test"},
              "transfer": {"sources": ["eng"]},
              "attack": {"kind": attack["kind"], "languages": attack["languages"]} if attack else {"kind": "none", "languages": []}}
    result = RunResult(
        name="t", paradigm=paradigm, method="prefix", model="m", seed=seed, trainable_params=1000, total_params=10_000,
        rounds=rounds, languages=languages, heldout_languages=list(heldout), low_resource=list(low), labels=["a", "b"],
        per_language=per, heldout=held, average=mean_block(per, languages),
        low_resource_average=mean_block(per, list(low)), heldout_average=mean_block(held, list(heldout)),
        communication=Communication(total_bytes=4000 * rounds if paradigm == "federated" else 0,
                                    bytes_up_per_round=2000 if paradigm == "federated" else 0,
                                    bytes_down_per_round=2000 if paradigm == "federated" else 0,
                                    rounds_recorded=rounds if paradigm == "federated" else 0,
                                    full_model_bytes=40_000, clients_per_round=len(languages)),
        local_steps={lang: 6 for lang in languages}, protocol=f"{paradigm} protocol", refused_updates=0,
        wall_seconds=1.0, config=config, attack=attack)
    folder = root / (f"{paradigm}-{size}-{seed}" + ("" if strategy == "fedavg" else f"-{strategy}")
                     + (f"-{attack['kind']}" if attack else ""))
    write_result(folder, result)
    curves = [{"round": r, "split": "test", "lang": lang, "accuracy": a * r / rounds,
               **({"chrf": a * r / rounds} if generation else {})} for r in range(1, rounds + 1) for lang, a in accs.items()]
    curves += [{"round": 1, "split": "train", "lang": lang, "n": 27 if size == 0 else size, "loss": 1.0, "steps": 2}
               for lang in languages]
    write_text(folder / "metrics.jsonl", "".join(json_line(row) for row in curves))
    return folder


def table_rows(markdown: str, after: str) -> dict[str, list[str]]:
    """The first Markdown table after the line `after`: first cell -> the other cells."""
    lines = markdown[markdown.index(after):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


# ---------------------------------------------------------------------------------- benchmark sources

BENCHMARK_FIXTURES = FIXTURES / "benchmarks"


class FakeHub:
    """Stands in for datasets.load_dataset: serves rows in the hub's schema and records what was asked."""

    def __init__(self, features, rows: dict[str, list[Any]], script_based: bool = False,
                 parquet_export: bool = True) -> None:
        self.features, self.rows, self.script_based, self.parquet_export = features, rows, script_based, parquet_export
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any):
        self.calls.append((args, kwargs))
        if self.script_based and args[0] != "parquet":
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {args[0].split('/')[-1]}.py")
        if args[0] == "parquet" and not self.parquet_export:
            # What datasets raises when the refs/convert/parquet branch or its files do not exist.
            raise FileNotFoundError(f"Unable to find '{kwargs['data_files']}'\n(more lines of detail)")
        import datasets

        return datasets.Dataset.from_dict(self.rows, features=self.features)


def hub_cases() -> dict[str, tuple[Any, dict[str, list[Any]], tuple[str, ...], dict[str, str]]]:
    """Per benchmark: the hub's features, a few rows, the languages asked for, each text's expected label."""
    import datasets

    from mfpt.data.benchmarks import BENCHMARKS

    return {
        "xnli": (
            datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])}),
            {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [2, 0, 1]},
            ("sw",),
            {"p0": "contradiction", "p1": "entailment", "p2": "neutral"},
        ),
        "xglue-nc": (
            datasets.Features({"news_title": datasets.Value("string"), "news_body": datasets.Value("string"),
                               "news_category": datasets.ClassLabel(names=[
                                   "foodanddrink", "sports", "travel", "finance", "lifestyle", "news", "entertainment",
                                   "health", "video", "autos"])}),
            {"news_title": ["t0", "t1"], "news_body": ["b0", "b1"], "news_category": [0, 9]},
            ("de",),
            {"t0 b0": "foodanddrink", "t1 b1": "autos"},
        ),
        "masakhanews": (
            datasets.Features({"label": datasets.ClassLabel(names=list(BENCHMARKS["masakhanews"].labels)),
                               "headline": datasets.Value("string"), "text": datasets.Value("string"),
                               "headline_text": datasets.Value("string"), "url": datasets.Value("string")}),
            {"label": [4, 6], "headline": ["H0", "H1"], "text": ["T0", "T1"], "headline_text": ["H0 T0", "H1 T1"],
             "url": ["u0", "u1"]},
            ("yo",),
            {"H0 T0": "religion", "H1 T1": "technology"},
        ),
        "sib200": (
            datasets.Features({"index_id": datasets.Value("int64"), "category": datasets.Value("string"),
                               "text": datasets.Value("string")}),
            {"index_id": [1, 2], "category": ["travel", "science/technology"], "text": ["s0", "s1"]},
            ("zh-Hant",),
            {"s0": "travel", "s1": "science/technology"},
        ),
    }


# ------------------------------------------------------------------------------------------ crashes of in-process runs


class Killed(Exception):
    """The process running an in-process paradigm dies (raised from inside the run)."""


def interrupt_at_round(cfg, monkeypatch, at_round: int) -> None:
    """Run `cfg` (an in-process paradigm) until local training of round `at_round` starts, and stop it there as a
    crash would."""
    from mfpt.experiments import paradigms

    train_learner = paradigms._train_learner

    def killed(runtime, cfg_, learner, steps, round_):
        if round_ == at_round:
            raise Killed
        return train_learner(runtime, cfg_, learner, steps, round_)

    monkeypatch.setattr(paradigms, "_train_learner", killed)
    with pytest.raises(Killed):
        paradigms.run_experiment(cfg, quiet=True)
    monkeypatch.setattr(paradigms, "_train_learner", train_learner)


# ------------------------------------------------------------------------------------------ tiny decoders


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer, hidden-32 random checkpoint of each family with a tokenizer trained on the fixture texts; Llama's
    tokenizer has no pad token (as Llama's own has none)."""
    import torch
    from transformers import (
        BloomConfig,
        BloomModel,
        GemmaConfig,
        GemmaModel,
        LlamaConfig,
        LlamaModel,
        Qwen2Config,
        Qwen2Model,
        Qwen3Config,
        Qwen3Model,
    )

    tokenizer = _tiny_tokenizer(_texts())
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, bos_token_id=0,
                 eos_token_id=2, pad_token_id=1)
    configs = {"qwen2": (Qwen2Config(**shape), Qwen2Model), "qwen3": (Qwen3Config(head_dim=8, **shape), Qwen3Model),
               "llama": (LlamaConfig(**shape), LlamaModel),
               "gemma": (GemmaConfig(head_dim=8, **shape), GemmaModel),
               "bloom": (BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=2, pad_token_id=1), BloomModel)}
    out = {}
    for family, (config, model_cls) in configs.items():
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        torch.manual_seed(0)
        model_cls(config).save_pretrained(folder)
        if family == "llama":  # no pad token in its tokenizer, as Llama's own has none
            tokenizer.pad_token = None
        tokenizer.save_pretrained(folder)
        tokenizer.pad_token = "<pad>"
        out[family] = folder
    return out
