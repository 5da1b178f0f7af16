import sys

from .cli import main, warm_stages
from .warm import run

code = run(sys.argv, main, warm_stages())  # a heavy stage in a warm server's child (subtune.warm), else None
if code is None:
    code = main()
raise SystemExit(code)
