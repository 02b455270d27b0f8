"""The federation layer on Flower: the message protocol, what a client node does, the server's orchestration,
the strategies (Flower's own behind mfpt's mixin), the ClientApp mods, and SecAgg+."""
