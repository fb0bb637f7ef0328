"""`python -m gu1sync`: the command line (what `gu1-sync run` starts its children with)."""

from gu1sync.cli import main

main()
