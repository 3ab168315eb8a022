"""``python -m fmn_patch``: the ``fmnpatch`` CLI (also what ``accelerate launch -m fmn_patch`` runs)."""

from .cli.app import main

if __name__ == "__main__":
    main()
