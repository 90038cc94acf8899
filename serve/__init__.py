"""Triton serving: model repository writer, launcher, clients, regression."""
