import sys

from p2pinfer.cli.main import main

sys.exit(main())
