"""The ``convnet`` command: its parser and subcommands, over the public API and
:mod:`convnet.runs`."""
