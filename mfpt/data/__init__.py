"""The data layer: sources in one universal schema (local files, udhr-topics, four benchmarks), their splits and caps,
the clients cut from them, `mfpt prepare`, and URIEL language distances."""
