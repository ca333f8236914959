"""The ``shadowmesh`` command and the subcommands of the l2bridge package."""
