"""``python -m aoflite demo [PATH]`` runs the demo."""

import sys

from .demo import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "demo":
        sys.exit("usage: python -m aoflite demo [PATH] [--records N] [--keys K]")
    sys.exit(main(args[1:]))
