"""``python -m simkv.cli``: the ``simkv`` command."""

import sys

try:
    from simkv.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line is still importing: as in main()
    sys.stderr.write("interrupted\n")
    sys.exit(130)

main()
