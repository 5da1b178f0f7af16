import sys

from .warm import run

code = run(sys.argv)  # a heavy stage in a warm server's child (subtune.warm), else None
if code is None:
    from .cli import main

    code = main()
raise SystemExit(code)
