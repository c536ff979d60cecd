"""``python -m greenbus``: the same as the ``greenbus`` command."""

from .cli import main

raise SystemExit(main())
