"""The command line: a thin typer layer that maps flags onto typed configs."""
