"""Recipes shipped with distill (installed as the `distill.recipes` package data)."""
