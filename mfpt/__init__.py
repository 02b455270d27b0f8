"""mfpt: multilingual federated prompt tuning with Flower and Hugging Face transformers/peft."""

__version__ = "0.1.0"
