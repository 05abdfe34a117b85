"""distill: knowledge distillation, from a teacher to a student, on one data layer.

The Python API mirrors the CLI::

    import distill
    teacher = distill.teach()                 # the embedded digits defaults
    student = distill.student(overrides={"student.T": 4})
    print(student.summary["test"]["accuracy"])
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["teach", "student", "evaluate", "load_recipe", "Recipe", "__version__"]


def __getattr__(name: str):
    """Import the heavy parts (torch, timm) only when the API is used."""
    if name in ("teach", "student", "evaluate"):
        from distill import api

        return getattr(api, name)
    if name in ("load_recipe", "Recipe"):
        from distill import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
