"""`python -m maasctl.predict ARGS` = `maasctl predict ARGS`, without loading typer: the fastest start."""

import sys

from maasctl.predict.command import main

sys.exit(main())
