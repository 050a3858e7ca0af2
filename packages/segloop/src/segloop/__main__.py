"""``python -m segloop`` runs the CLI."""

from segloop.cli import main

raise SystemExit(main())
