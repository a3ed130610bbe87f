"""Thin entry points over the asr library and the server: the clients, corpus building."""
