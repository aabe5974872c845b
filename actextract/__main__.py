"""``python -m actextract``: the command line (what ``torchrun -m actextract`` runs)."""

from actextract.cli.commands import main

if __name__ == "__main__":
    main()
