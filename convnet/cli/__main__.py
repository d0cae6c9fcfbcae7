"""``python -m convnet.cli``: the ``convnet`` command."""

import sys

from convnet.cli.main import main

sys.exit(main())
