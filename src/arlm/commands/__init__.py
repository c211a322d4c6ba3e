"""The verbs of the arlm command line, one module each."""
