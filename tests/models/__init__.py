"""Tests of roost.models."""
