"""Subcommands of the ``videosys`` CLI that live in their own modules (see ``videosys.cli.COMMAND_MODULES``)."""
