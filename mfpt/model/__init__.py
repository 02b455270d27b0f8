"""The model layer: an encoder as a sequence classifier wrapped with one PEFT method, its trainable state (what
travels), the export a run leaves behind, and the guard on the transformers/peft pair."""
