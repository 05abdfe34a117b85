"""`python -m distill` (also what torchrun launches)."""

from distill.cli import main

main()
