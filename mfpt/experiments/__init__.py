"""What users run: the paradigms (federated in Flower simulation, and the in-process baselines), sweeps, the canary
audit and predictions with a finished run's model."""
