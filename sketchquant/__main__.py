"""python -m sketchquant: the command line."""

from sketchquant.app.cli import entry

entry()
