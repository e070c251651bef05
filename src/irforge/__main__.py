"""Python entrypoint of the irforge CLI (`python -m irforge`)."""

from irforge.cli.main import main

main()
