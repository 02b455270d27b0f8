"""Server strategies: Flower's own classes behind mfpt's mixin (base.py), personalisation (personalized.py and
the kernels of language_kernels.py), and client-level DP through Flower's wrappers (client_dp.py)."""
