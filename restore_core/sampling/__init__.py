"""Noise schedules and samplers over an epsilon-model: ADIR Algorithm 1, DDIM."""
