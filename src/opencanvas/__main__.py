"""`python -m opencanvas` is the CLI (and what `torchrun -m opencanvas train` runs)."""

from opencanvas.cli import main

if __name__ == "__main__":
    main()
