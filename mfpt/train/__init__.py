"""The training layer: the one training loop and the one evaluation every paradigm and client uses, tokenisation and
batching, precision, the DP-SGD step, the per-process runtime, and which rounds are evaluated and reported."""
