"""The results layer: the RunResult schema of results.json and the run folder's layout, per-round checkpoints, and
the recorder that writes both as a run goes."""
