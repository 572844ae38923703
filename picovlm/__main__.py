import sys

from picovlm.cli import main

sys.exit(main())
