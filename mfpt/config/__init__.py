"""The config layer: one typed, validated `ExperimentConfig`, loaded once and passed down.

- choices.py   the `str` enums of every key that takes one of a few names
- schema.py    the section dataclasses with their help text, and conversion to and from nested dicts
- rules.py     value ranges and the combinations of keys that cannot work together
- loading.py   TOML files, `--set` overrides, Flower's run_config, `mfpt keys`
- specs.py     one spec per paradigm and per peft method (what each tunes, how it runs, what reports say of it)
"""

from mfpt.config.choices import (
                                 AttackKind,
                                 ClipAt,
                                 DistanceKind,
                                 DpMode,
                                 ModelDtype,
                                 ModelHead,
                                 Paradigm,
                                 Partition,
                                 PeftMethod,
                                 PersonalizationMethod,
                                 PoolAt,
                                 Precision,
                                 Quantization,
                                 Selection,
                                 StrategyName,
                                 Task,
                                 TranslationDirection,
                                 Weighting,
)
from mfpt.config.loading import describe, describe_markdown, from_flat, load_config, parse_override, to_flat, to_toml
from mfpt.config.schema import (
                                 SECTIONS,
                                 DataConfig,
                                 ExperimentConfig,
                                 FederationConfig,
                                 ModelConfig,
                                 PeftConfig,
                                 PersonalizationConfig,
                                 PrivacyConfig,
                                 TrainConfig,
                                 TransferConfig,
                                 from_dict,
                                 set_dotted,
                                 to_dict,
)
from mfpt.core.errors import ConfigError

__all__ = [
    "SECTIONS", "AttackKind", "ClipAt", "ConfigError", "DataConfig", "DistanceKind", "DpMode", "ExperimentConfig",
    "FederationConfig", "ModelConfig", "Paradigm", "Partition", "PeftConfig", "PeftMethod", "PersonalizationConfig",
    "ModelDtype", "ModelHead", "PersonalizationMethod", "PoolAt", "Precision", "PrivacyConfig", "Quantization", "Selection", "StrategyName", "Task", "TrainConfig",
    "TransferConfig", "TranslationDirection", "Weighting", "describe", "describe_markdown", "from_dict", "from_flat", "load_config", "parse_override",
    "set_dotted", "to_dict", "to_flat", "to_toml",
]
