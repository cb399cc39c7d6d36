import sys

from p2pinfer.cli import main

sys.exit(main())
