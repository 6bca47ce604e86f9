"""``python -m aoflite ...`` runs the ``aoflite`` command (aoflite.cli)."""

from .cli import main

if __name__ == "__main__":
    main()
