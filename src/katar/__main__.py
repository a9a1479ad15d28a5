import sys

from katar.cli import main

sys.exit(main())
