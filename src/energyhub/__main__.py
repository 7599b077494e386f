"""``python -m energyhub``: the command line, as the ``energyhub`` script runs it."""

from energyhub.cli.main import main

if __name__ == "__main__":
    main()
