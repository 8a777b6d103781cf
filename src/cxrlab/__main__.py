"""`python -m cxrlab ...` (also what torchrun calls: `torchrun -m cxrlab train ...`)."""

from cxrlab.cli import main

if __name__ == "__main__":
    main()
