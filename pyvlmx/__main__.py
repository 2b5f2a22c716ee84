import sys

from pyvlmx.cli import main

sys.exit(main())
