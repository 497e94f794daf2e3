"""`python -m echoimage`: the command line (guarded: `serve --workers` starts its processes
with multiprocessing's spawn, which imports this module again in each of them)."""

from echoimage.cli import main

if __name__ == "__main__":
    main()
