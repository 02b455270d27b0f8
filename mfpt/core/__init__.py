"""Foundations every layer uses: user errors, the one registry class, atomic files, statistics, language codes, derived seeds."""
