"""``python -m simkv.cli``: the ``simkv`` command."""

from simkv.cli import main

main()
