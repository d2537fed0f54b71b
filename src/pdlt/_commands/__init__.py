"""Subcommands of the ``pdlt`` CLI, one module each (see ``pdlt.cli``)."""
