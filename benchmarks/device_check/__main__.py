"""`python -m benchmarks.device_check`: the command line (cli.py); benchmarks/device_check.sh wraps it."""

from .cli import main

main()
