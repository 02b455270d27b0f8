"""Privacy as a number: the (epsilon, delta) account of a private run, and the canary statistics of the leakage audit.

The Flower-level mechanisms (client-level DP wrappers, SecAgg+) live in mfpt.federation, beside the strategies and
mods they wrap; this package holds what needs no Flower."""
