"""`python -m optask.cli`: how `optask up` starts its own children."""

from optask.cli import main

main()
