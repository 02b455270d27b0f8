"""The analysis layer: pure functions of finished runs (results.json, metrics.jsonl) that group runs by setting,
analyse language distance, draw figures and write reports. Nothing here trains or evaluates."""
