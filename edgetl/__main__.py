"""``python -m edgetl``: the command line (and what ``torchrun -m edgetl finetune ...`` runs in each worker)."""

from .cli import main

if __name__ == "__main__":
    main()
