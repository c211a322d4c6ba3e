"""The verbs of the `arlm` command line (registered in arlm.cli.VERBS), one module each, with what only they do:
parse flags, resolve references, call the domain packages' plain functions, print, plot, run studies. A few
modules serve several verbs: plots (every figure), runs (run labels, a preset trained per variant)."""
