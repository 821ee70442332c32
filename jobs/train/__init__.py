"""Trainers for the shipped models."""
