"""`python -m mixweight ...` (what torchrun launches) is the `mixweight` command."""

from mixweight.cli import main

if __name__ == "__main__":
    main()
