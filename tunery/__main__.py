"""`python -m tunery` is the same as the `tunery` command."""

from tunery.cli import main

main()
