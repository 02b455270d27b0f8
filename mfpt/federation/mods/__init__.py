"""ClientApp mods: the audit of every reply that leaves a node, and client-side DP clipping."""
